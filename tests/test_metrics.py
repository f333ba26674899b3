"""The Prometheus endpoint: counters from live and exited children, restarts and reloads, and the pure helpers."""

import signal
import socket
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from curler import child as child_module
from curler import metrics, scoreboard, testing
from conftest import CURLERD, job_payload, wait_until


def scrape(port):
    with urllib.request.urlopen(f"http://{testing.LOOPBACK}:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape_until(port, condition, message):
    """Scrape until ``condition(samples)`` holds; return those samples."""
    def check():
        samples = scrape(port)
        return samples if condition(samples) else None
    return wait_until(check, message=message)


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def jobs(samples, queue, outcome):
    return value(samples, "curler_jobs_total", queue=queue, outcome=outcome)


@pytest.fixture
def metrics_port():
    return testing.free_port()


def test_metrics_count_jobs_by_outcome(curlerd, client, endpoint, metrics_port):
    endpoint.script("/jobs/broken", testing.Reply(500, b"down"))
    endpoint.script("/jobs/missing", testing.Reply(404, b"no such method"))
    daemon = curlerd(workers="2", metrics_port=str(metrics_port), max_attempts="2",
                     retry_min_backoff="0.01", retry_max_backoff="0.02")

    client.submit_background("curl", job_payload("fine"))
    client.submit_background("curl", job_payload("fine"))
    client.submit_background("curl", job_payload("broken"))
    client.submit_background("curl", job_payload("missing"))
    daemon.wait_for_log(r"job \S+ (fine: HTTP 200|broken: failed|missing: failed)", count=4)

    samples = scrape_until(metrics_port, lambda s: jobs(s, "curl", "dead_lettered") == 2,
                           "two dead-lettered jobs in the metrics")
    assert jobs(samples, "curl", "success") == 2
    assert jobs(samples, "curl", "failed") == 0
    assert jobs(samples, "curl", "released") == 0
    assert value(samples, "curler_jobs_retried_total", queue="curl") == 1
    # Two successes, two attempts of the 500 job, one of the 404 job.
    assert value(samples, "curler_http_attempts_total") == 5
    assert value(samples, "curler_http_responses_total", status_class="2xx") == 2
    assert value(samples, "curler_http_responses_total", status_class="4xx") == 1
    assert value(samples, "curler_http_responses_total", status_class="5xx") == 2
    assert value(samples, "curler_http_request_errors_total") == 0
    assert value(samples, "curler_job_duration_seconds_count") == 4
    assert value(samples, "curler_job_duration_seconds_bucket", le="+Inf") == 4
    assert value(samples, "curler_job_duration_seconds_sum") > 0
    assert value(samples, "curler_children", state="idle") + value(samples, "curler_children", state="busy") == 2
    assert value(samples, "curler_child_restarts_total", reason="crash") == 0
    assert value(samples, "curler_reloads_total", result="success") == 0


def test_metrics_keep_counts_of_exited_children(curlerd, client, endpoint, metrics_port):
    daemon = curlerd(workers="1", metrics_port=str(metrics_port), max_jobs_per_child="1")
    first_child = daemon.child_pids()[0]

    client.submit_background("curl", job_payload("fine"))
    endpoint.wait_for(1)
    wait_until(lambda: set(daemon.child_pids()) - {first_child}, message="the recycled child to be replaced")

    samples = scrape_until(metrics_port, lambda s: value(s, "curler_child_restarts_total", reason="max_jobs"),
                           "a max_jobs restart in the metrics")
    assert value(samples, "curler_child_restarts_total", reason="max_jobs") == 1
    assert jobs(samples, "curl", "success") == 1
    assert value(samples, "curler_http_attempts_total") == 1


def test_metrics_count_crash_and_reload(curlerd, metrics_port):
    daemon = curlerd(workers="1", metrics_port=str(metrics_port))
    victim = daemon.child_pids()[0]

    testing.kill_tree(victim)
    samples = scrape_until(metrics_port, lambda s: value(s, "curler_child_restarts_total", reason="crash"),
                           "a crash in the metrics")
    assert value(samples, "curler_child_restarts_total", reason="crash") == 1
    assert value(samples, "curler_child_restarts_total", reason="hang") == 0
    wait_until(lambda: set(daemon.child_pids()) - {victim}, message="a new child")
    daemon.wait_for_children(1)

    daemon.signal(signal.SIGHUP)
    samples = scrape_until(metrics_port, lambda s: value(s, "curler_reloads_total", result="success"),
                           "a reload in the metrics")
    assert value(samples, "curler_reloads_total", result="success") == 1
    # A drain after a reload is asked for, so it is no restart.
    daemon.wait_for_log(r"exited \(exit status 0, drained; expected\)")
    samples = scrape(metrics_port)
    assert value(samples, "curler_child_restarts_total", reason="crash") == 1


def test_metrics_socket_closed_in_children(curlerd, metrics_port):
    daemon = curlerd(workers="2", metrics_port=str(metrics_port))
    for child in daemon.children():
        ports = [c.laddr.port for c in child.net_connections(kind="tcp") if c.laddr]
        assert metrics_port not in ports, f"child {child.pid} holds the metrics socket"
    assert scrape(metrics_port)


def test_metrics_endpoint_stops_with_curlerd(curlerd, metrics_port):
    daemon = curlerd(workers="1", metrics_port=str(metrics_port))
    assert scrape(metrics_port)
    assert daemon.stop() == 0
    with pytest.raises(OSError):
        scrape(metrics_port)


def test_metrics_port_in_use_stops_start(tmp_path, gearmand):
    with socket.socket() as taken:
        taken.bind((testing.LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([CURLERD, "--job-servers", gearmand.address, "--workers", "1",
                                 "--metrics-port", str(port), "--pidfile", str(tmp_path / "curlerd.pid")],
                                capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert f"cannot listen on {testing.LOOPBACK}:{port} for metrics" in result.stderr
    assert not (tmp_path / "curlerd.pid").exists()


@pytest.mark.parametrize("code, expected, kill_reason, reason", [
    (None, False, None, "crash"),
    (1, False, None, "crash"),
    (child_module.EXIT_SETUP_FAILED, False, None, "setup_failed"),
    (None, False, "hang", "hang"),
    (child_module.EXIT_MAX_JOBS, True, None, "max_jobs"),
    (child_module.EXIT_MAX_MEMORY, True, None, "memory"),
    (child_module.EXIT_DRAINED, True, None, None),
    (None, True, "drain timeout", None),
])
def test_restart_reason_from_exit(code, expected, kill_reason, reason):
    assert metrics.restart_reason(code, expected, kill_reason) == reason


def counters_with(**values):
    counters = [0] * scoreboard.COUNTER_COUNT
    for name, value in values.items():
        counters[getattr(scoreboard, name)] = value
    return counters


def test_tally_maps_queue_index_to_name():
    counters = counters_with(ATTEMPTS=3, DURATION_COUNT=2)
    second_queue = scoreboard.QUEUE_OUTCOMES + len(scoreboard.OUTCOMES)
    counters[second_queue + scoreboard.SUCCESS] = 2
    counters[second_queue + scoreboard.RETRIED] = 1
    tally = metrics.Tally()
    tally.add(("first", "second"), counters)
    tally.add(("second",), counters_with(ATTEMPTS=1))
    assert tally.jobs[("second", "success")] == 2
    assert tally.jobs[("first", "success")] == 0
    assert tally.retried["second"] == 1
    assert tally.attempts == 4


def test_latest_never_goes_down():
    assert metrics.latest(None, [1, 2]) == (1, 2)
    assert metrics.latest((3, 1), [2, 2]) == (3, 2)
