"""The child: one worker process that takes jobs from Gearman and POSTs them to the web app.

Its life: set up after the fork (signals, a new HTTP session, a reseeded
random generator), then register on every job server and run jobs one at a
time. It exits with a named code when it drains, recycles or loses its parent.
"""

import logging
import os
import random
import re
import select
import signal
import socket
import time
import urllib.parse

import psutil
import setproctitle

from . import deadletter, delivery, gearman, job as jobs, logs, scoreboard

log = logging.getLogger("curler.child")

# Exit codes, and what each one means to the supervisor.
EXIT_DRAINED = 0        # asked to stop; finished its job
EXIT_MAX_JOBS = 10      # ran max-jobs-per-child jobs; replace it
EXIT_MAX_MEMORY = 11    # resident memory went over max-memory-per-child; replace it
EXIT_ORPHANED = 12      # the supervisor died; do not come back
EXIT_SETUP_FAILED = 13  # could not start; the supervisor backs off before the next try

EXIT_REASONS = {
    EXIT_DRAINED: "drained",
    EXIT_MAX_JOBS: "max jobs",
    EXIT_MAX_MEMORY: "memory",
    EXIT_ORPHANED: "orphaned",
    EXIT_SETUP_FAILED: "setup failed",
}

PRINTABLE_ASCII = re.compile(rb"[\x20-\x7e]*")
# Characters left as they are when a header value needs percent-encoding: printable ASCII but "%".
HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7f) if chr(c) != "%")

# Seconds between heartbeats while idle; also how soon a drain or a dead parent is noticed.
IDLE_TICK = 1.0
MEMORY_CHECK_INTERVAL = 1.0


