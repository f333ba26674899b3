"""Signals sent to a real curlerd: reload, drain, stop, scale, log reopening and reaping."""

import os
import re
import signal
import threading

import psutil
import pytest

from curler import gearman
from curler.testing import Reply

from conftest import job_payload, wait_until


def submit(client, count, method="work", queue="curl", prefix="job"):
    """Queue ``count`` background jobs with unique ids ``<prefix>-<n>``; return the ids."""
    uniques = [f"{prefix}-{number}" for number in range(count)]
    for number, unique in enumerate(uniques):
        client.submit_background(queue, job_payload(method, n=number), unique=unique)
    return uniques


def delivered(endpoint):
    """Return how many requests each unique id received."""
    counts = {}
    for request in list(endpoint.requests):
        unique = request.headers.get("X-Curler-Job-Unique")
        counts[unique] = counts.get(unique, 0) + 1
    return counts


def queue_status(gearmand, queue="curl"):
    """Return ``(queued, running, workers)`` of ``queue`` on ``gearmand``."""
    return gearman.server_status(gearman.parse_server(gearmand.address)).get(queue, (0, 0, 0))


def registered_functions(gearmand):
    """Return the functions of every worker connected to ``gearmand``, keyed by client id."""
    return {client_id: sorted(functions)
            for _, _, client_id, functions in gearman.server_workers(gearman.parse_server(gearmand.address))
            if functions}


# -- SIGHUP ----------------------------------------------------------------------


def test_sighup_applies_valid_config(curlerd, endpoint, client, gearmand):
    daemon = curlerd(workers=2)
    old_pids = daemon.child_pids()

    daemon.settings.update({"workers": "3", "job-queue": "curl,other", "curl-paths": endpoint.url + "/v2"})
    daemon.write_config()
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_log(r"reloaded: 3 new children on queues curl,other; draining 2 old children")
    new_pids = daemon.wait_for_children(3)

    assert not set(new_pids) & set(old_pids)
    wait_until(lambda: len(registered_functions(gearmand)) == 3, message="3 workers registered")
    assert all(functions == ["curl", "other"] for functions in registered_functions(gearmand).values())
    submit(client, 1, method="first", queue="other")
    request = endpoint.wait_for(1)[0]
    assert request.path == "/v2/first"
    assert request.headers["X-Curler-Queue"] == "other"
    for pid in old_pids:
        assert re.search(rf"child {pid} exited \(exit status 0, drained; expected\)", daemon.log())
    assert daemon.stop() == 0


def test_sighup_keeps_old_config_when_invalid(curlerd, endpoint, client):
    daemon = curlerd(workers=2)
    pids = daemon.child_pids()

    daemon.settings.update({"workers": "many", "curl-paths": "ftp://example.invalid"})
    daemon.write_config()
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_log(r"ERROR curler.supervisor: reload failed, keeping the running configuration: "
                        r"invalid workers value 'many'")

    log = daemon.log()
    assert "invalid curl-paths value 'ftp://example.invalid'" in log
    assert "reloaded:" not in log
    submit(client, 1, method="still_running")
    assert endpoint.wait_for(1)[0].path == "/jobs/still_running"
    assert daemon.child_pids() == pids
    assert daemon.stop() == 0


