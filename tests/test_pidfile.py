"""The pidfile module, then pidfiles and --daemon with a real curlerd."""

import logging
import os
import signal
import socket
import subprocess

import psutil
import pytest

from curler import pidfile, scoreboard, testing

from conftest import CURLERD, Curlerd, gone, wait_until


def exited_pid():
    """Return the pid of a process that has exited and been reaped."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid



# -- the module ------------------------------------------------------------------


def test_write_is_atomic_and_readable(tmp_path):
    path = tmp_path / "curlerd.pid"
    path.write_text("old contents that are longer than a pid\n")

    pidfile.write(str(path), 4321)

    assert path.read_text() == "4321\n"
    assert pidfile.read(str(path)) == 4321
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path) == ["curlerd.pid"]


def test_write_failure_leaves_no_temporary(tmp_path):
    target = tmp_path / "a-directory"
    target.mkdir()
    (target / "keep").write_text("")

    with pytest.raises(OSError):
        pidfile.write(str(target), 1)

    assert sorted(os.listdir(tmp_path)) == ["a-directory"]


@pytest.mark.parametrize("contents", ["", "abc\n", "-5\n", "0\n"])
def test_read_invalid_contents(tmp_path, contents):
    path = tmp_path / "curlerd.pid"
    path.write_text(contents)
    assert pidfile.read(str(path)) is None


def test_read_missing_file(tmp_path):
    assert pidfile.read(str(tmp_path / "missing.pid")) is None


def test_remove_only_own_pid(tmp_path):
    path = tmp_path / "curlerd.pid"
    path.write_text("1234\n")

    pidfile.remove(str(path), 999)
    assert path.exists()

    pidfile.remove(str(path), 1234)
    assert not path.exists()
    pidfile.remove(str(path), 1234)


def test_check_warns_about_dead_pid(tmp_path, caplog):
    path = tmp_path / "curlerd.pid"
    dead = exited_pid()
    path.write_text(f"{dead}\n")

    with caplog.at_level(logging.WARNING, logger="curler.pidfile"):
        pidfile.check(str(path))

    assert f"replacing stale pidfile {path} (pid {dead} is not a running curlerd)" in caplog.text


def test_check_ignores_process_that_is_not_curlerd(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        path = tmp_path / "curlerd.pid"
        path.write_text(f"{sleeper.pid}\n")
        assert not pidfile.is_curlerd(sleeper.pid)
        pidfile.check(str(path))
    finally:
        sleeper.kill()
        sleeper.wait()


def test_is_curlerd_false_for_missing_pid():
    assert not pidfile.is_curlerd(exited_pid())


# -- with a real curlerd ----------------------------------------------------------


def test_live_pidfile_stops_second_start(curlerd, tmp_path, gearmand, endpoint):
    first = curlerd(workers=1)
    assert pidfile.is_curlerd(first.pid)
    other = tmp_path / "second"
    other.mkdir()
    second = Curlerd(str(other), {"job-servers": gearmand.address, "curl-paths": endpoint.url,
                                  "pidfile": first.pidfile, "workers": "1"})

    second.start(wait=False)

    assert second.process.wait(30) == 1
    output = second.output()
    assert f"curlerd is already running with pid {first.pid} (pidfile {first.pidfile})" in output
    assert pidfile.read(first.pidfile) == first.pid
    assert first.child_pids()
    assert first.stop() == 0


def test_stale_pidfile_replaced(curlerd, tmp_path):
    dead = exited_pid()
    (tmp_path / "curlerd.pid").write_text(f"{dead}\n")

    daemon = curlerd(workers=1)

    assert pidfile.read(daemon.pidfile) == daemon.pid
    assert f"replacing stale pidfile {daemon.pidfile} (pid {dead} is not a running curlerd)" in daemon.log()
    assert daemon.stop() == 0
    assert not os.path.exists(daemon.pidfile)


def test_foreign_pidfile_kept_at_exit(curlerd):
    daemon = curlerd(workers=1)
    assert pidfile.read(daemon.pidfile) == daemon.pid
    pidfile.write(daemon.pidfile, daemon.pid + 100000)

    assert daemon.stop() == 0

    assert pidfile.read(daemon.pidfile) == daemon.pid + 100000


def test_daemon_pidfile_from_final_process(tmp_path, gearmand, endpoint):
    daemon = Curlerd(str(tmp_path), {"job-servers": gearmand.address, "curl-paths": endpoint.url,
                                     "workers": "2"})
    launcher = subprocess.run([CURLERD, "-c", daemon.ini, "--daemon"], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=30)
    assert launcher.returncode == 0
    pid = wait_until(lambda: pidfile.read(daemon.pidfile), message="the pidfile")
    try:
        master = psutil.Process(pid)
        assert master.ppid() != os.getpid()
        # setsid() then a second fork: in a session of its own, but not its leader.
        assert os.getsid(pid) != os.getsid(0)
        assert os.getsid(pid) != pid
        assert master.cmdline()[0] == "curlerd: master"
        wait_until(lambda: len(master.children()) == 2, message="2 children of the daemon")
        assert f"curlerd {pid} started" in daemon.log()
        with open(f"/proc/{pid}/fd/0") as stdin:
            assert stdin.read() == ""

        os.kill(pid, signal.SIGTERM)

        wait_until(lambda: gone(pid), message="the daemon to exit")
        assert not os.path.exists(daemon.pidfile)
        assert not os.path.exists(scoreboard.default_path(pid))
        assert f"curlerd {pid} stopped" in daemon.log()
    finally:
        if not gone(pid):
            for process in psutil.Process(pid).children() + [psutil.Process(pid)]:
                process.kill()


def test_daemon_with_live_pidfile_fails_before_detaching(curlerd, tmp_path, gearmand, endpoint):
    first = curlerd(workers=1)
    other = tmp_path / "second"
    other.mkdir()
    second = Curlerd(str(other), {"job-servers": gearmand.address, "curl-paths": endpoint.url,
                                  "pidfile": first.pidfile, "workers": "1"})

    launcher = subprocess.run([CURLERD, "-c", second.ini, "--daemon"], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=30)

    assert launcher.returncode == 1
    assert b"curlerd is already running with pid" in launcher.stderr
    assert pidfile.read(first.pidfile) == first.pid
    assert first.stop() == 0


def test_daemon_reports_start_errors_before_detaching(tmp_path):
    log_file = tmp_path / "curlerd.log"
    missing = tmp_path / "missing" / "curlerd.pid"
    result = subprocess.run([CURLERD, "--daemon", "--log-file", str(log_file), "--pidfile", str(missing),
                             "--job-servers", f"127.0.0.1:{testing.free_port()}"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "cannot start" in result.stderr


def test_daemon_reports_busy_metrics_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([CURLERD, "--daemon", "--log-file", str(tmp_path / "curlerd.log"),
                                 "--metrics-port", str(port), "--job-servers", f"127.0.0.1:{testing.free_port()}"],
                                capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "cannot listen on 127.0.0.1:" in result.stderr
