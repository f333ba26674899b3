"""Configuration: INI file, environment and command line in one parser, with clear errors."""

import os
import subprocess

import pytest

from curler import config

from conftest import CURLERD


def write(tmp_path, text, name="curler.ini"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def load(argv, environ=None):
    settings, _ = config.load(argv, environ or {})
    return settings


def test_defaults():
    settings = load([])
    assert settings.curl_paths == ("http://localhost",)
    assert settings.job_queue == ("curl",)
    assert settings.job_servers == (("localhost", 4730),)
    assert settings.workers == (os.cpu_count() or 1)
    assert settings.timeout == 60.0
    assert settings.log_level == "info"
    assert settings.verbose is False
    assert settings.pidfile is None
    assert settings.log_file is None
    assert settings.queues["curl"].dead_letter_queue == "curl.failed"


def test_ini_keys_with_dashes_or_underscores(tmp_path):
    path = write(tmp_path, "[curlerd]\ncurl-paths = http://a/jobs, https://b/jobs/\njob_queue = one,two\n"
                           "job-servers = 127.0.0.1:4731,[::1]:4732\nworkers = 3\nverbose = yes\n")
    settings = load(["-c", path])
    assert settings.curl_paths == ("http://a/jobs", "https://b/jobs")
    assert settings.job_queue == ("one", "two")
    assert settings.job_servers == (("127.0.0.1", 4731), ("::1", 4732))
    assert settings.workers == 3
    assert settings.verbose is True


def test_cli_overrides_environment_overrides_file(tmp_path):
    path = write(tmp_path, "[curlerd]\nworkers = 3\njob-queue = fromfile\ntimeout = 7\n")
    environ = {"CURLER_WORKERS": "4", "CURLER_JOB_QUEUE": "fromenv"}
    settings = load(["-c", path, "--workers", "5"], environ)
    assert settings.workers == 5
    assert settings.job_queue == ("fromenv",)
    assert settings.timeout == 7.0


def test_config_file_from_environment(tmp_path):
    path = write(tmp_path, "[curlerd]\nworkers = 6\n")
    assert load([], {"CURLER_CONFIG": path}).workers == 6


def test_legacy_flags_keep_working():
    settings = load(["--curl-paths", "http://a,http://b", "--job-queue", "jobs", "--job-servers",
                     "gm1:4730,gm2", "--verbose"])
    assert settings.curl_paths == ("http://a", "http://b")
    assert settings.job_queue == ("jobs",)
    assert settings.job_servers == (("gm1", 4730), ("gm2", 4730))
    assert settings.verbose is True


@pytest.mark.parametrize("argv, message", [
    (["--workers", "0"], "invalid workers value '0': expected a whole number from 1"),
    (["--workers", "many"], "invalid workers value 'many'"),
    (["--job-servers", "localhost:abc"], "port 'abc' is not a number"),
    (["--curl-paths", "ftp://example.invalid/x"], "is not an http:// or https:// URL"),
    (["--curl-paths", "localhost/jobs"], "is not an http:// or https:// URL"),
    (["--curl-paths", "http://a/jobs?x=1"], "has a query or fragment"),
    (["--timeout", "-1"], "invalid timeout value '-1'"),
    (["--log-level", "loud"], "expected one of debug, info"),
    (["--post-format", "xml"], "expected one of form, json, legacy"),
    (["--retry-min-backoff", "10", "--retry-max-backoff", "5"], "greater than retry-max-backoff"),
    (["--no-such-option"], "unrecognized arguments"),
])
def test_invalid_values_name_option_and_value(argv, message):
    with pytest.raises(config.ConfigError, match=message.replace("?", r"\?")):
        load(argv)


def test_unknown_ini_key_is_rejected(tmp_path):
    path = write(tmp_path, "[curlerd]\nworkerz = 2\n")
    with pytest.raises(config.ConfigError, match="unknown key 'workerz' in \\[curlerd\\]"):
        load(["-c", path])


def test_unknown_section_is_rejected(tmp_path):
    path = write(tmp_path, "[curler]\nworkers = 2\n")
    with pytest.raises(config.ConfigError, match="unknown section \\[curler\\]"):
        load(["-c", path])


def test_missing_config_file_is_reported(tmp_path):
    with pytest.raises(config.ConfigError):
        load(["-c", str(tmp_path / "missing.ini")])


def test_queue_sections_override_globals(tmp_path):
    path = write(tmp_path, "[curlerd]\njob-queue = mail,reports\ncurl-paths = http://app/jobs\ntimeout = 60\n"
                           "[queue:reports]\ncurl-paths = http://reports/jobs\ntimeout = 300\nworkers = 2\n"
                           "max-attempts = 1\npost-format = json\ndead-letter-queue = reports.dead\n")
    settings = load(["-c", path])
    mail, reports = settings.queues["mail"], settings.queues["reports"]
    assert mail.curl_paths == ("http://app/jobs",)
    assert mail.timeout == 60.0
    assert mail.workers == 0
    assert reports.curl_paths == ("http://reports/jobs",)
    assert reports.timeout == 300.0
    assert reports.workers == 2
    assert reports.max_attempts == 1
    assert reports.post_format == "json"
    assert reports.dead_letter_queue == "reports.dead"
    assert settings.worker_groups() == [(("reports",), 2), (("mail",), settings.workers)]


def test_queue_section_for_unknown_queue_is_rejected(tmp_path):
    path = write(tmp_path, "[curlerd]\njob-queue = mail\n[queue:other]\ntimeout = 5\n")
    with pytest.raises(config.ConfigError, match="not in job-queue"):
        load(["-c", path])


def test_queue_section_rejects_global_only_key(tmp_path):
    path = write(tmp_path, "[curlerd]\njob-queue = mail\n[queue:mail]\njob-servers = x:1\n")
    with pytest.raises(config.ConfigError, match="unknown key 'job-servers' in \\[queue:mail\\]"):
        load(["-c", path])


def test_empty_dead_letter_queue_turns_it_off():
    assert load(["--dead-letter-queue", ""]).queues["curl"].dead_letter_queue == ""


def test_signing_secret_readable_by_others_is_rejected(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    with pytest.raises(config.ConfigError, match="readable or writable by other users"):
        load(["--signing-secret-file", str(secret)])
    secret.chmod(0o640)
    assert load(["--signing-secret-file", str(secret)]).queues["curl"].signing_secret == b"s3cret"


def test_redacted_settings_hide_secret(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("top-secret-value")
    secret.chmod(0o600)
    lines = "\n".join(load(["--signing-secret-file", str(secret)]).redacted())
    assert "top-secret-value" not in lines
    assert str(secret) in lines


def run_curlerd(*args):
    return subprocess.run([CURLERD, *args], capture_output=True, text=True, timeout=30)


def test_invalid_config_exits_2_with_one_line(tmp_path):
    path = write(tmp_path, "[curlerd]\nworkers = 0\n")
    result = run_curlerd("-c", path)
    assert result.returncode == 2
    assert result.stderr.strip() == "curlerd: invalid workers value '0': expected a whole number from 1 to 1024"


def test_invalid_port_exits_2(tmp_path):
    result = run_curlerd("--job-servers", "localhost:http")
    assert result.returncode == 2
    assert "job-servers" in result.stderr
    assert "'http'" in result.stderr


def test_check_config_prints_settings(tmp_path):
    path = write(tmp_path, "[curlerd]\nworkers = 3\n")
    result = run_curlerd("--check-config", "-c", path)
    assert result.returncode == 0
    assert "workers = 3" in result.stdout


EXAMPLE = os.path.join(os.path.dirname(__file__), os.pardir, "etc", "curler.ini")


def test_example_config_loads():
    settings = load(["-c", EXAMPLE])
    assert settings.curl_paths == ("http://localhost/jobs",)
    assert settings.job_queue == ("curl",)


def test_example_config_documents_every_option():
    with open(EXAMPLE) as example:
        text = example.read()
    for option in config.OPTIONS:
        assert f"# {option.name} = " in text or f"\n{option.name} = " in text, option.name
    assert "[queue:" in text


def test_daemon_needs_log_file():
    with pytest.raises(config.ConfigError, match="daemon = true needs log-file"):
        load(["--daemon"])
    assert load(["--daemon", "--log-file", "syslog"]).daemon is True


def test_dead_letter_queue_cannot_be_a_job_queue():
    with pytest.raises(config.ConfigError, match="also in job-queue"):
        load(["--job-queue", "curl,mail", "--dead-letter-queue", "mail"])


def test_global_secret_error_names_no_section(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s")
    secret.chmod(0o644)
    with pytest.raises(config.ConfigError) as raised:
        load(["--signing-secret-file", str(secret), "--job-queue", "a,b"])
    assert "[queue:" not in str(raised.value)
    assert str(raised.value).count("readable or writable") == 1
