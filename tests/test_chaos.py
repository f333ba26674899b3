"""Chaos: children SIGKILLed at random and the configuration reloaded while jobs flow; no job is lost."""

import os
import random
import re
import signal
import time

from curler import gearman
from curler.testing import Reply

from conftest import job_payload, wait_until

JOBS = 300
# Upper bound of the disruption phase, in seconds. It ends sooner once every job arrived.
CHAOS_SECONDS = 20.0
KILL_INTERVAL = 0.3
KILLS_PER_RELOAD = 5


def test_chaos_kills_and_reloads_lose_no_job(curlerd, endpoint, client, gearmand):
    endpoint.default = Reply(delay=0.03)
    # Random kills must not make a job look like poison.
    daemon = curlerd(workers=3, max_job_crashes=1000)
    uniques = [f"chaos-{number}" for number in range(JOBS)]
    for number, unique in enumerate(uniques):
        client.submit_background("curl", job_payload("chaos", n=number), unique=unique)
    chooser = random.Random(os.getpid())

    kills = reloads = 0
    deadline = time.monotonic() + CHAOS_SECONDS
    while len(endpoint.requests) < JOBS and time.monotonic() < deadline:
        pids = daemon.child_pids()
        if pids:
            try:
                os.kill(chooser.choice(pids), signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
        if kills and kills % KILLS_PER_RELOAD == 0:
            daemon.settings["workers"] = str(chooser.randint(2, 4))
            daemon.write_config()
            daemon.signal(signal.SIGHUP)
            reloads += 1
            daemon.wait_for_log(r"reloaded: \d+ new children", count=reloads)
        time.sleep(KILL_INTERVAL)  # the pace of the disruption, not a wait for a condition

    def delivered():
        return {request.headers["X-Curler-Job-Unique"] for request in list(endpoint.requests)}

    def queue(name):
        return gearman.server_status(gearman.parse_server(gearmand.address)).get(name, (0, 0, 0))

    wait_until(lambda: delivered() == set(uniques), timeout=60, message="every job delivered at least once")
    wait_until(lambda: queue("curl")[:2] == (0, 0), timeout=60, message="an empty curl queue")
    assert kills >= KILLS_PER_RELOAD
    assert reloads >= 1
    assert queue("curl.failed")[0] == 0
    assert not re.search(r"job \S+ chaos: failed", daemon.log())
    assert daemon.stop() == 0