def test_reload_under_load_loses_no_job(curlerd, endpoint, client, gearmand):
    endpoint.default = Reply(delay=0.02)
    daemon = curlerd(workers=2)
    total = 240
    submitter_error = []

    def submit_steadily():
        try:
            with gearman.Client([gearman.parse_server(gearmand.address)]) as own_client:
                for number in range(total):
                    own_client.submit_background("curl", job_payload("steady", n=number), unique=f"load-{number}")
                    if number % 20 == 19:
                        endpoint.wait_for(number - 30, timeout=30)
        except Exception as error:  # reported by the assert below
            submitter_error.append(error)

    submitter = threading.Thread(target=submit_steadily)
    submitter.start()
    for reload_number, workers in enumerate(("3", "1", "2"), start=1):
        endpoint.wait_for(reload_number * 60, timeout=30)
        daemon.settings["workers"] = workers
        daemon.write_config()
        daemon.signal(signal.SIGHUP)
        daemon.wait_for_log(r"reloaded: \d+ new children", count=reload_number)
    submitter.join(60)

    assert not submitter_error
    endpoint.wait_for(total, timeout=60)
    counts = delivered(endpoint)
    assert sorted(counts) == sorted(f"load-{number}" for number in range(total))
    # A drain lets each job finish, so none is handed out twice either.
    assert set(counts.values()) == {1}
    wait_until(lambda: queue_status(gearmand)[:2] == (0, 0), message="an empty curl queue")
    assert not re.search(r"job \S+ \S+: (failed|released)", daemon.log())
    assert "not expected" not in daemon.log()
    assert daemon.stop() == 0


# -- SIGTERM, SIGINT, SIGQUIT -----------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_drain_finishes_job_in_flight(curlerd, endpoint, client, gearmand, signum):
    endpoint.script("/jobs/slow", Reply(delay=2))
    daemon = curlerd(workers=2)
    handle, _ = client.submit_background("curl", job_payload("slow"))
    endpoint.wait_for(1, path="/jobs/slow")

    daemon.signal(signum)

    assert daemon.process.wait(30) == 0
    log = daemon.log()
    assert f"{signal.Signals(signum).name} received: draining 2 children" in log
    assert re.search(rf"job {handle.decode()} slow: HTTP 200", log)
    assert len(re.findall(r"exited \(exit status 0, drained; expected\)", log)) == 2
    assert queue_status(gearmand)[:2] == (0, 0)
    assert not os.path.exists(daemon.pidfile)


def test_graceful_timeout_kills_what_is_left(curlerd, endpoint, client, gearmand):
    endpoint.script("/jobs/stuck", Reply(hang=True))
    daemon = curlerd(workers=2, graceful_timeout=1)
    handle, _ = client.submit_background("curl", job_payload("stuck"))
    endpoint.wait_for(1, path="/jobs/stuck")

    daemon.signal(signal.SIGTERM)

    assert daemon.process.wait(30) == 0
    log = daemon.log()
    assert re.search(rf"killing child \d+: still running at the end of the drain "
                     rf"\(job {handle.decode()} will be handed out again\)", log)
    assert "exited (killed by SIGKILL; expected)" in log
    assert "exited (exit status 0, drained; expected)" in log
    # gearmand put the job back in the queue when the killed child's connection closed.
    assert queue_status(gearmand)[:2] == (1, 0)
    assert not os.path.exists(daemon.pidfile)


@pytest.mark.parametrize("first, second", [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGINT)])
def test_second_signal_during_drain_stops_at_once(curlerd, endpoint, client, gearmand, first, second):
    endpoint.script("/jobs/stuck", Reply(hang=True))
    daemon = curlerd(workers=1, graceful_timeout=120)
    client.submit_background("curl", job_payload("stuck"))
    endpoint.wait_for(1, path="/jobs/stuck")

    daemon.signal(first)
    daemon.wait_for_log(r"received: draining 1 children")
    daemon.signal(second)

    assert daemon.process.wait(30) == 0
    assert f"{second.name} received during the drain: stopping at once" in daemon.log()
    assert queue_status(gearmand)[:2] == (1, 0)


def test_sigquit_stops_at_once(curlerd, endpoint, client, gearmand):
    endpoint.script("/jobs/stuck", Reply(hang=True))
    daemon = curlerd(workers=2, graceful_timeout=120)
    client.submit_background("curl", job_payload("stuck"))
    endpoint.wait_for(1, path="/jobs/stuck")
    pids = daemon.child_pids()

    daemon.signal(signal.SIGQUIT)

    assert daemon.process.wait(30) == 0
    assert "SIGQUIT received: stopping at once" in daemon.log()
    assert not any(psutil.pid_exists(pid) for pid in pids)
    assert queue_status(gearmand)[:2] == (1, 0)
    assert not os.path.exists(daemon.pidfile)


