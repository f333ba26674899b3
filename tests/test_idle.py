"""Idle children: they sleep in poll until gearmand wakes them, stay registered, and are watched."""

import os
import signal
import time

from curler import gearman


from conftest import gone, job_payload, wait_until

IDLE_SECONDS = 3.0
# An idle child wakes once a second for its heartbeat; a busy loop would burn
# the whole IDLE_SECONDS. The bound is CPU time, not wall time.
MAX_IDLE_CPU_SECONDS = 0.1


def cpu_seconds(process):
    times = process.cpu_times()
    return times.user + times.system


def test_idle_children_use_almost_no_cpu(curlerd, client, endpoint):
    daemon = curlerd(workers="2")
    client.submit_background("curl", job_payload(user_id=1))
    endpoint.wait_for(1)
    children = daemon.children()
    before = [cpu_seconds(child) for child in children]
    time.sleep(IDLE_SECONDS)
    after = [cpu_seconds(child) for child in children]
    for start, end in zip(before, after):
        assert end - start < MAX_IDLE_CPU_SECONDS
    client.submit_background("curl", job_payload(user_id=2))
    assert endpoint.wait_for(2)[1].form == {"user_id": "2"}


def test_idle_hung_child_is_replaced(curlerd, client, endpoint):
    daemon = curlerd(workers="1")
    frozen = daemon.child_pids()[0]
    # A stopped child no longer beats, the way a child stuck outside its poll would not.
    os.kill(frozen, signal.SIGSTOP)
    daemon.wait_for_log(rf"CRITICAL curler.supervisor: child {frozen} hung: no heartbeat for \d+ s while idle",
                        timeout=90)
    wait_until(lambda: gone(frozen), message="the hung child to be killed")
    replacement = daemon.wait_for_children(1)[0]
    assert replacement != frozen
    client.submit_background("curl", job_payload(user_id=3))
    assert endpoint.wait_for(1)[0].form == {"user_id": "3"}


LONG_IDLE_SECONDS = 125.0


def test_job_after_minutes_idle_is_delivered(curlerd, client, endpoint, gearmand):
    daemon = curlerd(workers="2")
    pids = daemon.child_pids()
    time.sleep(LONG_IDLE_SECONDS)
    assert daemon.child_pids() == pids
    workers = gearman.server_workers(gearman.parse_server(gearmand.address))
    assert len([w for w in workers if w[2].startswith("curlerd-")]) == 2
    client.submit_background("curl", job_payload(user_id=4))
    assert endpoint.wait_for(1, timeout=30)[0].form == {"user_id": "4"}
