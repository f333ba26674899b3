"""The supervisor against real processes: crashes, hangs, recycling, orphans, job servers, titles."""

import os
import re
import shutil
import signal
import tempfile

import psutil
import pytest

from curler import gearman, scoreboard, testing
from curler.testing import Reply

from conftest import Curlerd, gone, job_payload, wait_until


def holders_of(daemon, handle):
    """Return the pids of children whose scoreboard slots show job ``handle``, the latest to take it first.

    A child killed a moment ago keeps its slot until the supervisor reaps it,
    so the same handle can show up twice.
    """
    board = scoreboard.Scoreboard(scoreboard.default_path(daemon.pid))
    try:
        slots = [slot for slot in board.slots()
                 if slot.handle == handle and slot.state in (scoreboard.BUSY, scoreboard.BACKOFF)]
    finally:
        board.close()
    return [slot.pid for slot in sorted(slots, key=lambda slot: slot.job_started, reverse=True)]


def holder_of(daemon, handle):
    """Return the pid of the child that took job ``handle`` last, or None."""
    pids = holders_of(daemon, handle)
    return pids[0] if pids else None


def kill_holder_on(endpoint, path, daemon_of):
    """Make ``endpoint`` SIGKILL the child that sends a request to ``path``, and never reply.

    ``daemon_of`` returns the Curlerd whose scoreboard names the child.
    """
    endpoint.script(path, Reply(hang=True))
    record = endpoint.record

    def record_and_kill(request):
        if request.path == path:
            for pid in holders_of(daemon_of(), request.headers["X-Curler-Job-Handle"]):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # a holder that died before is reaped by now
        record(request)

    endpoint.record = record_and_kill


def queue_status(address, queue="curl"):
    return gearman.server_status(gearman.parse_server(address)).get(queue, (0, 0, 0))


def registered_pids(address, queue="curl"):
    """Return the pids of curlerd children registered for ``queue`` on the job server at ``address``."""
    pids = set()
    for _, _, client_id, functions in gearman.server_workers(gearman.parse_server(address)):
        if queue in functions and client_id.startswith("curlerd-"):
            pids.add(int(client_id.rsplit("-", 1)[1]))
    return pids



def title(pid):
    return " ".join(psutil.Process(pid).cmdline()).strip()


# -- the scoreboard ----------------------------------------------------------------


def test_heartbeat_never_reads_zero(tmp_path):
    board = scoreboard.Scoreboard(str(tmp_path / "scoreboard"), create=True)
    board.claim(0, 0, 1.0)
    writer = scoreboard.SlotWriter(board, 0, lambda: 1234.5)
    writer.set_state(scoreboard.IDLE)
    pid = os.fork()
    if pid == 0:
        for _ in range(200000):
            writer.beat()
            writer.set_state(scoreboard.IDLE)
        os._exit(0)
    try:
        torn = 0
        for _ in range(200000):
            slot = board.read(0)
            if slot.heartbeat != 1234.5 or slot.state != scoreboard.IDLE:
                torn += 1
    finally:
        os.waitpid(pid, 0)
        board.close()
    # A reader sees each field either before or after a write, never zero-filled.
    assert torn == 0


# -- crashes --------------------------------------------------------------------


def test_killed_child_job_delivered_again(curlerd, endpoint, client, gearmand):
    endpoint.script("/jobs/slow", Reply(hang=True), Reply())
    daemon = curlerd(workers=2)
    handle, _ = client.submit_background("curl", job_payload("slow"))
    first = endpoint.wait_for(1, path="/jobs/slow")[0]
    victim = holder_of(daemon, handle.decode())
    assert victim in daemon.child_pids()

    os.kill(victim, signal.SIGKILL)

    second = endpoint.wait_for(2, path="/jobs/slow")[1]
    assert second.headers["X-Curler-Job-Handle"] == first.headers["X-Curler-Job-Handle"]
    daemon.wait_for_log(rf"job {handle.decode()} slow: HTTP 200")
    log = daemon.log()
    assert re.search(rf"child {victim} exited \(killed by SIGKILL; not expected\)", log)
    assert f"job {handle.decode()} slow crashed child {victim} (1 of 3 before it is failed)" in log
    wait_until(lambda: queue_status(gearmand.address)[:2] == (0, 0), message="the job completed")
    daemon.wait_for_children(2)
    assert daemon.stop() == 0


