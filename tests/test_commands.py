"""curler submit (background and foreground) and curlerd --check-config, run as the installed commands."""

import json
import os
import subprocess

from conftest import CURLERD
from curler import gearman, testing

CURLER = os.path.join(os.path.dirname(CURLERD), "curler")
if not os.path.exists(CURLER):
    CURLER = "curler"


def run(*args, timeout=60):
    return subprocess.run(list(args), capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def write_config(tmp_path, text):
    path = tmp_path / "curler.ini"
    path.write_text(text)
    return str(path)


def test_submit_background_prints_handle(gearmand):
    result = run(CURLER, "submit", "--job-servers", gearmand.address, "generate_archive", "user_id=5")
    assert result.returncode == 0, result.stderr
    handle = result.stdout.decode().strip()
    assert handle.startswith("H:")
    assert gearman.server_status(gearman.parse_server(gearmand.address))["curl"][0] == 1


def test_submit_background_reaches_endpoint(curlerd, endpoint):
    daemon = curlerd(workers="1", post_format="json")
    result = run(CURLER, "submit", "-c", daemon.ini, "--data", '{"user_id": 5, "tags": ["a"]}',
                 "reports/monthly", "month=2024-05")
    assert result.returncode == 0, result.stderr
    request = endpoint.wait_for(1)[0]
    assert request.path == "/jobs/reports/monthly"
    assert json.loads(request.body) == {"user_id": 5, "tags": ["a"], "month": "2024-05"}
    assert request.headers["X-Curler-Job-Handle"] == result.stdout.decode().strip()


def test_submit_to_named_queue(gearmand):
    result = run(CURLER, "submit", "--job-servers", gearmand.address, "--queue", "mail", "send_welcome")
    assert result.returncode == 0, result.stderr
    status = gearman.server_status(gearman.parse_server(gearmand.address))
    assert status["mail"][0] == 1
    assert "curl" not in status


def test_submit_foreground_prints_response(curlerd, endpoint):
    endpoint.script("/jobs/generate_archive", testing.Reply(200, b"archive ready\n\xff"))
    daemon = curlerd(workers="1")
    result = run(CURLERD, "submit", "-c", daemon.ini, "--foreground", "--timeout", "30", "generate_archive")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"archive ready\n\xff"


def test_submit_foreground_failed_job_exits_1(curlerd, endpoint):
    endpoint.script("/jobs/missing", testing.Reply(404, b"no such method"))
    daemon = curlerd(workers="1")
    result = run(CURLER, "submit", "-c", daemon.ini, "--foreground", "--timeout", "30", "missing")
    assert result.returncode == 1
    assert b"job failed (fail)" in result.stderr


def test_submit_foreground_timeout_exits_1(gearmand):
    result = run(CURLER, "submit", "--job-servers", gearmand.address, "--foreground", "--timeout", "0.5",
                 "nobody_works_on_this")
    assert result.returncode == 1
    assert b"submitting to curl failed: " in result.stderr


def test_submit_without_job_server_exits_1():
    address = f"{testing.LOOPBACK}:{testing.free_port()}"
    result = run(CURLER, "submit", "--job-servers", address, "generate_archive")
    assert result.returncode == 1
    assert f"submitting to curl failed: no job server accepted the request ({address}".encode() in result.stderr


def test_submit_rejects_invalid_data(gearmand):
    for data, message in [("{not json", b"--data is not valid JSON"), ("[1, 2]", b"--data must be a JSON object")]:
        result = run(CURLER, "submit", "--job-servers", gearmand.address, "--data", data, "generate_archive")
        assert result.returncode == 2
        assert message in result.stderr


def test_submit_rejects_field_without_equals(gearmand):
    result = run(CURLER, "submit", "--job-servers", gearmand.address, "generate_archive", "user_id")
    assert result.returncode == 2
    assert b"expected key=value, got 'user_id'" in result.stderr


def test_curler_without_command_prints_usage():
    result = run(CURLER)
    assert result.returncode == 2
    assert b"usage: curler COMMAND" in result.stderr
    assert b"replay-dead-letters" in result.stderr


def test_curler_help_and_unknown_command():
    assert run(CURLER, "--help").returncode == 0
    result = run(CURLER, "bogus")
    assert result.returncode == 2
    assert b"unknown command 'bogus'" in result.stderr


def test_check_config_prints_effective_settings(tmp_path):
    secret = tmp_path / "signing.key"
    secret.write_text("do-not-print-this-key\n")
    secret.chmod(0o600)
    path = write_config(tmp_path, "[curlerd]\n"
                                  "job-queue = curl,mail\n"
                                  "workers = 3\n"
                                  f"signing-secret-file = {secret}\n"
                                  "\n[queue:mail]\n"
                                  "timeout = 5\n")
    result = run(CURLERD, "--check-config", "-c", path, "--max-attempts", "7")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert "workers = 3" in lines
    assert "max-attempts = 7" in lines
    assert "job-queue = curl,mail" in lines
    assert f"signing-secret-file = {secret}" in lines
    mail = [line for line in lines if line.startswith("[queue:mail]")]
    assert len(mail) == 1
    assert "timeout = 5.0" in mail[0]
    assert b"do-not-print-this-key" not in result.stdout


def test_check_config_lists_every_problem(tmp_path):
    path = write_config(tmp_path, "[curlerd]\nworkers = many\ntimeout = -1\ncurl-paths = ftp://example\n")
    result = run(CURLERD, "--check-config", "-c", path)
    assert result.returncode == 2
    errors = result.stderr.decode().splitlines()
    assert len(errors) == 3, errors
    assert any("invalid workers value 'many'" in line for line in errors)
    assert any("invalid timeout value '-1'" in line for line in errors)
    assert any("invalid curl-paths value 'ftp://example'" in line for line in errors)
    assert result.stdout == b""


def test_submit_rejects_unsafe_method(gearmand):
    result = run(CURLER, "submit", "--job-servers", gearmand.address, "../etc")
    assert result.returncode == 2
    assert b"invalid method '../etc'" in result.stderr


def test_submit_sends_unique_id(gearmand, curlerd, endpoint):
    curlerd()
    result = run(CURLER, "submit", "--job-servers", gearmand.address, "--unique", "order-9", "generate_archive")
    assert result.returncode == 0
    assert endpoint.wait_for(1)[0].headers["X-Curler-Job-Unique"] == "order-9"
