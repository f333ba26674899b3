"""Jobs delivered end to end: gearmand, curlerd as a process tree, and a recording HTTP endpoint."""

import hashlib
import hmac
import json
import subprocess
import time

import psutil
import pytest

from curler import gearman, testing
from curler.testing import Reply

from conftest import CURLERD, job_payload, wait_until

FAST_RETRIES = {"retry-min-backoff": "0.05", "retry-max-backoff": "0.2"}


def drain_queue(gearmand, queue, expected, timeout=20.0):
    """Take ``expected`` jobs from ``queue`` and return their workloads."""
    worker = gearman.Worker([gearman.parse_server(gearmand.address)], [queue], "test-reader")
    workloads = []
    deadline = time.monotonic() + timeout
    try:
        while len(workloads) < expected and time.monotonic() < deadline:
            job = worker.grab_job(0.5)
            if job is not None:
                workloads.append(job.workload)
                worker.complete(job)
    finally:
        worker.close()
    assert len(workloads) == expected, f"{len(workloads)} of {expected} jobs on {queue}"
    return workloads


def dead_letters(gearmand, expected, queue="curl.failed"):
    return [json.loads(w) for w in drain_queue(gearmand, queue, expected)]


def test_example_job_arrives_as_form_post(curlerd, client, endpoint):
    daemon = curlerd()
    handle, _ = client.submit_background("curl", job_payload(user_id=5), unique=b"order-17")
    request = endpoint.wait_for(1)[0]
    assert request.method == "POST"
    assert request.path == "/jobs/generate_archive"
    assert request.body == b"user_id=5"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["User-Agent"].startswith("curler/")
    assert request.headers["X-Curler-Job-Handle"] == handle.decode()
    assert request.headers["X-Curler-Job-Unique"] == "order-17"
    assert request.headers["X-Curler-Queue"] == "curl"
    assert request.headers["X-Curler-Attempt"] == "1"
    daemon.wait_for_log(rf"job {handle.decode()} generate_archive: HTTP 200 in \d+ ms")


def test_twenty_jobs_on_four_children_arrive_once(curlerd, client, endpoint):
    daemon = curlerd(workers="4")
    for number in range(20):
        client.submit_background("curl", job_payload(user_id=number))
    requests = endpoint.wait_for(20)
    daemon.wait_for_log(r"HTTP 200", count=20)
    user_ids = sorted(int(r.form["user_id"]) for r in requests)
    assert user_ids == list(range(20))
    assert len(endpoint.requests) == 20


def test_foreground_job_returns_response_body(curlerd, client, endpoint):
    curlerd()
    endpoint.script("/jobs/report", Reply(200, b'{"archive": "ready"}'))
    status, result = client.submit_foreground("curl", job_payload("report", user_id=5), timeout=20)
    assert status == "complete"
    assert result == b'{"archive": "ready"}'


def test_server_error_fails_job(curlerd, client, endpoint):
    daemon = curlerd(max_attempts="1", dead_letter_queue="")
    endpoint.script("/jobs/broken", Reply(500, b"oops"))
    status, _ = client.submit_foreground("curl", job_payload("broken"), timeout=20)
    assert status == "fail"
    daemon.wait_for_log(r"job H:\S+ broken: failed in \d+ ms: HTTP 500")


INVALID_PAYLOADS = [
    (b"not json", "not valid JSON"),
    (b'{"data":{}}', "no \"method\""),
    (b'{"method":"x","data":[1,2]}', "not a JSON object"),
    (b"\xff\xfe", "not UTF-8"),
    (b'{"method":"../admin"}', "invalid method"),
    (b'{"method":"http://127.0.0.1:1/x"}', "invalid method"),
]


def test_invalid_payloads_fail_without_request(curlerd, client, endpoint, gearmand):
    daemon = curlerd()
    children = daemon.child_pids()
    for workload, _ in INVALID_PAYLOADS:
        assert client.submit_foreground("curl", workload, timeout=20) == ("fail", b"")
    letters = dead_letters(gearmand, len(INVALID_PAYLOADS))
    assert endpoint.requests == []
    assert daemon.child_pids() == children
    by_payload = {}
    for letter in letters:
        key = letter["payload"].encode() if not letter["payload_base64"] else letter["payload"]
        by_payload[key] = letter
    for workload, reason in INVALID_PAYLOADS:
        if workload == b"\xff\xfe":
            letter = by_payload["//4="]
            assert letter["payload_base64"] is True
        else:
            letter = by_payload[workload]
        assert reason in letter["error"]
        assert letter["queue"] == "curl"
        assert letter["attempts"] == 0


