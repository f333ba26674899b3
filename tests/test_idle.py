"""Idle children: they sleep in poll until gearmand wakes them, so they use next to no CPU."""

import time


from conftest import job_payload

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