# -- SIGTTIN, SIGTTOU --------------------------------------------------------------


def test_sigttin_and_sigttou_scale_children(curlerd, gearmand):
    daemon = curlerd(workers=2)
    first = daemon.child_pids()

    daemon.signal(signal.SIGTTIN)
    daemon.wait_for_log("SIGTTIN received: group curl now has 3 children")
    three = daemon.wait_for_children(3)
    assert set(first) < set(three)

    # The same signal sent twice before it is handled arrives once, so each waits for the previous one.
    for expected in ("now has 2 children", "now has 1 children", "keeps its last child"):
        daemon.signal(signal.SIGTTOU)
        daemon.wait_for_log(f"SIGTTOU received: group curl {expected}")
    last = daemon.wait_for_children(1)

    assert set(last) < set(three)
    log = daemon.log()
    assert len(re.findall(r"draining child \d+ \(scaled down\)", log)) == 2
    assert "not expected" not in log
    wait_until(lambda: len(registered_functions(gearmand)) == 1, message="1 worker registered")
    assert "workers = 2" in open(daemon.ini).read()
    assert daemon.stop() == 0


# -- SIGUSR1 -----------------------------------------------------------------------


def test_sigusr1_reopens_logs_everywhere(curlerd):
    daemon = curlerd(workers=2)
    pids = daemon.child_pids()
    rotated = daemon.log_file + ".1"
    os.rename(daemon.log_file, rotated)

    daemon.signal(signal.SIGUSR1)
    wait_until(lambda: os.path.exists(daemon.log_file), message="a new log file")
    assert daemon.stop() == 0

    with open(rotated) as old_file:
        old = old_file.read()
    new = daemon.log()
    assert "SIGUSR1 received: reopening log files" in old
    assert f"curlerd {daemon.pid} stopped" in new
    for pid in pids:
        assert f"child {pid} draining" in new
        assert f"child {pid} draining" not in old
    assert "stopped" not in old


# -- SIGCHLD -----------------------------------------------------------------------


def test_sigchld_reaps_and_logs_exits(curlerd):
    daemon = curlerd(workers=2)
    killed, drained = daemon.child_pids()

    os.kill(killed, signal.SIGKILL)
    daemon.wait_for_log(rf"ERROR curler.supervisor: child {killed} exited \(killed by SIGKILL; not expected\)\. "
                        r"Perhaps out of memory\?")
    os.kill(drained, signal.SIGTERM)
    daemon.wait_for_log(rf"child {drained} exited \(exit status 0, drained; not expected\)")

    replacements = daemon.wait_for_children(2)
    assert not set(replacements) & {killed, drained}
    # Reaped at once: neither pid lingers as a zombie.
    assert not psutil.pid_exists(killed)
    assert not psutil.pid_exists(drained)
    # A child that was idle held no job, so no crash is counted against one.
    assert "crashed child" not in daemon.log()
    assert daemon.stop() == 0


def test_sigterm_right_after_fork_drains(curlerd):
    # SIGHUP forks new children, and the SIGTERM sent right after it drains
    # them as well, within milliseconds of their start.
    daemon = curlerd(workers=2, graceful_timeout=120)

    daemon.signal(signal.SIGHUP)
    daemon.signal(signal.SIGTERM)

    assert daemon.process.wait(30) == 0
    log = daemon.log()
    assert "killing child" not in log
    assert len(re.findall(r"exited \(exit status 0, drained; expected\)", log)) == 4


def test_sigterm_at_startup_cleans_up(curlerd):
    daemon = curlerd(workers=2, wait=False)
    wait_until(lambda: os.path.exists(daemon.pidfile), message="the pidfile")

    daemon.signal(signal.SIGTERM)

    assert daemon.process.wait(30) == 0
    assert not os.path.exists(daemon.pidfile)
    assert f"curlerd {daemon.pid} stopped" in daemon.log()
    assert not [p for p in psutil.process_iter(["ppid"]) if p.info["ppid"] == daemon.pid]