def test_non_ascii_and_nested_data(curlerd, client, endpoint):
    curlerd()
    data = {"name": "Zoë", "city": "東京", "user": {"id": 5, "admin": False}, "ids": [1, 2], "note": None}
    client.submit_background("curl", json.dumps({"method": "café", "data": data}).encode())
    request = endpoint.wait_for(1)[0]
    assert request.path == "/jobs/caf%C3%A9"
    assert request.fields == [("name", "Zoë"), ("city", "東京"), ("user[id]", "5"), ("user[admin]", "0"),
                              ("ids[0]", "1"), ("ids[1]", "2"), ("note", "")]


def test_method_stays_under_base_url(curlerd, client, endpoint):
    curlerd(curl_paths=endpoint.url + "/app/jobs/")
    client.submit_background("curl", job_payload("reports/monthly"))
    assert endpoint.wait_for(1)[0].path == "/app/jobs/reports/monthly"


def test_transient_errors_retry_until_success(curlerd, client, endpoint):
    daemon = curlerd(**FAST_RETRIES)
    endpoint.script("/jobs/flaky", Reply(503), Reply(503), Reply(200, b"finally"))
    status, result = client.submit_foreground("curl", job_payload("flaky"), timeout=20)
    assert (status, result) == ("complete", b"finally")
    attempts = [r.headers["X-Curler-Attempt"] for r in endpoint.requests]
    assert attempts == ["1", "2", "3"]
    daemon.wait_for_log(r"flaky: HTTP 200 in \d+ ms after 3 attempts")


def test_attempts_used_up_are_dead_lettered(curlerd, client, endpoint, gearmand):
    curlerd(max_attempts="3", **FAST_RETRIES)
    endpoint.script("/jobs/down", Reply(502))
    assert client.submit_foreground("curl", job_payload("down"), timeout=20)[0] == "fail"
    assert len(endpoint.requests) == 3
    letter = dead_letters(gearmand, 1)[0]
    assert letter["status"] == 502
    assert letter["attempts"] == 3
    assert letter["url"] == endpoint.url + "/jobs/down"
    assert "after 3 attempts" in letter["error"]


def test_not_found_is_tried_once_and_dead_lettered(curlerd, client, endpoint, gearmand):
    curlerd(**FAST_RETRIES)
    endpoint.script("/jobs/missing", Reply(404, b"no such job"))
    handle, _ = client.submit_background("curl", job_payload("missing", user_id=5), unique=b"u-404")
    letter = dead_letters(gearmand, 1)[0]
    assert len(endpoint.requests) == 1
    assert json.loads(letter["payload"]) == {"method": "missing", "data": {"user_id": 5}}
    assert letter["payload_base64"] is False
    assert letter["queue"] == "curl"
    assert letter["job_handle"] == handle.decode()
    assert letter["unique"] == "u-404"
    assert letter["status"] == 404
    assert letter["error"] == "HTTP 404"
    assert letter["attempts"] == 1
    assert letter["failed_at"].endswith("Z")


def test_retry_after_is_honoured(curlerd, client, endpoint):
    daemon = curlerd()
    endpoint.script("/jobs/busy", Reply(429, headers={"Retry-After": "2"}), Reply(200))
    client.submit_background("curl", job_payload("busy"))
    first, second = endpoint.wait_for(2)
    assert second.received - first.received >= 1.9
    daemon.wait_for_log(r"attempt 1 of 5 failed \(HTTP 429\); retrying in 2.0 s")


def test_redirect_fails_naming_location(curlerd, client, endpoint, gearmand):
    daemon = curlerd()
    endpoint.script("/jobs/moved", Reply(301, headers={"Location": "https://example.invalid/new"}))
    assert client.submit_foreground("curl", job_payload("moved"), timeout=20)[0] == "fail"
    letter = dead_letters(gearmand, 1)[0]
    assert "https://example.invalid/new" in letter["error"]
    assert [r.method for r in endpoint.requests] == ["POST"]
    daemon.wait_for_log(r"HTTP 301 redirect to https://example.invalid/new")