def test_crash_loop_backs_off(curlerd):
    # No child fits in 1 MiB of resident memory, so each one exits before its first job.
    daemon = curlerd(workers=1, max_memory_per_child=1, wait=False)
    daemon.wait_for_log(r"position 0: children keep exiting soon after start; next start in 4 s", timeout=30)

    log = daemon.log()
    steps = re.findall(r"position 0: children keep exiting soon after start; next start in (\d+) s", log)
    assert steps[:3] == ["1", "2", "4"]
    assert "max-memory-per-child (1 MiB) is probably below the memory of a fresh child" in log
    # Three waits of 1, 2 and 4 s allow four starts, not a fork storm.
    assert len(re.findall(r"started child \d+", log)) <= 4
    assert daemon.stop() == 0


def test_poison_job_failed_after_max_crashes(curlerd, endpoint, client, gearmand):
    instances = []
    kill_holder_on(endpoint, "/jobs/poison", lambda: instances[0])
    instances.append(curlerd(workers=2))
    daemon = instances[0]
    handle, _ = client.submit_background("curl", job_payload("poison"))
    handle = handle.decode()

    daemon.wait_for_log(rf"job {handle} poison: failed in \d+ ms: job crashed 3 children", timeout=40)

    log = daemon.log()
    assert f"job {handle} poison crashed 3 children: it will be failed without running" in log
    crashes = len(re.findall(r"exited \(killed by SIGKILL; not expected\)", log))
    assert crashes == 3
    assert len(endpoint.wait_for(crashes, path="/jobs/poison")) == crashes
    assert queue_status(gearmand.address, "curl.failed")[0] == 1
    # The pool still works after the poison job is gone.
    for number in range(4):
        client.submit_background("curl", job_payload("healthy", n=number))
    endpoint.wait_for(4, path="/jobs/healthy")
    assert len(endpoint.wait_for(crashes, path="/jobs/poison")) == crashes
    assert daemon.stop() == 0


def test_hung_child_killed_by_heartbeat(curlerd, endpoint, client, gearmand):
    endpoint.script("/jobs/stuck", Reply(delay=5), Reply())
    daemon = curlerd(workers=2, timeout=1)
    handle, _ = client.submit_background("curl", job_payload("stuck"))
    handle = handle.decode()
    endpoint.wait_for(1, path="/jobs/stuck")
    frozen = holder_of(daemon, handle)

    # A stopped child no longer beats, the way a child stuck in a system call would not.
    os.kill(frozen, signal.SIGSTOP)

    daemon.wait_for_log(rf"CRITICAL curler.supervisor: child {frozen} hung: no heartbeat for \d+ s "
                        rf"while running job {handle} stuck; killing it", timeout=40)
    endpoint.wait_for(2, path="/jobs/stuck")
    daemon.wait_for_log(rf"job {handle} stuck: HTTP 200")
    assert re.search(rf"child {frozen} exited \(killed by SIGKILL; not expected\)\.\n", daemon.log())
    assert gone(frozen)
    daemon.wait_for_children(2)
    assert daemon.stop() == 0


# -- recycling ----------------------------------------------------------------------


def test_recycle_after_max_jobs_with_jitter(curlerd, endpoint, client):
    daemon = curlerd(workers=1, max_jobs_per_child=3, max_jobs_jitter=2)
    for number in range(20):
        client.submit_background("curl", job_payload("counted", n=number), unique=f"counted-{number}")
    endpoint.wait_for(20, path="/jobs/counted")
    daemon.wait_for_log(r"job \S+ counted: HTTP 200", count=20)

    log = daemon.log()
    limits = [int(n) for n in re.findall(r"recycling after (\d+) jobs \(max-jobs-per-child\)", log)]
    assert len(limits) >= 3
    assert all(3 <= limit <= 5 for limit in limits)
    assert len(re.findall(r"exited \(exit status 10, max jobs; expected\)", log)) == len(limits)
    jobs_per_child = {}
    for pid in re.findall(r"child (\d+) job \S+ counted: HTTP 200", log):
        jobs_per_child[pid] = jobs_per_child.get(pid, 0) + 1
    assert max(jobs_per_child.values()) <= 5
    assert "keep exiting soon after start" not in log
    assert daemon.stop() == 0


