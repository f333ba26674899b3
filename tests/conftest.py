"""Fixtures: a private gearmand, a recording HTTP endpoint and curlerd run as a real process tree."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from curler import gearman, scoreboard, testing


def pytest_configure(config):
    try:
        testing.find_gearmand()
    except FileNotFoundError as error:
        raise pytest.UsageError(str(error))


@pytest.fixture
def gearmand():
    server = testing.Gearmand().start()
    yield server
    server.close()


@pytest.fixture
def endpoint():
    server = testing.Endpoint().start()
    yield server
    server.stop()


@pytest.fixture
def client(gearmand):
    with gearman.Client([gearman.parse_server(gearmand.address)]) as gearman_client:
        yield gearman_client


# The console script installed next to this interpreter, so tests run what users run.
CURLERD = os.path.join(os.path.dirname(sys.executable), "curlerd")
if not os.path.exists(CURLERD):
    CURLERD = "curlerd"


def job_payload(method="generate_archive", **data):
    return json.dumps({"method": method, "data": data}).encode()


def wait_until(condition, timeout=20.0, interval=0.05, message="condition"):
    """Poll ``condition`` until it returns a true value; return that value or fail the test."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def gone(pid):
    """Tell whether ``pid`` exited; a zombie that its new parent has not reaped yet counts as gone."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Curlerd:
    """A curlerd supervisor started from an INI file written by the test."""

    def __init__(self, directory, settings, extra_args=(), env=None):
        self.directory = directory
        self.ini = os.path.join(directory, "curler.ini")
        self.log_file = os.path.join(directory, "curlerd.log")
        self.pidfile = os.path.join(directory, "curlerd.pid")
        self.settings = {"log-file": self.log_file, "pidfile": self.pidfile, "workers": "2",
                         "log-level": "debug", **settings}
        self.extra_args = list(extra_args)
        self.env = env
        self.process = None
        self.write_config()

    def write_config(self, sections=None):
        lines = ["[curlerd]"] + [f"{key} = {value}" for key, value in self.settings.items()]
        for name, values in (sections or {}).items():
            lines += ["", f"[{name}]"] + [f"{key} = {value}" for key, value in values.items()]
        with open(self.ini, "w") as ini:
            ini.write("\n".join(lines) + "\n")

    def start(self, wait=True):
        self.process = subprocess.Popen(
            [CURLERD, "-c", self.ini, *self.extra_args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env)
        if wait:
            self.wait_for_children(int(self.settings.get("workers", 1)))
        return self

    @property
    def pid(self):
        return self.process.pid

    def children(self):
        try:
            return [p for p in psutil.Process(self.pid).children() if p.status() != psutil.STATUS_ZOMBIE]
        except psutil.NoSuchProcess:
            return []

    def child_pids(self):
        return sorted(p.pid for p in self.children())

    def wait_for_children(self, count, timeout=20.0):
        """Wait until ``count`` children have logged that they started and no others are alive."""
        def ready():
            pids = self.child_pids()
            started = set(self.started_children())
            return pids if len(pids) == count and started.issuperset(pids) else None
        return wait_until(ready, timeout, message=f"{count} running children")

    def started_children(self):
        return [int(pid) for pid in re.findall(r"child (\d+) started", self.log())]

    def log(self):
        try:
            with open(self.log_file, encoding="utf-8", errors="replace") as log_file:
                return log_file.read()
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern, timeout=20.0, count=1):
        regex = re.compile(pattern)
        return wait_until(lambda: len(regex.findall(self.log())) >= count, timeout,
                          message=f"log line matching {pattern!r}")

    def signal(self, signum):
        os.kill(self.pid, signum)

    def stop(self, timeout=30.0):
        """Send SIGTERM and return the exit status."""
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def output(self):
        return self.process.stdout.read().decode(errors="replace") if self.process.stdout else ""

    def kill(self):
        if self.process is not None:
            testing.kill_tree(self.process.pid)
            self.process.wait(10)


@pytest.fixture
def curlerd(tmp_path, gearmand, endpoint):
    """Return a factory that starts curlerd against this test's gearmand and endpoint."""
    started = []

    def start(wait=True, extra_args=(), sections=None, env=None, **settings):
        base = {"job-servers": gearmand.address, "curl-paths": endpoint.url + "/jobs"}
        base.update({key.replace("_", "-"): value for key, value in settings.items()})
        instance = Curlerd(str(tmp_path), base, extra_args, env)
        if sections:
            instance.write_config(sections)
        started.append(instance)
        return instance.start(wait)

    yield start
    for instance in started:
        pids = [p.pid for p in instance.children()]
        instance.kill()
        try:
            os.unlink(scoreboard.default_path(instance.pid))
        except FileNotFoundError:
            pass
        for pid in pids:
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
