"""packaging/: the init.d script against a private gearmand, install.sh and uninstall.sh in a temporary root,
the systemd unit under systemd-analyze, and the logrotate config under logrotate."""

import grp
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys

import pytest

from conftest import CURLERD, job_payload, wait_until
from curler import pidfile, testing

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGING = os.path.join(REPOSITORY, "packaging")
INIT_SCRIPT = os.path.join(PACKAGING, "init.d", "curlerd")
UNIT = os.path.join(PACKAGING, "systemd", "curlerd.service")
LOGROTATE = os.path.join(PACKAGING, "logrotate", "curlerd")
IS_ROOT = os.geteuid() == 0

needs_start_stop_daemon = pytest.mark.skipif(shutil.which("start-stop-daemon") is None,
                                             reason="start-stop-daemon (Debian's dpkg) is not installed")


# -- the init.d script ----------------------------------------------------------------

class InitScript:
    """packaging/init.d/curlerd pointed at temporary files through CURLERD_DEFAULTS."""

    def __init__(self, directory, gearmand, endpoint):
        self.directory = directory
        self.config = directory / "curler.ini"
        self.log_file = directory / "curlerd.log"
        self.pidfile = directory / "run" / "curlerd.pid"
        self.defaults = directory / "default-curlerd"
        self.write_config(f"job-servers = {gearmand.address}\ncurl-paths = {endpoint.url}/jobs\n")
        self.defaults.write_text(f"DAEMON={CURLERD}\nCONFIG={self.config}\nPIDFILE={self.pidfile}\n"
                                 "RUN_USER=\nSTOP_TIMEOUT=30\nSTART_TIMEOUT=20\n")

    def write_config(self, body):
        self.config.write_text(f"[curlerd]\nworkers = 1\ngraceful-timeout = 20\nlog-level = debug\n"
                               f"log-file = {self.log_file}\n{body}")

    def run(self, action):
        environ = dict(os.environ, CURLERD_DEFAULTS=str(self.defaults))
        return subprocess.run([INIT_SCRIPT, action], capture_output=True, text=True, timeout=120, env=environ,
                              stdin=subprocess.DEVNULL)

    def pid(self):
        return pidfile.read(str(self.pidfile))

    def log(self):
        return self.log_file.read_text() if self.log_file.exists() else ""

    def wait_for_log(self, pattern, count=1):
        regex = re.compile(pattern)
        wait_until(lambda: len(regex.findall(self.log())) >= count, message=f"log line matching {pattern!r}")

    def kill(self):
        pid = self.pid()
        if pid and pidfile.is_curlerd(pid):
            testing.kill_tree(pid)


@pytest.fixture
def initd(tmp_path, gearmand, endpoint):
    script = InitScript(tmp_path, gearmand, endpoint)
    yield script
    script.kill()


def alive(pid):
    return pidfile.is_curlerd(pid)


