"""The supervisor: the parent process that forks, watches, replaces and drains the children.

Signal handlers only queue the signal number. The main loop wakes on the
signal wakeup pipe, handles the queue, reaps exited children, kills hung
ones and starts missing ones.
"""

import collections
import gc
import grp
import logging
import os
import pwd
import select
import signal
import time

import setproctitle

from . import child as child_module
from . import config, gearman, logs, notify, pidfile, scoreboard
from .backoff import RespawnBackoff

log = logging.getLogger("curler.supervisor")

# Seconds the main loop sleeps at most between two checks of the children.
LOOP_TICK = 0.5
# Seconds a busy child may stay silent beyond its HTTP timeout, per job server.
# A job's last step (a dead letter or an outcome) may wait for one connect and
# one reply from each job server before the child beats again.
BUSY_HANG_MARGIN = gearman.CONNECT_TIMEOUT + gearman.IO_TIMEOUT + 2.0
# An idle child beats about every second. This long without a heartbeat, plus
# one connect and one reply per job server, means it is hung.
IDLE_HANG_SECONDS = 30.0
# Job keys whose crash counts the supervisor remembers; the oldest are dropped
# first, so a long run does not grow the table without bound.
CRASH_TABLE_SIZE = 10000

HANDLED_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT,
                   signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1, signal.SIGCHLD)

# Exit codes of a child that recycled itself: it ran jobs and asked to be replaced.
RECYCLE_CODES = (child_module.EXIT_MAX_JOBS, child_module.EXIT_MAX_MEMORY)


class ChildProcess:
    """The supervisor's record of one child it forked.

    ``expected`` is set once the supervisor asked the child to go (drain,
    scale-down, stop), so its exit is not a crash. ``kill_reason`` is set when
    the supervisor sent SIGKILL: "hang" or "drain timeout".
    """

    __slots__ = ("pid", "slot", "group", "position", "generation", "started", "expected", "kill_reason")

    def __init__(self, pid, slot, group, position, generation, started):
        self.pid = pid
        self.slot = slot
        self.group = group
        self.position = position
        self.generation = generation
        self.started = started
        self.expected = False
        self.kill_reason = None


class WorkerGroup:
    """Children that serve the same queues; each position has its own respawn backoff."""

    def __init__(self, queues, size, timeout):
        self.queues = queues
        self.size = size
        self.timeout = timeout
        self.backoffs = collections.defaultdict(RespawnBackoff)

    @property
    def name(self):
        return ",".join(self.queues)


def make_groups(settings):
    """Return the worker groups of ``settings``; a group's timeout is the longest of its queues'."""
    groups = []
    for queues, size in settings.worker_groups():
        timeout = max([settings.timeout] + [settings.queues[name].timeout for name in queues])
        groups.append(WorkerGroup(queues, size, timeout))
    return groups


