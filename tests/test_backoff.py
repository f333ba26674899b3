"""Respawn backoff and the supervisor's other pure decisions, without forking anything."""

import os
import signal

import pytest

from curler import backoff, config, supervisor
from curler import child as child_module
from curler.backoff import RespawnBackoff


@pytest.mark.parametrize("failures, delay", [
    (0, 0.0), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (6, 32.0), (7, 60.0), (8, 60.0),
])
def test_respawn_delay_doubles_to_maximum(failures, delay):
    assert backoff.respawn_delay(failures) == delay


def test_respawn_delay_after_endless_failures():
    # A crash loop that lasts for days must not overflow the float conversion.
    assert backoff.respawn_delay(100000) == backoff.MAX_DELAY


def test_backoff_steps_for_quick_exits():
    state = RespawnBackoff()
    now = 1000.0
    delays = []
    for _ in range(8):
        delay = state.record_exit(uptime=0.5, now=now)
        delays.append(delay)
        assert not state.ready(now + delay - 0.01)
        assert state.ready(now + delay)
        now += delay
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_backoff_reset_by_long_uptime():
    state = RespawnBackoff()
    for _ in range(4):
        state.record_exit(uptime=1.0, now=50.0)
    assert state.record_exit(uptime=backoff.HEALTHY_UPTIME, now=60.0) == 0.0
    assert state.ready(60.0)
    assert state.record_exit(uptime=1.0, now=61.0) == 1.0


def test_backoff_reset_by_healthy_exit():
    state = RespawnBackoff()
    state.record_exit(uptime=0.1, now=10.0)
    state.record_exit(uptime=0.1, now=11.0)
    assert state.record_exit(uptime=0.1, now=12.0, healthy=True) == 0.0
    assert state.ready(12.0)
    assert state.record_exit(uptime=0.1, now=13.0) == 1.0


def test_fresh_backoff_is_ready():
    assert RespawnBackoff().ready(0.0)


@pytest.mark.parametrize("code, jobs_done, healthy", [
    (child_module.EXIT_DRAINED, 0, True),
    (child_module.EXIT_MAX_JOBS, 5, True),
    (child_module.EXIT_MAX_MEMORY, 1, True),
    (child_module.EXIT_MAX_MEMORY, 0, False),
    (child_module.EXIT_MAX_JOBS, 0, False),
    (child_module.EXIT_SETUP_FAILED, 0, False),
    (child_module.EXIT_ORPHANED, 3, False),
    (1, 10, False),
    (None, 10, False),
])
def test_exit_was_healthy(code, jobs_done, healthy):
    assert supervisor.exit_was_healthy(code, jobs_done) is healthy


def test_hang_limit_busy_follows_http_timeout():
    one_server = supervisor.hang_limit(True, 60.0, 1)
    assert one_server == 60.0 + supervisor.BUSY_HANG_MARGIN
    assert supervisor.hang_limit(True, 5.0, 1) == one_server - 55.0


def test_hang_limit_grows_with_job_servers():
    assert supervisor.hang_limit(True, 10.0, 2) > supervisor.hang_limit(True, 10.0, 1)
    assert supervisor.hang_limit(False, 10.0, 3) > supervisor.hang_limit(False, 10.0, 1)


def test_hang_limit_idle_ignores_http_timeout():
    assert supervisor.hang_limit(False, 1.0, 1) == supervisor.hang_limit(False, 600.0, 1)
    assert supervisor.hang_limit(False, 1.0, 1) >= supervisor.IDLE_HANG_SECONDS


def test_describe_status_exit_code():
    status = 11 << 8  # what waitpid reports for exit(11)
    assert os.WIFEXITED(status)
    assert supervisor.describe_status(status) == "exit status 11, memory"


def test_describe_status_signal():
    assert supervisor.describe_status(signal.SIGKILL) == "killed by SIGKILL"


def test_describe_status_unknown():
    assert "unknown" in supervisor.describe_status(None)


def test_group_timeout_is_longest_queue_timeout(tmp_path):
    ini = tmp_path / "curler.ini"
    ini.write_text("[curlerd]\njob-queue = fast,slow,own\ntimeout = 10\nworkers = 2\n"
                   "[queue:slow]\ntimeout = 90\n[queue:own]\nworkers = 1\ntimeout = 30\n")
    settings, _ = config.load(["-c", str(ini)], environ={})
    groups = {group.name: group for group in supervisor.make_groups(settings)}
    assert set(groups) == {"own", "fast,slow"}
    assert groups["fast,slow"].timeout == 90
    assert groups["fast,slow"].size == 2
    assert groups["own"].timeout == 30
    assert groups["own"].size == 1