@needs_start_stop_daemon
def test_initd_start_status_reload_stop(initd):
    result = initd.run("start")
    assert result.returncode == 0, result.stdout + result.stderr
    pid = initd.pid()
    assert pid and alive(pid)
    initd.wait_for_log(r"child \d+ started")

    again = initd.run("start")
    assert again.returncode == 0, again.stdout + again.stderr
    assert initd.pid() == pid

    status = initd.run("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"curlerd {pid} (pidfile {initd.pidfile})" in status.stdout

    reload = initd.run("reload")
    assert reload.returncode == 0, reload.stdout + reload.stderr
    initd.wait_for_log(r"reloaded: 1 new children")
    assert initd.pid() == pid

    force = initd.run("force-reload")
    assert force.returncode == 0, force.stdout + force.stderr
    initd.wait_for_log(r"reloaded: 1 new children", count=2)

    stop = initd.run("stop")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert not alive(pid)
    assert not initd.pidfile.exists()
    assert re.search(rf"curlerd {pid} stopped", initd.log())

    after = initd.run("status")
    assert after.returncode == 3
    assert "curlerd is not running" in after.stdout


@needs_start_stop_daemon
def test_initd_reload_with_invalid_config_keeps_running(initd, gearmand, endpoint):
    assert initd.run("start").returncode == 0
    pid = initd.pid()
    initd.write_config(f"job-servers = {gearmand.address}\ncurl-paths = ftp://nowhere\n")

    result = initd.run("reload")
    assert result.returncode == 1
    assert "invalid curl-paths value 'ftp://nowhere'" in result.stderr
    assert "keeps its running configuration" in result.stdout
    assert alive(pid)
    assert "SIGHUP received" not in initd.log()


@needs_start_stop_daemon
def test_initd_stop_waits_for_drain(initd, client, endpoint):
    endpoint.script("/jobs/slow_export", testing.Reply(200, b"exported", delay=2.0))
    assert initd.run("start").returncode == 0
    pid = initd.pid()
    client.submit_background("curl", job_payload("slow_export"))
    endpoint.wait_for(1)

    result = initd.run("stop")
    assert result.returncode == 0, result.stdout + result.stderr
    # The job in hand finished before stop returned.
    assert re.search(r"job \S+ slow_export: HTTP 200", initd.log())
    assert not alive(pid)


@needs_start_stop_daemon
def test_initd_restart_starts_new_supervisor(initd):
    assert initd.run("start").returncode == 0
    first = initd.pid()
    result = initd.run("restart")
    assert result.returncode == 0, result.stdout + result.stderr
    second = initd.pid()
    assert second != first
    assert alive(second)
    assert not alive(first)


@needs_start_stop_daemon
def test_initd_stop_and_reload_when_not_running(initd):
    stop = initd.run("stop")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    reload = initd.run("reload")
    assert reload.returncode == 7
    assert "curlerd is not running" in reload.stdout


@needs_start_stop_daemon
def test_initd_start_with_invalid_config_fails(initd):
    initd.write_config("max-attempts = many\n")
    result = initd.run("start")
    assert result.returncode == 1
    assert "invalid max-attempts value 'many'" in result.stderr
    assert not initd.pidfile.exists()


@needs_start_stop_daemon
def test_initd_status_with_stale_pidfile(initd):
    initd.pidfile.parent.mkdir()
    other = subprocess.Popen(["sleep", "60"])
    try:
        initd.pidfile.write_text(f"{other.pid}\n")
        status = initd.run("status")
    finally:
        other.kill()
        other.wait()
    assert status.returncode == 1
    result = initd.run("start")
    assert result.returncode == 0, result.stdout + result.stderr
    assert initd.pid() != other.pid
    assert alive(initd.pid())


def test_initd_usage_and_missing_daemon(initd, tmp_path):
    usage = initd.run("bounce")
    assert usage.returncode == 2
    assert "Usage:" in usage.stderr
    initd.defaults.write_text(f"DAEMON={tmp_path / 'missing'}\n")
    missing = initd.run("start")
    assert missing.returncode == 5
    assert "is not installed" in missing.stdout


def test_initd_script_has_lsb_header():
    with open(INIT_SCRIPT) as script:
        text = script.read()
    assert os.access(INIT_SCRIPT, os.X_OK)
    header = text[text.index("### BEGIN INIT INFO"):text.index("### END INIT INFO")]
    for field in ("Provides:", "Required-Start:", "Required-Stop:", "Default-Start:", "Default-Stop:",
                  "Short-Description:"):
        assert f"# {field}" in header
    result = subprocess.run(["sh", "-n", INIT_SCRIPT], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# -- install.sh and uninstall.sh ---------------------------------------------------------

def example_config(tmp_path):
    """Return the repository's example config, or a stand-in when it is not written yet."""
    path = os.path.join(REPOSITORY, "etc", "curler.ini")
    if os.path.exists(path):
        return path
    stand_in = tmp_path / "example.ini"
    stand_in.write_text("[curlerd]\ncurl-paths = http://localhost/jobs\n")
    return str(stand_in)


def make_root(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    return root


def run_installer(script, root, *args):
    # The virtualenv uses this interpreter's packages, so pip installs curler alone,
    # fetching only what its build needs (setuptools) when pip has no copy cached.
    command = [os.path.join(PACKAGING, script), "--root", str(root), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def install(root, tmp_path, *args):
    return run_installer("install.sh", root, "--python", sys.executable, "--system-site-packages",
                         "--pip-args", "--no-deps", "--example-config", example_config(tmp_path), *args)


def passwd_entry(root, name):
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    return None


def host_accounts():
    with open("/etc/passwd") as passwd, open("/etc/group") as group:
        return passwd.read(), group.read()


def test_install_sysv_then_again_then_uninstall(tmp_path):
    root = make_root(tmp_path)
    accounts = host_accounts()

    first = install(root, tmp_path, "--init", "sysv")
    assert first.returncode == 0, first.stdout + first.stderr
    venv = root / "opt" / "curler"
    check = subprocess.run([str(venv / "bin" / "curlerd"), "--check-config", "-c", str(root / "etc" / "curler.ini")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import curler; print(curler.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr

    config = root / "etc" / "curler.ini"
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    script = root / "etc" / "init.d" / "curlerd"
    assert os.access(script, os.X_OK)
    assert "\nDAEMON=/opt/curler/bin/curlerd\n" in script.read_text()
    assert (root / "etc" / "default" / "curlerd").exists()
    assert (root / "etc" / "logrotate.d" / "curlerd").read_text() == open(LOGROTATE).read()
    assert not (root / "etc" / "systemd").exists()
    logs = root / "var" / "log" / "curler"
    assert stat.S_IMODE(logs.stat().st_mode) == 0o750
    if IS_ROOT:
        user = passwd_entry(root, "curler")
        assert user is not None
        assert user[5:] == ["/opt/curler", "/usr/sbin/nologin"]
        assert (logs.stat().st_uid, logs.stat().st_gid) == (int(user[2]), int(user[3]))
        assert (config.stat().st_uid, config.stat().st_gid) == (0, int(user[3]))
    assert host_accounts() == accounts
    assert not os.path.exists(os.path.join(REPOSITORY, "build"))

    with open(config, "a") as edited:
        edited.write("# edited by the operator\n")
    second = install(root, tmp_path, "--init", "sysv")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "kept the existing /etc/curler.ini" in second.stdout
    assert config.read_text().endswith("# edited by the operator\n")
    assert (root / "etc" / "passwd").read_text().count("\ncurler:") <= 1
    assert os.access(venv / "bin" / "curlerd", os.X_OK)

    removed = run_installer("uninstall.sh", root)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert not venv.exists()
    assert not script.exists()
    assert not (root / "etc" / "logrotate.d" / "curlerd").exists()
    assert config.read_text().endswith("# edited by the operator\n")
    assert (root / "etc" / "default" / "curlerd").exists()
    assert logs.exists()
    assert passwd_entry(root, "curler") is None
    assert "curler:" not in (root / "etc" / "group").read_text()
    assert host_accounts() == accounts


def test_install_systemd_with_prefix(tmp_path):
    root = make_root(tmp_path)
    result = install(root, tmp_path, "--init", "systemd", "--prefix", "/srv/curler")
    assert result.returncode == 0, result.stdout + result.stderr
    unit = (root / "etc" / "systemd" / "system" / "curlerd.service").read_text()
    assert "ExecStart=/srv/curler/bin/curlerd -c ${CURLER_CONFIG}" in unit
    assert "/opt/curler" not in unit
    assert os.access(root / "srv" / "curler" / "bin" / "curlerd", os.X_OK)
    assert not (root / "etc" / "init.d").exists()

    removed = run_installer("uninstall.sh", root, "--prefix", "/srv/curler", "--purge-logs")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert not (root / "srv" / "curler").exists()
    assert not (root / "etc" / "systemd" / "system" / "curlerd.service").exists()
    assert not (root / "var" / "log" / "curler").exists()
    assert (root / "etc" / "curler.ini").exists()


def test_install_rejects_bad_options(tmp_path):
    root = make_root(tmp_path)
    for args, message in [(("--init", "upstart"), "--init must be systemd, sysv or none"),
                          (("--prefix", "relative"), "--prefix must be an absolute directory"),
                          (("--bogus",), "unknown option: --bogus"),
                          (("--example-config", str(tmp_path / "missing.ini")), "example config")]:
        result = run_installer("install.sh", root, *args)
        assert result.returncode == 1, args
        assert message in result.stderr, result.stderr
    assert not (root / "opt").exists()


def test_uninstall_keeps_directory_that_is_not_a_virtualenv(tmp_path):
    root = make_root(tmp_path)
    other = root / "opt" / "curler"
    other.mkdir(parents=True)
    (other / "data.txt").write_text("not ours")
    result = run_installer("uninstall.sh", root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kept /opt/curler" in result.stdout
    assert (other / "data.txt").exists()


# -- the systemd unit -------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies(tmp_path):
    # systemd-analyze checks that ExecStart exists, so the unit points at this curlerd,
    # as install.sh --prefix would make it.
    with open(UNIT) as unit:
        text = unit.read().replace("/opt/curler/bin/curlerd", CURLERD)
    path = tmp_path / "curlerd.service"
    path.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_systemd_unit_settings():
    with open(UNIT) as unit:
        settings = {}
        for line in unit:
            key, sep, value = line.strip().partition("=")
            if sep and not key.startswith("#"):
                settings.setdefault(key, []).append(value)
    assert settings["Type"] == ["notify"]
    assert settings["KillMode"] == ["mixed"]
    assert settings["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert "--check-config" in settings["ExecReload"][0]
    # Longer than the default graceful-timeout of 30 s, so the drain ends before SIGKILL.
    assert int(settings["TimeoutStopSec"][0]) > 30
    assert settings["User"] == ["curler"]
    assert settings["RuntimeDirectory"] == ["curlerd"]
    for hardening in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert settings[hardening] == ["yes"]
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["ReadWritePaths"] == ["/var/log/curler"]


# -- logrotate ----------------------------------------------------------------------------------

def logrotate_config(tmp_path, log_directory="/var/log/curler", pid_path="/run/curlerd/curlerd.pid"):
    """Return the shipped logrotate config with this test's user, log directory and pidfile."""
    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    with open(LOGROTATE) as shipped:
        text = shipped.read()
    text = text.replace("curler curler", f"{user} {group}")
    text = text.replace("/var/log/curler", str(log_directory)).replace("/run/curlerd/curlerd.pid", str(pid_path))
    path = tmp_path / "logrotate.conf"
    path.write_text(text)
    path.chmod(0o644)
    return path


needs_logrotate = pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate is not installed")


@needs_logrotate
def test_logrotate_config_parses(tmp_path):
    result = subprocess.run(["logrotate", "-d", "-s", str(tmp_path / "state"), str(logrotate_config(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "error" not in output.lower()
    assert "rotating pattern: /var/log/curler/*.log" in output


@needs_logrotate
def test_logrotate_makes_curlerd_reopen(curlerd, tmp_path, client, endpoint):
    daemon = curlerd(workers="1")
    logs = tmp_path
    config = logrotate_config(tmp_path, logs, daemon.pidfile)

    result = subprocess.run(["logrotate", "-f", "-s", str(tmp_path / "state"), str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    rotated = logs / "curlerd.log.1"
    wait_until(lambda: "SIGUSR1 received" in rotated.read_text(), message="the supervisor to get SIGUSR1")

    # After the reopen, the child and then the supervisor write to the new file.
    client.submit_background("curl", job_payload("after_rotation"))
    daemon.wait_for_log(r"job \S+ after_rotation: HTTP 200")
    daemon.signal(signal.SIGTTIN)
    daemon.wait_for_log(r"SIGTTIN received")
    assert f"curlerd {daemon.pid} started" in rotated.read_text()
    assert f"curlerd {daemon.pid} started" not in daemon.log()