class Child:
    """One worker process serving ``queues`` on every job server."""

    def __init__(self, settings, queues, slot_index, board, parent_pid):
        self.settings = settings
        self.queues = {name.encode(): settings.queues[name] for name in queues}
        self.queue_index = {name: index for index, name in enumerate(self.queues)}
        self.slot_index = slot_index
        self.board = board
        self.parent_pid = parent_pid
        self.pid = os.getpid()
        self.draining = False
        self.reopen_logs = False
        self.dead_letter_failures = 0
        self.title_busy = False
        self.next_parent_check = 0.0
        self.crash_generation = -1
        self.crash_counts = {}

    # -- life ---------------------------------------------------------------

    def run(self):
        """Run until drained, recycled or orphaned; return the exit code."""
        try:
            self.setup()
        except Exception:
            log.exception("child %d: setup failed", self.pid)
            return EXIT_SETUP_FAILED
        try:
            return self.loop()
        finally:
            self.shutdown()

    def setup(self):
        self.install_signals()
        random.seed()
        self.slot = scoreboard.SlotWriter(self.board, self.slot_index, time.monotonic)
        self.delivery = delivery.Delivery(self.settings)
        self.static_headers = {name: {"Content-Type": None, "X-Curler-Queue": header_value(name)}
                               for name in self.queues}
        client_id = f"curlerd-{socket.gethostname()}-{self.pid}"
        timeouts = {"connect_timeout": gearman.CONNECT_TIMEOUT, "io_timeout": gearman.IO_TIMEOUT}
        self.worker = gearman.Worker(self.settings.job_servers, list(self.queues), client_id,
                                     wakeup_fd=self.wakeup_read, on_sleep=self.show_idle, **timeouts)
        self.dead_letters = gearman.Client(self.settings.job_servers, **timeouts)
        self.max_jobs = job_limit(self.settings.max_jobs_per_child, self.settings.max_jobs_jitter)
        self.max_rss = self.settings.max_memory_per_child * 1024 * 1024
        self.process = psutil.Process()
        self.next_memory_check = 0.0
        self.jobs_done = 0
        self.set_title("idle")
        # Connecting now lets IDLE mean registered, which systemd's READY=1 waits for.
        self.worker.connect_due(time.monotonic())
        self.slot.set_state(scoreboard.IDLE)
        log.info("child %d started: queues %s on job servers %s", self.pid,
                 ",".join(q.decode() for q in self.queues),
                 ",".join(gearman.format_server(s) for s in self.settings.job_servers))

    def install_signals(self):
        self.wakeup_read, wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wakeup_write, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self.handle_term)
        signal.signal(signal.SIGUSR1, self.handle_usr1)
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)
        for ignored in (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(ignored, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # The supervisor forks with these signals blocked; a signal that came
        # in since then is delivered now, to the handlers above.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, (
            signal.SIGTERM, signal.SIGUSR1, signal.SIGQUIT, signal.SIGINT, signal.SIGHUP,
            signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD))

    def handle_term(self, signum, frame):
        self.draining = True

    def handle_usr1(self, signum, frame):
        self.reopen_logs = True

    def loop(self):
        while True:
            if self.reopen_logs:
                self.reopen_logs = False
                try:
                    logs.reopen()
                except OSError as error:
                    log.error("child %d: cannot reopen the log file %s: %s",
                              self.pid, self.settings.log_file, error)
            code = self.check_exit()
            if code is not None:
                return code
            job = self.worker.grab_job(IDLE_TICK)
            if job is None:
                self.tick()
                continue
            self.run_job(job)
            # Resident memory is measured right after each job, before the next grab.
            self.next_memory_check = 0.0

    def check_exit(self):
        """Return an exit code when the child should stop now, else None."""
        if self.draining:
            log.info("child %d draining: exiting after %d jobs", self.pid, self.jobs_done)
            return EXIT_DRAINED
        if self.parent_gone():
            log.warning("child %d: supervisor %d is gone; exiting", self.pid, self.parent_pid)
            # The supervisor can no longer remove its scoreboard; the first orphan does.
            self.board.remove()
            return EXIT_ORPHANED
        if self.max_jobs and self.jobs_done >= self.max_jobs:
            log.info("child %d recycling after %d jobs (max-jobs-per-child)", self.pid, self.jobs_done)
            return EXIT_MAX_JOBS
        if self.max_rss and time.monotonic() >= self.next_memory_check:
            self.next_memory_check = time.monotonic() + MEMORY_CHECK_INTERVAL
            rss = self.process.memory_info().rss
            if rss > self.max_rss:
                log.warning("child %d recycling: resident memory %d MiB is over max-memory-per-child %d MiB",
                            self.pid, rss // (1024 * 1024), self.settings.max_memory_per_child)
                return EXIT_MAX_MEMORY
        return None

    def parent_gone(self):
        """Return True when the supervisor died and this child was re-parented; ask the kernel once per IDLE_TICK."""
        now = time.monotonic()
        if now < self.next_parent_check:
            return False
        self.next_parent_check = now + IDLE_TICK
        return os.getppid() != self.parent_pid

    def tick(self):
        """Idle housekeeping between polls: the heartbeat."""
        self.slot.beat()

    def shutdown(self):
        self.set_title("draining")
        self.slot.set_state(scoreboard.DRAINING)
        self.worker.close()
        self.dead_letters.close()
        self.delivery.close()

    def show_idle(self):
        """Set the idle process title when the worker is about to wait, not after every job."""
        if self.title_busy:
            self.title_busy = False
            self.set_title("idle")

    def set_title(self, text):
        setproctitle.setproctitle(f"curlerd: worker [{text}]")

    # -- one job --------------------------------------------------------------

    def run_job(self, job):
        started = time.monotonic()
        queue = self.queues[job.function]
        try:
            outcome, attempts = self.run_to_outcome(job, queue, started)
        except Exception as error:
            log.exception("child %d job %s: unexpected error", self.pid, job.handle.decode())
            outcome, attempts = self.give_up(job, queue, "-", None, f"internal error: {error!r}", None, 0, started), 0
        self.jobs_done += 1
        self.slot.count_job(self.queue_index[job.function], outcome, time.monotonic() - started, attempts > 1)
        self.slot.idle()

    def run_to_outcome(self, job, queue, started):
        """Run one job to its outcome; return ``(scoreboard outcome, attempts made)``."""
        try:
            method, data = jobs.parse_payload(job.workload)
            path = jobs.method_path(method)
        except jobs.InvalidPayload as error:
            return self.give_up(job, queue, "-", None, str(error), None, 0, started), 0
        key = scoreboard.job_key(job.connection.name.encode(), job.handle, job.unique)
        self.slot.busy(job.handle, method, job.function, key)
        self.set_title(f"busy {job.handle.decode()} {method}")
        self.title_busy = True
        if self.crashes_of(key) >= self.settings.max_job_crashes:
            reason = f"job crashed {self.settings.max_job_crashes} children (max-job-crashes)"
            return self.give_up(job, queue, method, None, reason, None, 0, started), 0
        return self.deliver(job, queue, method, path, data, started)

    def deliver(self, job, queue, method, path, data, started):
        content_type, body = jobs.encode_body(queue.post_format, data, job.handle.decode())
        headers = self.static_headers[job.function].copy()
        headers["Content-Type"] = content_type
        headers["X-Curler-Job-Handle"] = header_value(job.handle)
        headers["X-Curler-Job-Unique"] = header_value(job.unique)
        base_url = None
        attempt = None
        for number in range(1, queue.max_attempts + 1):
            # After a connection error, the retry goes to another base URL when there is one.
            avoid = base_url if attempt is not None and attempt.connection_error else None
            base_url = delivery.pick_base_url(queue.curl_paths, avoid)
            headers["X-Curler-Attempt"] = str(number)
            self.slot.beat()
            attempt = self.delivery.post(base_url, path, body, headers, queue.signing_secret, queue.timeout)
            self.slot.count_attempt(attempt.status)
            outcome = jobs.classify_status(attempt.status) if attempt.status is not None else jobs.TRANSIENT
            if attempt.truncated:
                log.warning("child %d job %s %s: response body cut off at %d bytes (max-response-bytes)",
                            self.pid, job.handle.decode(), method, self.settings.max_response_bytes)
            if outcome == jobs.SUCCESS:
                return self.succeed(job, method, attempt, number, started), number
            if outcome == jobs.PERMANENT or number == queue.max_attempts:
                break
            delay = jobs.backoff_delay(number, self.settings.retry_min_backoff, self.settings.retry_max_backoff,
                                       jobs.parse_retry_after(attempt.retry_after, time.time()), random.uniform)
            log.warning("child %d job %s %s: attempt %d of %d failed (%s); retrying in %.1f s",
                        self.pid, job.handle.decode(), method, number, queue.max_attempts, attempt.describe(), delay)
            if not self.wait(delay):
                return self.release(job, method, "drain during retry backoff"), number
        reason = attempt.describe()
        if outcome == jobs.TRANSIENT:
            reason = f"{reason} after {number} attempts"
        return self.give_up(job, queue, method, attempt.url, reason, attempt.status, number, started), number

    def succeed(self, job, method, attempt, attempts, started):
        try:
            self.worker.complete(job, attempt.body)
        except gearman.GearmanError as error:
            log.warning("child %d job %s %s: delivered, but the outcome was not sent (%s); "
                        "the job server will hand it out again", self.pid, job.handle.decode(), method, error)
            return scoreboard.RELEASED
        log.info("child %d job %s %s: HTTP %d in %d ms%s", self.pid, job.handle.decode(), method,
                 attempt.status, (time.monotonic() - started) * 1000,
                 "" if attempts == 1 else f" after {attempts} attempts")
        return scoreboard.SUCCESS

    def give_up(self, job, queue, method, url, reason, status, attempts, started):
        """Fail ``job`` for good: dead-letter it first, or release it when no dead letter could be stored."""
        handle = job.handle.decode()
        if queue.dead_letter_queue:
            letter = deadletter.build(job, url, reason, status, attempts)
            try:
                self.dead_letters.submit_background(queue.dead_letter_queue, letter)
            except gearman.GearmanError as error:
                log.error("child %d job %s %s: failed (%s), and no job server accepted the dead letter (%s); "
                          "releasing the job so that it is handed out again", self.pid, handle, method, reason, error)
                outcome = self.release(job, method, "dead letter not stored")
                self.pause_after_dead_letter_failure()
                return outcome
            self.dead_letter_failures = 0
        try:
            self.worker.fail(job)
        except gearman.GearmanError as error:
            log.warning("child %d job %s %s: WORK_FAIL not sent (%s)", self.pid, handle, method, error)
        where = f"; dead letter on {queue.dead_letter_queue}" if queue.dead_letter_queue else ""
        log.error("child %d job %s %s: failed in %d ms: %s%s", self.pid, handle, method,
                  (time.monotonic() - started) * 1000, reason, where)
        return scoreboard.DEAD_LETTERED if queue.dead_letter_queue else scoreboard.FAILED

    def pause_after_dead_letter_failure(self):
        """Wait before the next job, longer after each failure, so a full dead letter queue is not hammered."""
        self.dead_letter_failures += 1
        delay = jobs.backoff_delay(self.dead_letter_failures, self.settings.retry_min_backoff,
                                   self.settings.retry_max_backoff, None, random.uniform)
        log.warning("child %d: pausing %.1f s before the next job because dead letters cannot be stored",
                    self.pid, delay)
        self.wait(delay)

    def release(self, job, method, reason):
        log.warning("child %d job %s %s: released to the job server (%s)", self.pid, job.handle.decode(), method, reason)
        self.worker.release(job)
        return scoreboard.RELEASED

    def wait(self, seconds):
        """Sleep ``seconds`` with heartbeats; return False as soon as a drain starts."""
        self.slot.set_state(scoreboard.BACKOFF)
        deadline = time.monotonic() + seconds
        poller = select.poll()
        poller.register(self.wakeup_read, select.POLLIN)
        try:
            while not self.draining:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return True
                if poller.poll(min(remaining, IDLE_TICK) * 1000):
                    gearman.drain_fd(self.wakeup_read)
                self.slot.beat()
            return False
        finally:
            self.slot.set_state(scoreboard.BUSY)

    def crashes_of(self, key):
        """Return how many children the job ``key`` crashed, the one not reaped yet included.

        gearmand hands a job out again as soon as the connection of the child
        that crashed on it closes, which can be before the supervisor counted
        that crash. A job that crashed before is therefore checked against the
        slots too, which costs a scan of the scoreboard for that job only.
        NOTE: a job with no crash counted yet is not checked against the slots,
        so with max-job-crashes = 1 it may run once more.
        """
        generation = self.board.crash_generation()
        if generation != self.crash_generation:
            self.crash_generation = generation
            self.crash_counts = self.board.crash_counts()
        crashes = self.crash_counts.get(key, 0)
        if crashes == 0 or crashes >= self.settings.max_job_crashes:
            return crashes
        return crashes + self.board.holders(key, self.slot_index)


def header_value(data):
    """Return Gearman bytes as a header value, percent-encoding bytes outside printable ASCII."""
    if PRINTABLE_ASCII.fullmatch(data):
        return data.decode("ascii")
    return urllib.parse.quote(data, safe=HEADER_SAFE)


def job_limit(max_jobs, jitter):
    if not max_jobs:
        return 0
    return max_jobs + (random.randint(0, jitter) if jitter else 0)