@pytest.mark.parametrize("reply", [Reply(hang=True), Reply(200, b"x" * 100, trickle=0.2)], ids=["hang", "trickle"])
def test_slow_endpoint_times_out(curlerd, client, endpoint, reply):
    daemon = curlerd(timeout="1", max_attempts="1", dead_letter_queue="")
    endpoint.script("/jobs/slow", reply)
    started = time.monotonic()
    assert client.submit_foreground("curl", job_payload("slow"), timeout=30)[0] == "fail"
    assert time.monotonic() - started < 20
    daemon.wait_for_log(r"slow: failed in \d+ ms: timed out after 1 s")


def test_large_response_is_cut_off(curlerd, client, endpoint):
    daemon = curlerd(workers="1", max_response_bytes="1000")
    endpoint.script("/jobs/small", Reply(200, b"ok"))
    client.submit_foreground("curl", job_payload("small"), timeout=20)
    child = psutil.Process(daemon.child_pids()[0])
    rss_before = child.memory_info().rss
    endpoint.script("/jobs/huge", Reply(200, b"z" * (50 * 1024 * 1024)))
    status, result = client.submit_foreground("curl", job_payload("huge"), timeout=60)
    assert status == "complete"
    assert result == b"z" * 1000
    assert child.memory_info().rss - rss_before < 20 * 1024 * 1024
    daemon.wait_for_log(r"response body cut off at 1000 bytes")


@pytest.mark.parametrize("post_format", ["form", "json", "legacy"])
def test_post_formats(curlerd, client, endpoint, post_format):
    curlerd(post_format=post_format)
    handle, _ = client.submit_background("curl", job_payload(user_id=5, tags=["a"]))
    request = endpoint.wait_for(1)[0]
    if post_format == "form":
        assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
        assert request.fields == [("user_id", "5"), ("tags[0]", "a")]
    elif post_format == "json":
        assert request.headers["Content-Type"] == "application/json"
        assert json.loads(request.body) == {"user_id": 5, "tags": ["a"]}
    else:
        form = request.form
        assert json.loads(form["data"]) == {"user_id": 5, "tags": ["a"]}
        assert form["job_handle"] == handle.decode()


def verify_signature(secret, headers, body, now, window=300):
    """The README's Python recipe for checking X-Curler-Signature."""
    timestamp = headers.get("X-Curler-Timestamp", "")
    signature = headers.get("X-Curler-Signature", "")
    if not timestamp.isdigit() or abs(now - int(timestamp)) > window:
        return False
    expected = "v1=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


def test_signature_verifies_and_secret_unlogged(curlerd, client, endpoint, tmp_path):
    secret_file = tmp_path / "signing.key"
    secret_file.write_text("correct horse battery staple\n")
    secret_file.chmod(0o600)
    daemon = curlerd(signing_secret_file=str(secret_file), verbose="true",
                     **{"log-level": "info"})
    endpoint.script("/jobs/generate_archive", Reply(200, b"done", headers={"Set-Cookie": "session=c00kie"}))
    client.submit_background("curl", job_payload(user_id=5))
    request = endpoint.wait_for(1)[0]
    secret = b"correct horse battery staple"
    assert verify_signature(secret, request.headers, request.body, time.time())
    assert not verify_signature(b"wrong", request.headers, request.body, time.time())
    assert not verify_signature(secret, request.headers, request.body + b"x", time.time())
    assert not verify_signature(secret, request.headers, request.body, time.time() + 3600)
    daemon.wait_for_log(r"response: .*status=200")
    log = daemon.log()
    assert "correct horse" not in log
    assert request.headers["X-Curler-Signature"] not in log
    assert "c00kie" not in log
    assert "[redacted]" in log
    assert "user_id=5" in log