class Supervisor:
    """Keeps ``workers`` children running for the configuration in ``settings``."""

    def __init__(self, settings, argv):
        self.settings = settings
        self.argv = argv
        self.pid = os.getpid()
        self.children = {}
        self.generation = 0
        self.groups = []
        self.signals = collections.deque()
        self.stopping = False
        self.drain_deadline = None
        self.exit_code = 0
        self.crashes = collections.OrderedDict()
        self.free_slots = list(range(scoreboard.SLOT_COUNT))
        self.ready = False
        self.metrics = None
        self.board = None
        self.pidfile_written = None

    # -- set-up -------------------------------------------------------------

    def run(self):
        """Run until stopped; return the process exit code."""
        try:
            self.setup()
            self.start_generation(self.settings)
            self.main_loop()
        finally:
            self.cleanup()
        return self.exit_code

    def setup(self):
        logs.setup(self.settings.log_file, self.settings.log_level)
        # Checked before detaching, so a second curlerd fails where its user can see it.
        if self.settings.pidfile:
            pidfile.check(self.settings.pidfile)
        if self.settings.daemon:
            self.detach()

        # Signals are queued from here on, so one sent as soon as the pidfile
        # names this process is handled by the main loop instead of killing it.
        self.install_signals()
        if self.settings.pidfile:
            pidfile.write(self.settings.pidfile, self.pid)
            self.pidfile_written = self.settings.pidfile
        self.create_scoreboard()

        # A metrics port below 1024 needs root, so it is bound before privileges go.
        self.listen_metrics()
        owned = [self.board.path]
        if self.settings.log_file and self.settings.log_file != "syslog":
            owned.append(self.settings.log_file)
        drop_privileges(self.settings.user, self.settings.group, owned_paths=owned)

        setproctitle.setproctitle("curlerd: master")
        self.start_metrics()
        log.info("curlerd %d started: %d children on queues %s", self.pid, self.settings.workers,
                 ",".join(self.settings.job_queue))
        # Objects that exist now are shared with every child; freezing keeps the
        # garbage collector from touching, and so copying, their pages.
        gc.freeze()

    def detach(self):
        """Become a daemon, after trying what can fail so the caller still sees the error."""
        if self.settings.pidfile:
            pidfile.check_writable(self.settings.pidfile)
        self.listen_metrics()
        daemonize(self.settings.log_file)
        self.pid = os.getpid()

    def create_scoreboard(self):
        path = scoreboard.default_path(self.pid)
        stale = scoreboard.remove_stale(os.path.dirname(path))
        if stale:
            log.info("removed %d scoreboard files of curlerd processes that no longer run", stale)
        self.board = scoreboard.Scoreboard(path, create=True)

    def install_signals(self):
        self.wakeup_read, self.wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wakeup_write, warn_on_full_buffer=False)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, self.queue_signal)

    def queue_signal(self, signum, frame):
        self.signals.append(signum)

    def listen_metrics(self):
        if self.settings.metrics_port and self.metrics is None:
            from . import metrics
            self.metrics = metrics.Metrics(self)
            self.metrics.listen(self.settings.metrics_address, self.settings.metrics_port)

    def start_metrics(self):
        if self.settings.metrics_port:
            self.listen_metrics()
            self.metrics.start()

    # -- the main loop ------------------------------------------------------

    def main_loop(self):
        while True:
            self.handle_signals()
            self.reap()
            if self.stopping:
                if not self.children:
                    return
                self.enforce_drain_deadline()
            else:
                self.kill_hung()
                self.spawn_missing()
                self.notify_ready()
            self.sleep()

    def sleep(self):
        poller = select.poll()
        poller.register(self.wakeup_read, select.POLLIN)
        if poller.poll(LOOP_TICK * 1000):
            gearman.drain_fd(self.wakeup_read)

    def handle_signals(self):
        while self.signals:
            signum = self.signals.popleft()
            handler = getattr(self, "handle_" + signal.Signals(signum).name.lower())
            try:
                handler()
            except Exception:
                # The supervisor outlives a failed handler: dying here would orphan every child.
                log.exception("handling %s failed", signal.Signals(signum).name)

    # -- signal handlers, run from the main loop ----------------------------

    def handle_sighup(self):
        if self.stopping:
            log.info("SIGHUP received during the drain: ignored")
            return
        log.info("SIGHUP received: reloading the configuration")
        self.reload()

    def handle_sigterm(self):
        self.stop_gracefully("SIGTERM")

    def handle_sigint(self):
        self.stop_gracefully("SIGINT")

    def handle_sigquit(self):
        log.info("SIGQUIT received: stopping at once")
        self.stop_now()

    def handle_sigttin(self):
        if self.stopping:
            return
        group = self.main_group()
        if group.size >= config.MAX_WORKERS:
            log.warning("SIGTTIN received: group %s already has the maximum of %d children",
                        group.name, config.MAX_WORKERS)
            return
        group.size += 1
        log.info("SIGTTIN received: group %s now has %d children", group.name, group.size)

    def handle_sigttou(self):
        if self.stopping:
            return
        group = self.main_group()
        if group.size <= 1:
            log.info("SIGTTOU received: group %s keeps its last child", group.name)
            return
        group.size -= 1
        log.info("SIGTTOU received: group %s now has %d children", group.name, group.size)
        for child in self.current_children(group):
            if child.position >= group.size:
                self.drain_child(child, "scaled down")

    def handle_sigusr1(self):
        log.info("SIGUSR1 received: reopening log files")
        logs.reopen()
        for child in self.children.values():
            self.send_signal(child, signal.SIGUSR1)

    def handle_sigchld(self):
        pass  # the main loop reaps after every wakeup

    # -- stopping ------------------------------------------------------------

    def stop_gracefully(self, name):
        if self.stopping:
            log.info("%s received during the drain: stopping at once", name)
            self.stop_now()
            return
        log.info("%s received: draining %d children (graceful timeout %g s)",
                 name, len(self.children), self.settings.graceful_timeout)
        notify.notify("STOPPING=1")
        self.stopping = True
        self.drain_deadline = time.monotonic() + self.settings.graceful_timeout
        for child in list(self.children.values()):
            self.drain_child(child, "stopping")

    def stop_now(self):
        notify.notify("STOPPING=1")
        self.stopping = True
        self.drain_deadline = time.monotonic()
        self.enforce_drain_deadline()

    def enforce_drain_deadline(self):
        if time.monotonic() < self.drain_deadline:
            return
        for child in list(self.children.values()):
            if child.kill_reason is None:
                handle = self.board.read(child.slot).handle
                log.warning("killing child %d: still running at the end of the drain%s", child.pid,
                            f" (job {handle} will be handed out again)" if handle else "")
                child.expected = True
                child.kill_reason = "drain timeout"
                self.send_signal(child, signal.SIGKILL)

    # -- reload --------------------------------------------------------------

    def reload(self):
        """Start children with the re-read configuration and drain the old ones; keep all on error."""
        notify.notify("RELOADING=1")
        try:
            settings, _ = config.load(self.argv)
        except config.ConfigError as error:
            for line in str(error).splitlines():
                log.error("reload failed, keeping the running configuration: %s", line)
            if self.metrics is not None:
                self.metrics.reload_failed()
            notify.notify("READY=1")
            return
        for name in ("daemon", "user", "group", "metrics_port", "metrics_address"):
            if getattr(settings, name) != getattr(self.settings, name):
                log.warning("reload: %s changes only on restart", name.replace("_", "-"))
        self.reopen_log(settings)
        self.move_pidfile(settings)
        old = [child for child in self.children.values() if child.generation == self.generation]
        self.settings = settings
        self.start_generation(settings)
        for child in old:
            self.drain_child(child, "reload")
        log.info("reloaded: %d new children on queues %s; draining %d old children",
                 sum(g.size for g in self.groups), ",".join(settings.job_queue), len(old))
        self.ready = False

    def reopen_log(self, settings):
        """Log to the log file of ``settings``, or go on with the old one if it cannot be opened."""
        try:
            logs.setup(settings.log_file, settings.log_level)
        except OSError as error:
            log.error("reload: cannot open log-file %s (%s); still logging to %s",
                      settings.log_file, error, self.settings.log_file or "standard error")

    def move_pidfile(self, settings):
        if settings.pidfile == self.pidfile_written:
            return
        if settings.pidfile:
            try:
                pidfile.write(settings.pidfile, self.pid)
            except OSError as error:
                log.error("reload: cannot write pidfile %s: %s", settings.pidfile, error)
                return
        if self.pidfile_written:
            pidfile.remove(self.pidfile_written, self.pid)
        self.pidfile_written = settings.pidfile

    def start_generation(self, settings):
        self.generation += 1
        self.groups = make_groups(settings)
        self.spawn_missing()

    def main_group(self):
        return self.groups[-1]

    # -- children ------------------------------------------------------------

    def current_children(self, group):
        return [c for c in self.children.values()
                if c.generation == self.generation and c.group is group and not c.expected]

    def spawn_missing(self):
        """Start a child for every empty position whose backoff has passed."""
        now = time.monotonic()
        for group in self.groups:
            occupied = {c.position for c in self.current_children(group)}
            for position in range(group.size):
                if position not in occupied and group.backoffs[position].ready(now):
                    self.spawn(group, position)

    def spawn(self, group, position):
        if not self.free_slots:
            log.error("cannot start a child for queues %s: all %d scoreboard slots are taken",
                      group.name, scoreboard.SLOT_COUNT)
            return
        slot = self.free_slots.pop(0)
        now = time.monotonic()
        # The slot is ready before the child can write to it.
        self.board.claim(slot, 0, now)
        # The child keeps these signals blocked until it has installed its own
        # handlers, so a SIGTERM sent right after the fork still drains it.
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pid = os.fork()
        except OSError as error:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
            self.release_slot(slot)
            delay = group.backoffs[position].record_exit(0.0, now)
            log.error("cannot fork a child for queues %s: %s; next try in %.0f s", group.name, error, delay)
            return
        if pid == 0:
            self.become_child(group, slot)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        self.board.set_pid(slot, pid)
        self.children[pid] = ChildProcess(pid, slot, group, position, self.generation, now)
        log.info("started child %d for queues %s (slot %d)", pid, group.name, slot)

    def become_child(self, group, slot):
        """Run in the forked child: reset what belongs to the supervisor, then run the worker."""
        code = child_module.EXIT_SETUP_FAILED
        try:
            signal.set_wakeup_fd(-1)
            os.close(self.wakeup_read)
            os.close(self.wakeup_write)
            if self.metrics is not None:
                self.metrics.close_in_child()
            code = child_module.Child(self.settings, group.queues, slot, self.board, self.pid).run()
        except BaseException:
            log.exception("child %d crashed", os.getpid())
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)

    def release_slot(self, slot):
        self.board.free(slot)
        self.free_slots.append(slot)
        self.free_slots.sort()

    def drain_child(self, child, reason):
        if child.expected:
            return
        child.expected = True
        log.info("draining child %d (%s)", child.pid, reason)
        self.send_signal(child, signal.SIGTERM)

    def send_signal(self, child, signum):
        try:
            os.kill(child.pid, signum)
        except ProcessLookupError:
            pass

    def kill_hung(self):
        now = time.monotonic()
        servers = len(self.settings.job_servers)
        for child in list(self.children.values()):
            if child.kill_reason is not None:
                continue
            slot = self.board.read(child.slot)
            busy = slot.state in (scoreboard.BUSY, scoreboard.BACKOFF)
            silence = now - slot.heartbeat
            if silence <= hang_limit(busy, child.group.timeout, servers):
                continue
            if busy:
                log.critical("child %d hung: no heartbeat for %.0f s while running job %s %s; killing it",
                             child.pid, silence, slot.handle, slot.method)
            else:
                log.critical("child %d hung: no heartbeat for %.0f s while %s; killing it",
                             child.pid, silence, slot.state_name)
            child.kill_reason = "hang"
            self.send_signal(child, signal.SIGKILL)

    def reap(self):
        """Collect every child of ours that exited, then decide what its exit means."""
        for pid in list(self.children):
            try:
                waited, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                waited, status = pid, None
            if waited == pid:
                self.child_exited(self.children.pop(pid), status)

    def child_exited(self, child, status):
        now = time.monotonic()
        slot = self.board.read(child.slot)
        description = describe_status(status)
        code = os.WEXITSTATUS(status) if status is not None and os.WIFEXITED(status) else None
        recycled = code in RECYCLE_CODES
        expected = child.expected or recycled or self.stopping

        if expected:
            log.info("child %d exited (%s; expected)", child.pid, description)
        else:
            killed = status is not None and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            hint = " Perhaps out of memory?" if killed and child.kill_reason is None else ""
            log.error("child %d exited (%s; not expected).%s", child.pid, description, hint)
            # The crash is in the crash table before the slot is freed, so a child
            # that takes the job meanwhile finds it in one of the two.
            self.count_crash(slot)
        self.release_slot(child.slot)
        if self.metrics is not None:
            self.metrics.child_exited(child, code, expected, slot)
        if child.generation != self.generation or child.expected or self.stopping:
            return

        healthy = exit_was_healthy(code, slot.jobs_done)
        if recycled and not healthy:
            log.error("child %d recycled itself before finishing any job: max-memory-per-child (%d MiB) "
                      "is probably below the memory of a fresh child; raise it",
                      child.pid, self.settings.max_memory_per_child)
        backoff = child.group.backoffs[child.position]
        delay = backoff.record_exit(now - child.started, now, healthy)
        if delay:
            log.warning("group %s position %d: children keep exiting soon after start; next start in %.0f s",
                        child.group.name, child.position, delay)

    def count_crash(self, slot):
        """Count a crash against the job the child held; poison it after max-job-crashes."""
        if slot.state not in (scoreboard.BUSY, scoreboard.BACKOFF) or not slot.handle:
            return
        handle = slot.handle
        crashes = self.crashes.pop(slot.job_key, 0) + 1
        self.crashes[slot.job_key] = crashes
        while len(self.crashes) > CRASH_TABLE_SIZE:
            self.crashes.popitem(last=False)
        self.board.record_crashes(slot.job_key, crashes)
        if crashes >= self.settings.max_job_crashes:
            log.error("job %s %s crashed %d children: it will be failed without running (max-job-crashes)",
                      handle, slot.method, crashes)
        else:
            log.warning("job %s %s crashed child %d (%d of %d before it is failed)",
                        handle, slot.method, slot.pid, crashes, self.settings.max_job_crashes)

    def notify_ready(self):
        if self.ready:
            return
        states = [self.board.read(c.slot).state for c in self.children.values() if not c.expected]
        if states and all(state != scoreboard.STARTING for state in states):
            self.ready = True
            notify.notify("READY=1")

    # -- exit ----------------------------------------------------------------

    def cleanup(self):
        """Undo what setup did, as far as it got."""
        if self.metrics is not None:
            self.metrics.shutdown()
        if self.board is not None:
            self.board.close()
            self.board.remove()
        if self.pidfile_written:
            pidfile.remove(self.pidfile_written, self.pid)
        if self.board is not None:
            log.info("curlerd %d stopped", self.pid)