def test_recycle_over_max_memory(curlerd, endpoint, client):
    daemon = curlerd(workers=1)
    (pid,) = daemon.child_pids()
    fresh_mib = psutil.Process(pid).memory_info().rss // (1024 * 1024)
    # A 64 MiB response body is held by the child until the job is reported.
    endpoint.script("/jobs/big", Reply(body=b"x" * (64 * 1024 * 1024)))
    daemon.settings.update({"max-memory-per-child": str(fresh_mib + 40),
                            "max-response-bytes": str(80 * 1024 * 1024)})
    daemon.write_config()
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_log("reloaded:")
    (small_child,) = wait_until(lambda: [p for p in daemon.child_pids() if p != pid] or None,
                                message="the reloaded child")
    daemon.wait_for_children(1)

    client.submit_background("curl", job_payload("small"))
    daemon.wait_for_log(r"job \S+ small: HTTP 200")
    assert daemon.child_pids() == [small_child]
    client.submit_background("curl", job_payload("big"))

    daemon.wait_for_log(rf"child {small_child} recycling: resident memory \d+ MiB is over "
                        rf"max-memory-per-child {fresh_mib + 40} MiB")
    daemon.wait_for_log(rf"child {small_child} exited \(exit status 11, memory; expected\)")
    replacement = daemon.wait_for_children(1)
    assert replacement != [small_child]
    assert re.search(rf"child {small_child} job \S+ big: HTTP 200", daemon.log())
    assert "keep exiting soon after start" not in daemon.log()
    assert daemon.stop() == 0


# -- the parent's death ----------------------------------------------------------


def test_parent_sigkill_leaves_no_orphans(curlerd, endpoint, client):
    endpoint.script("/jobs/slow", Reply(delay=2))
    daemon = curlerd(workers=2)
    pids = daemon.child_pids()
    handle, _ = client.submit_background("curl", job_payload("slow"))
    endpoint.wait_for(1, path="/jobs/slow")
    busy = holder_of(daemon, handle.decode())
    board_path = scoreboard.default_path(daemon.pid)

    daemon.process.kill()
    daemon.process.wait(10)

    wait_until(lambda: all(gone(pid) for pid in pids), timeout=15, message="orphaned children to exit")
    log = daemon.log()
    for pid in pids:
        assert f"child {pid}: supervisor {daemon.pid} is gone; exiting" in log
    # The busy child finished its job before it left.
    assert re.search(rf"child {busy} job {handle.decode()} slow: HTTP 200", log)
    assert not os.path.exists(board_path)


# -- job servers -----------------------------------------------------------------


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_gearmand_restart_children_reregister(curlerd, endpoint, client, gearmand, busy):
    endpoint.script("/jobs/slow", Reply(delay=3))
    daemon = curlerd(workers=2)
    pids = set(daemon.child_pids())
    wait_until(lambda: registered_pids(gearmand.address) == pids, message="both children registered")
    if busy:
        client.submit_background("curl", job_payload("slow"))
        endpoint.wait_for(1, path="/jobs/slow")
    client.close()

    gearmand.stop()
    gearmand.start()

    wait_until(lambda: registered_pids(gearmand.address) == pids, timeout=10,
               message="both children registered on the restarted gearmand")
    assert set(daemon.child_pids()) == pids
    assert "exited" not in daemon.log()
    with gearman.Client([gearman.parse_server(gearmand.address)]) as new_client:
        new_client.submit_background("curl", job_payload("after_restart"))
    endpoint.wait_for(1, path="/jobs/after_restart")
    assert daemon.stop() == 0