def test_readable_secret_file_stops_start(tmp_path):
    secret_file = tmp_path / "signing.key"
    secret_file.write_text("s")
    secret_file.chmod(0o644)
    result = subprocess.run([CURLERD, "--signing-secret-file", str(secret_file)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    assert "readable or writable by other users" in result.stderr


def test_connection_error_moves_to_other_base_url(curlerd, client, endpoint):
    dead = f"http://127.0.0.1:{testing.free_port()}/jobs"
    daemon = curlerd(curl_paths=f"{dead},{endpoint.url}/jobs", **FAST_RETRIES)
    for number in range(6):
        client.submit_background("curl", job_payload(user_id=number))
    requests = endpoint.wait_for(6)
    assert sorted(int(r.form["user_id"]) for r in requests) == list(range(6))
    daemon.wait_for_log(r"HTTP 200", count=6)


def test_dead_letter_not_stored_leaves_job_queued(curlerd, client, endpoint, gearmand):
    address = gearman.parse_server(gearmand.address)
    client.submit_background("curl.failed", b"filler")
    # gearmand applies maxqueue only to a function that already exists.
    gearman.admin_command(address, "maxqueue curl.failed 1")
    daemon = curlerd(workers="1", **FAST_RETRIES)
    endpoint.script("/jobs/gone", Reply(410))
    client.submit_background("curl", job_payload("gone"))
    daemon.wait_for_log(r"no job server accepted the dead letter")
    daemon.wait_for_log(r"released to the job server \(dead letter not stored\)")
    status = gearman.server_status(address)
    assert status["curl"][0] == 1
    gearman.admin_command(address, "maxqueue curl.failed 0")
    workloads = drain_queue(gearmand, "curl.failed", 2)
    assert b"filler" in workloads
    letter = json.loads(next(w for w in workloads if w != b"filler"))
    assert letter["error"] == "HTTP 410"


def test_replay_moves_dead_letters_back(curlerd, client, endpoint, gearmand, tmp_path):
    daemon = curlerd(workers="1")
    endpoint.script("/jobs/later", Reply(404))
    endpoint.script("/jobs/other", Reply(404))
    for number in range(3):
        client.submit_background("curl", job_payload("later", n=number))
    client.submit_background("curl", job_payload("other"))
    daemon.wait_for_log(r"dead letter on curl.failed", count=4)
    endpoint.replace_script("/jobs/later", Reply(200))
    result = subprocess.run([CURLERD, "replay-dead-letters", "-c", daemon.ini, "--method", "later"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "moved 3 dead letters" in result.stdout
    wait_until(lambda: len([r for r in endpoint.requests if r.path == "/jobs/later"]) == 6,
               message="replayed jobs delivered")
    status = gearman.server_status(gearman.parse_server(gearmand.address))
    assert status["curl.failed"][0] == 1


def test_unique_id_cannot_inject_headers(curlerd, client, endpoint):
    curlerd()
    client.submit_background("curl", job_payload(user_id=5), unique="a\r\nX-Evil: 1 é".encode())
    request = endpoint.wait_for(1)[0]
    assert request.headers["X-Curler-Job-Unique"] == "a%0D%0AX-Evil: 1 %C3%A9"
    assert "X-Evil" not in request.headers


def test_replay_of_still_failing_jobs_ends(curlerd, client, endpoint, gearmand):
    daemon = curlerd(workers="1")
    endpoint.script("/jobs/broken", Reply(404))
    client.submit_background("curl", job_payload("broken"))
    daemon.wait_for_log(r"dead letter on curl.failed")
    result = subprocess.run([CURLERD, "replay-dead-letters", "-c", daemon.ini], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "moved 1 dead letters" in result.stdout
    daemon.wait_for_log(r"dead letter on curl.failed", count=2)


def test_replay_without_job_server_fails(tmp_path):
    result = subprocess.run([CURLERD, "replay-dead-letters", "--job-servers", f"127.0.0.1:{testing.free_port()}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "no job server replied" in result.stderr


def test_refused_connection_is_not_called_timeout(curlerd, client, gearmand):
    daemon = curlerd(curl_paths=f"http://127.0.0.1:{testing.free_port()}/jobs", max_attempts="1")
    client.submit_background("curl", job_payload(user_id=5))
    letter = dead_letters(gearmand, 1)[0]
    assert letter["error"].startswith("connection failed:")
    assert "timed out" not in daemon.log()
