"""curlerd status: the supervisor, each child, the job server counts, and the LSB exit statuses."""

import json
import os
import subprocess

import pytest

from conftest import CURLERD, job_payload, wait_until
from curler import commands, testing


def run_status(*args):
    return subprocess.run([CURLERD, "status", *args], capture_output=True, text=True, timeout=60)


def status_json(daemon):
    result = run_status("-c", daemon.ini, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def status_until(daemon, condition, message):
    """Run status until ``condition(report)`` holds; return that report."""
    def check():
        report = status_json(daemon)
        return report if condition(report) else None
    return wait_until(check, message=message)


def test_status_shows_idle_children(curlerd):
    daemon = curlerd(workers="2")
    report = status_until(daemon, lambda r: r["queues"]["curl"]["workers"] == 2,
                          "both children registered with gearmand")
    assert report["pid"] == daemon.pid
    assert report["pidfile"] == daemon.pidfile
    assert report["rss"] > 0
    assert report["uptime"] >= 0
    assert sorted(child["pid"] for child in report["children"]) == daemon.child_pids()
    for child in report["children"]:
        assert child["state"] == "idle"
        assert child["job_handle"] is None
        assert child["jobs_done"] == 0
        assert child["rss"] > 0
        assert child["uptime"] >= 0
    queue = report["queues"]["curl"]
    assert (queue["queued"], queue["running"], queue["workers"]) == (0, 0, 2)
    assert queue["dead_letter_queue"] == "curl.failed"
    assert queue["errors"] == []


def test_status_shows_job_in_hand(curlerd, client, endpoint):
    endpoint.script("/jobs/slow_report", testing.Reply(hang=True))
    daemon = curlerd(workers="1")
    handle, _ = client.submit_background("curl", job_payload("slow_report"))
    client.submit_background("curl", job_payload("slow_report"))
    client.submit_background("curl.failed", b"an old dead letter")
    endpoint.wait_for(1)

    report = status_until(daemon, lambda r: r["children"][0]["job_handle"], "the child to publish its job")
    child = report["children"][0]
    assert child["state"] == "busy"
    assert child["job_handle"] == handle.decode()
    assert child["method"] == "slow_report"
    assert child["queue"] == "curl"
    assert child["busy_seconds"] >= 0
    queue = report["queues"]["curl"]
    assert (queue["queued"], queue["running"], queue["workers"]) == (2, 1, 1)
    assert queue["dead_letters"] == 1

    text = run_status("-c", daemon.ini)
    assert text.returncode == 0
    assert f"curlerd {daemon.pid} (pidfile {daemon.pidfile})" in text.stdout
    assert f"{handle.decode()} slow_report on curl for " in text.stdout
    assert "queue curl: 2 queued, 1 running, 1 workers; 1 dead letters on curl.failed" in text.stdout


def test_status_counts_jobs_done(curlerd, client, endpoint):
    daemon = curlerd(workers="1")
    client.submit_background("curl", job_payload("fine"))
    client.submit_background("curl", job_payload("fine"))
    endpoint.wait_for(2)
    report = status_until(daemon, lambda r: r["children"][0]["jobs_done"] == 2, "two jobs done in the status")
    assert report["children"][0]["state"] == "idle"


def test_status_reports_unreachable_job_server(curlerd, gearmand):
    daemon = curlerd(workers="1")
    gearmand.stop()
    result = run_status("-c", daemon.ini)
    assert result.returncode == 0
    assert f"(no answer from {gearmand.address}: " in result.stdout


def test_status_after_stop_exits_3(curlerd):
    daemon = curlerd(workers="1")
    assert daemon.stop() == 0
    result = run_status("-c", daemon.ini)
    assert result.returncode == 3
    assert "curlerd is not running" in result.stdout


def test_status_without_pidfile_exits_3(tmp_path):
    result = run_status("--pidfile", str(tmp_path / "missing.pid"))
    assert result.returncode == 3
    assert f"no pid in {tmp_path / 'missing.pid'}" in result.stdout


def test_status_stale_pidfile_exits_1(tmp_path):
    path = tmp_path / "curlerd.pid"
    other = subprocess.Popen(["sleep", "60"])
    try:
        path.write_text(f"{other.pid}\n")
        result = run_status("--pidfile", str(path))
    finally:
        other.kill()
        other.wait()
    assert result.returncode == 1
    assert f"its pidfile {path} is left (pid {other.pid})" in result.stdout


def test_status_unreadable_pidfile_exits_4(tmp_path):
    result = run_status("--pidfile", str(tmp_path))
    assert result.returncode == 4
    assert f"cannot read pidfile {tmp_path}" in result.stderr


def test_status_invalid_config_exits_2(tmp_path):
    path = tmp_path / "curler.ini"
    path.write_text("[curlerd]\nworkers = many\n")
    result = run_status("-c", str(path))
    assert result.returncode == 2
    assert "invalid workers value 'many'" in result.stderr


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (59.9, "59s"), (60, "1m00s"), (3599, "59m59s"), (3600, "1h00m"),
    (86399, "23h59m"), (86400, "1d00h"), (-1, "0s"),
])
def test_format_duration(seconds, text):
    assert commands.format_duration(seconds) == text


def test_default_pidfile_is_the_packaged_one():
    with open(os.path.join(os.path.dirname(__file__), "..", "packaging", "systemd", "curlerd.service")) as unit:
        assert f"--pidfile {commands.DEFAULT_PIDFILE}" in unit.read()
