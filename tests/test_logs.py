"""Log handlers: journald format, syslog, log file reopening, and curlerd's log lines under a journal stream."""

import logging
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from conftest import CURLERD, wait_until
from curler import logs, testing

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


@pytest.fixture
def restore_logging():
    """Undo what logs.setup does to the root logger of the test process."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    saved = logs._handler, logs._log_file
    yield
    if logs._handler is not None and logs._handler not in handlers:
        root.removeHandler(logs._handler)
        logs._handler.close()
    logs._handler, logs._log_file = saved
    root.handlers[:] = handlers
    root.setLevel(level)


def journal_stream_of(stream):
    stat = os.fstat(stream.fileno())
    return f"{stat.st_dev}:{stat.st_ino}"


def format_record(handler, message="child 42 started"):
    record = logging.LogRecord("curler.child", logging.INFO, __file__, 1, message, None, None)
    return handler.format(record)


def test_stderr_is_journal_compares_device_and_inode(tmp_path, monkeypatch):
    with open(tmp_path / "stderr", "w") as stream, open(tmp_path / "other", "w") as other:
        monkeypatch.setattr(sys, "stderr", stream)
        assert logs.stderr_is_journal({"JOURNAL_STREAM": journal_stream_of(stream)})
        assert not logs.stderr_is_journal({"JOURNAL_STREAM": journal_stream_of(other)})
        assert not logs.stderr_is_journal({})
        assert not logs.stderr_is_journal({"JOURNAL_STREAM": "not-a-stream"})
        assert not logs.stderr_is_journal({"JOURNAL_STREAM": "8:x"})


def test_journal_handler_leaves_out_timestamp(tmp_path, monkeypatch):
    with open(tmp_path / "stderr", "w") as stream:
        monkeypatch.setattr(sys, "stderr", stream)
        monkeypatch.setenv("JOURNAL_STREAM", journal_stream_of(stream))
        line = format_record(logs.make_handler(None))
    assert line == f"[{os.getpid()}] INFO curler.child: child 42 started"


def test_stderr_handler_outside_journal_has_timestamp(tmp_path, monkeypatch):
    with open(tmp_path / "stderr", "w") as stream:
        monkeypatch.setattr(sys, "stderr", stream)
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        assert TIMESTAMP.match(format_record(logs.make_handler(None)))


def test_log_file_keeps_timestamp_under_journal(tmp_path, monkeypatch):
    with open(tmp_path / "stderr", "w") as stream:
        monkeypatch.setattr(sys, "stderr", stream)
        monkeypatch.setenv("JOURNAL_STREAM", journal_stream_of(stream))
        handler = logs.make_handler(str(tmp_path / "curlerd.log"))
        try:
            assert isinstance(handler, logging.FileHandler)
            assert TIMESTAMP.match(format_record(handler))
        finally:
            handler.close()


def test_syslog_sends_to_socket(tmp_path, monkeypatch, restore_logging):
    path = str(tmp_path / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(10)
        monkeypatch.setattr(logs, "SYSLOG_SOCKET", path)
        logs.setup("syslog", "info")
        logging.getLogger("curler.test").info("job %s done", "H:host:1")
        logging.getLogger("curler.test").debug("below the level")
        datagram = server.recv(4096)
    # Priority 30 is facility daemon (3) times 8 plus severity info (6).
    assert datagram == f"<30>curlerd[{os.getpid()}]: INFO curler.test: job H:host:1 done\x00".encode()


def test_syslog_without_socket_raises_and_keeps_handler(tmp_path, monkeypatch, restore_logging):
    logs.setup(str(tmp_path / "curlerd.log"), "info")
    before = logs._handler
    monkeypatch.setattr(logs, "SYSLOG_SOCKET", str(tmp_path / "missing.sock"))
    with pytest.raises(OSError, match="no syslog socket at .*missing.sock"):
        logs.setup("syslog", "info")
    assert logs._handler is before
    assert before in logging.getLogger().handlers


def test_unopenable_log_file_keeps_handler(tmp_path, restore_logging):
    logs.setup(str(tmp_path / "curlerd.log"), "info")
    before = logs._handler
    with pytest.raises(OSError):
        logs.setup(str(tmp_path / "no-such-dir" / "curlerd.log"), "info")
    assert logs._handler is before


def test_reopen_follows_rotation(tmp_path, restore_logging):
    path = tmp_path / "curlerd.log"
    logs.setup(str(path), "info")
    log = logging.getLogger("curler.test")
    log.info("before rotation")
    path.rename(tmp_path / "curlerd.log.1")
    logs.reopen()
    log.info("after rotation")
    assert "before rotation" in (tmp_path / "curlerd.log.1").read_text()
    assert "after rotation" not in (tmp_path / "curlerd.log.1").read_text()
    assert "after rotation" in path.read_text()


def test_reopen_failure_keeps_old_file(tmp_path, restore_logging):
    directory = tmp_path / "logs"
    directory.mkdir()
    logs.setup(str(directory / "curlerd.log"), "info")
    (directory / "curlerd.log").rename(tmp_path / "kept.log")
    directory.rmdir()
    logs.reopen()
    logging.getLogger("curler.test").info("still logged")
    text = (tmp_path / "kept.log").read_text()
    assert "cannot reopen log file" in text
    assert "still logged" in text


def start_curlerd(tmp_path, gearmand, stderr, environ, *args):
    ini = tmp_path / "curler.ini"
    ini.write_text(f"[curlerd]\njob-servers = {gearmand.address}\nworkers = 1\n")
    return subprocess.Popen([CURLERD, "-c", str(ini), *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=stderr, env=environ)


def run_until_child_started(tmp_path, gearmand, journal_stream):
    """Run curlerd with standard error to a file until its child starts; return the lines it logged."""
    path = tmp_path / "stderr.log"
    with open(path, "w") as stderr:
        environ = dict(os.environ, JOURNAL_STREAM=journal_stream(stderr))
        process = start_curlerd(tmp_path, gearmand, stderr, environ)
        try:
            wait_until(lambda: re.search(r"child \d+ started", path.read_text()), message="a child to start")
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
        finally:
            testing.kill_tree(process.pid)
            process.wait(10)
    return [line for line in path.read_text().splitlines() if line]


def test_curlerd_under_journal_logs_without_timestamp(tmp_path, gearmand):
    lines = run_until_child_started(tmp_path, gearmand, journal_stream_of)
    assert lines
    for line in lines:
        assert re.match(r"^\[\d+\] (DEBUG|INFO|WARNING|ERROR|CRITICAL) curler\.", line), line


def test_curlerd_with_other_stream_keeps_timestamp(tmp_path, gearmand):
    lines = run_until_child_started(tmp_path, gearmand, lambda stderr: "1:1")
    assert lines
    for line in lines:
        assert TIMESTAMP.match(line), line


@pytest.mark.skipif(os.path.exists(logs.SYSLOG_SOCKET), reason="a syslog socket exists; curlerd would log to it")
def test_curlerd_syslog_without_socket_fails_to_start(tmp_path, gearmand):
    result = subprocess.run([CURLERD, "--job-servers", gearmand.address, "--workers", "1", "--log-file", "syslog",
                             "--pidfile", str(tmp_path / "curlerd.pid")],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert f"no syslog socket at {logs.SYSLOG_SOCKET}" in result.stderr
    assert not (tmp_path / "curlerd.pid").exists()