def test_gearmand_down_at_start(curlerd, endpoint, gearmand):
    gearmand.stop()
    daemon = curlerd(workers=2)
    pids = daemon.child_pids()
    daemon.wait_for_log(r"WARNING curler.gearman: job server \S+ unavailable", count=2)

    gearmand.start()

    wait_until(lambda: registered_pids(gearmand.address) == set(pids), timeout=30,
               message="both children registered once gearmand is up")
    log = daemon.log()
    # Each child warns once; later failed tries are logged at debug level.
    assert len(re.findall(r"WARNING curler.gearman: job server \S+ unavailable", log)) == 2
    assert daemon.child_pids() == pids
    with gearman.Client([gearman.parse_server(gearmand.address)]) as client:
        client.submit_background("curl", job_payload("late"))
    endpoint.wait_for(1, path="/jobs/late")
    assert daemon.stop() == 0


def test_two_job_servers_one_stopped(curlerd, endpoint, gearmand):
    second = testing.Gearmand().start()
    try:
        daemon = curlerd(workers=2, job_servers=f"{gearmand.address},{second.address}")
        pids = set(daemon.child_pids())
        for server in (gearmand, second):
            wait_until(lambda: registered_pids(server.address) == pids, message=f"children on {server.address}")
        for number, server in enumerate((gearmand, second)):
            with gearman.Client([gearman.parse_server(server.address)]) as client:
                client.submit_background("curl", job_payload("both", n=number))
        endpoint.wait_for(2, path="/jobs/both")

        gearmand.stop()

        with gearman.Client([gearman.parse_server(second.address)]) as client:
            for number in range(6):
                client.submit_background("curl", job_payload("survivor", n=number))
                endpoint.wait_for(number + 1, path="/jobs/survivor", timeout=5)
        assert set(daemon.child_pids()) == pids
        assert registered_pids(second.address) == pids
        assert "exited" not in daemon.log()
        assert daemon.stop() == 0
    finally:
        second.close()


# -- privileges and titles -----------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="--user and --group need root")
def test_user_group_drop_privileges(gearmand, endpoint):
    import grp
    import pwd
    user = pwd.getpwnam("nobody")
    group = grp.getgrnam("nogroup")
    # The run directory belongs to the user, as /run/curlerd would.
    directory = tempfile.mkdtemp(prefix="curler-user-")
    os.chmod(directory, 0o755)
    os.chown(directory, user.pw_uid, group.gr_gid)
    daemon = Curlerd(directory, {"job-servers": gearmand.address, "curl-paths": endpoint.url + "/jobs",
                                 "user": "nobody", "group": "nogroup"})
    try:
        daemon.start()
        with open(daemon.pidfile) as pid_file:
            assert int(pid_file.read()) == daemon.pid
        for pid in [daemon.pid] + daemon.child_pids():
            process = psutil.Process(pid)
            assert set(process.uids()) == {user.pw_uid}
            assert set(process.gids()) == {group.gr_gid}
        with gearman.Client([gearman.parse_server(gearmand.address)]) as client:
            client.submit_background("curl", job_payload("unprivileged"))
        endpoint.wait_for(1, path="/jobs/unprivileged")

        assert daemon.stop() == 0
        assert "running as user nobody, group nogroup" in daemon.log()
        assert not os.path.exists(daemon.pidfile)
        assert not os.path.exists(scoreboard.default_path(daemon.pid))
    finally:
        daemon.kill()
        shutil.rmtree(directory, ignore_errors=True)


def test_process_titles(curlerd, endpoint, client):
    endpoint.script("/jobs/titled", Reply(hang=True))
    daemon = curlerd(workers=2)
    assert title(daemon.pid) == "curlerd: master"
    for pid in daemon.child_pids():
        wait_until(lambda: title(pid) == "curlerd: worker [idle]", message=f"child {pid} idle title")

    handle, _ = client.submit_background("curl", job_payload("titled"))
    endpoint.wait_for(1, path="/jobs/titled")

    busy = holder_of(daemon, handle.decode())
    assert title(busy) == f"curlerd: worker [busy {handle.decode()} titled]"
    (idle,) = set(daemon.child_pids()) - {busy}
    assert title(idle) == "curlerd: worker [idle]"
    daemon.signal(signal.SIGQUIT)
    assert daemon.process.wait(30) == 0
