"""HTTP transport settings: TLS verification, CA bundle, proxies, the environment, URL credentials, drains."""

import base64
import json
import os
import subprocess

import pytest

from curler import gearman, testing
from curler.testing import Reply

from conftest import job_payload
from test_delivery import dead_letters

FAST_RETRIES = {"retry-min-backoff": "0.05", "retry-max-backoff": "0.2"}


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


@pytest.fixture
def https_endpoint(certificate):
    server = testing.Endpoint(tls=certificate).start()
    yield server
    server.stop()


def test_https_certificate_is_verified(curlerd, client, https_endpoint, gearmand):
    curlerd(curl_paths=https_endpoint.url + "/jobs", max_attempts="1")
    client.submit_background("curl", job_payload(user_id=5))
    letter = dead_letters(gearmand, 1)[0]
    assert "CERTIFICATE_VERIFY_FAILED" in letter["error"] or "certificate verify failed" in letter["error"]
    assert https_endpoint.requests == []


def test_ca_bundle_trusts_certificate(curlerd, client, https_endpoint, certificate):
    curlerd(curl_paths=https_endpoint.url + "/jobs", ca_bundle=certificate[0])
    status, result = client.submit_foreground("curl", job_payload(user_id=5), timeout=30)
    assert (status, result) == ("complete", b"ok")
    assert https_endpoint.requests[0].form == {"user_id": "5"}


def closed_base_url():
    return f"http://127.0.0.1:{testing.free_port()}/jobs"


def test_proxy_receives_requests(curlerd, client, endpoint):
    base = closed_base_url()
    curlerd(curl_paths=base, proxy=endpoint.url)
    client.submit_background("curl", job_payload(user_id=5))
    request = endpoint.wait_for(1)[0]
    assert request.path == base + "/generate_archive"
    assert request.body == b"user_id=5"


def proxy_environment(proxy_url):
    env = dict(os.environ)
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(name, None)
    env["HTTP_PROXY"] = env["http_proxy"] = proxy_url
    return env


def test_environment_proxy_ignored_by_default(curlerd, client, endpoint):
    proxy = testing.Endpoint().start()
    try:
        curlerd(env=proxy_environment(proxy.url))
        client.submit_background("curl", job_payload(user_id=5))
        assert endpoint.wait_for(1)[0].path == "/jobs/generate_archive"
        assert proxy.requests == []
    finally:
        proxy.stop()


def test_trust_env_uses_environment_proxy(curlerd, client, endpoint):
    proxy = testing.Endpoint().start()
    try:
        curlerd(env=proxy_environment(proxy.url), trust_env="true")
        client.submit_background("curl", job_payload(user_id=5))
        assert proxy.wait_for(1)[0].path == endpoint.url + "/jobs/generate_archive"
        assert endpoint.requests == []
    finally:
        proxy.stop()


def test_url_credentials_become_basic_auth_and_stay_secret(curlerd, client, endpoint, gearmand):
    base = endpoint.url.replace("http://", "http://jobs:hunter2@") + "/jobs"
    daemon = curlerd(curl_paths=base, verbose="true", **{"log-level": "info"})
    endpoint.script("/jobs/missing", Reply(404))
    client.submit_background("curl", job_payload("missing"))
    request = endpoint.wait_for(1)[0]
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"jobs:hunter2").decode()
    letter = dead_letters(gearmand, 1)[0]
    assert "hunter2" not in json.dumps(letter)
    assert letter["url"].startswith("http://jobs:[redacted]@127.0.0.1")
    daemon.wait_for_log(r"dead letter on curl.failed")
    assert "hunter2" not in daemon.log()


def test_drain_during_backoff_releases_job(curlerd, client, endpoint, gearmand):
    daemon = curlerd(workers="1", retry_min_backoff="60", retry_max_backoff="60")
    endpoint.script("/jobs/unavailable", Reply(503))
    handle, _ = client.submit_background("curl", job_payload("unavailable"))
    daemon.wait_for_log(r"retrying in 60.0 s")
    assert daemon.stop(timeout=30) == 0
    daemon.wait_for_log(rf"job {handle.decode()} unavailable: released to the job server \(drain during retry backoff\)")
    status = gearman.server_status(gearman.parse_server(gearmand.address))
    assert status["curl"][0] == 1
    assert "curl.failed" not in status or status["curl.failed"][0] == 0


def test_closed_keep_alive_connection_is_replaced(curlerd, client, endpoint):
    daemon = curlerd(workers="1")
    client.submit_background("curl", job_payload(user_id=1))
    endpoint.wait_for(1)
    daemon.wait_for_log(r"HTTP 200", count=1)
    port = endpoint.port
    endpoint.stop()
    restarted = testing.Endpoint(port=port).start()
    try:
        client.submit_background("curl", job_payload(user_id=2))
        request = restarted.wait_for(1)[0]
        assert request.form == {"user_id": "2"}
        assert request.headers["X-Curler-Attempt"] == "1"
    finally:
        restarted.stop()


def test_connection_close_reply_is_honoured(curlerd, client, endpoint):
    daemon = curlerd(workers="1")
    endpoint.script("/jobs/once", Reply(200, b"bye", headers={"Connection": "close"}))
    for number in range(3):
        client.submit_background("curl", job_payload("once", n=number))
    assert len(endpoint.wait_for(3)) == 3
    daemon.wait_for_log(r"(?m)once: HTTP 200 in \d+ ms$", count=3)
    assert "attempt 1 of" not in daemon.log()