def hang_limit(busy, timeout, servers):
    """Return the seconds of heartbeat silence after which a child counts as hung.

    A busy child beats before each HTTP attempt, so it may be silent for one
    whole request (``timeout``) plus the margin. An idle child beats about
    every second between job server polls.
    """
    if busy:
        return timeout + BUSY_HANG_MARGIN * servers
    return IDLE_HANG_SECONDS + (gearman.CONNECT_TIMEOUT + gearman.IO_TIMEOUT) * servers


def exit_was_healthy(code, jobs_done):
    """Tell whether an exit resets the respawn backoff of its position.

    A drained child and one that recycled itself after running jobs are
    healthy. A child that recycled before its first job would be replaced by
    one that does the same at once, so that exit counts as a failure.
    """
    if code == child_module.EXIT_DRAINED:
        return True
    return code in RECYCLE_CODES and jobs_done > 0


def describe_status(status):
    if status is None:
        return "exit status unknown: already reaped"
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        return f"killed by {signal.Signals(signum).name}"
    code = os.WEXITSTATUS(status)
    reason = child_module.EXIT_REASONS.get(code)
    return f"exit status {code}" + (f", {reason}" if reason else "")


def daemonize(log_file):
    """Detach from the terminal: fork, new session, fork again, standard streams to the log or /dev/null.

    The working directory stays the same, so relative paths in the
    configuration still resolve when a SIGHUP reads it again.
    """
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    logs.redirect_stdio(log_file)


def drop_privileges(user, group, owned_paths=()):
    """Switch to ``user`` and ``group`` when running as root, handing ``owned_paths`` to them first."""
    if not user and not group:
        return
    if os.geteuid() != 0:
        raise PermissionError(f"--user and --group need root, but curlerd runs as uid {os.geteuid()}")
    entry = pwd.getpwnam(user) if user else None
    gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
    uid = entry.pw_uid if entry is not None else -1
    for path in owned_paths:
        os.chown(path, uid, gid)
    os.setgroups([])
    if entry is not None:
        os.initgroups(entry.pw_name, gid)
    os.setgid(gid)
    if entry is not None:
        os.setuid(uid)
    log.info("running as user %s, group %s", user or os.geteuid(), group or gid)
