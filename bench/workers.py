"""The workers under test, each started as its own process tree against one job server and base URL.

Every worker class has the same interface: ``start()``, ``pid`` (the root of
the tree whose CPU time is counted), ``worker_count`` (Gearman workers it
registers), ``worker_pids()`` (the processes that take jobs), ``check()``
(raise if it died) and ``stop()``.
"""

import os
import shutil
import signal
import subprocess
import sys

import measure
from curler import testing

QUEUE = "curl"
STOP_TIMEOUT = 30.0
BENCH_DIRECTORY = os.path.dirname(os.path.abspath(__file__))
LOG_TAIL_BYTES = 4000


class WorkerExited(RuntimeError):
    """A worker under test exited before the benchmark stopped it."""


def find_curlerd():
    """Return the curlerd console script installed next to this interpreter, else the one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "curlerd")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("curlerd")
    if found is None:
        raise FileNotFoundError("curlerd not found: run 'pip install -e .' in the repository")
    return found


class ProcessWorker:
    """A worker that is one process."""

    worker_count = 1

    def __init__(self, command, directory, name):
        self.command = command
        self.log_path = os.path.join(directory, f"{name}.log")
        self.process = None

    @property
    def pid(self):
        return self.process.pid

    def start(self):
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=log_file)
        return self

    def worker_pids(self):
        return [self.process.pid]

    def check(self):
        if self.process.poll() is not None:
            raise WorkerExited(f"{self.command[0]} exited with status {self.process.returncode}: "
                               + read_tail(self.log_path))

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def gearman_cli(job_server, directory):
    """Case (a): ``gearman -w`` with no command, which returns each workload as the result.

    It runs until stopped. ``-c COUNT`` would make it exit after COUNT jobs,
    which the benchmark does not need because it watches the queue.
    """
    executable = shutil.which("gearman")
    if executable is None:
        return None
    host, _, port = job_server.rpartition(":")
    return ProcessWorker([executable, "-w", "-f", QUEUE, "-h", host, "-p", port], directory, "gearman-cli")


def requests_worker(job_server, base_url, directory):
    """Case (b): bench/requests_worker.py, one requests.Session.post per job."""
    command = [sys.executable, os.path.join(BENCH_DIRECTORY, "requests_worker.py"),
               "--job-server", job_server, "--queue", QUEUE, "--url", base_url]
    return ProcessWorker(command, directory, "requests-worker")


class Curlerd:
    """curlerd started through its console script with an INI file written into ``directory``."""

    def __init__(self, job_server, base_url, directory, children, log_level="warning", name="curlerd"):
        self.directory = os.path.join(directory, name)
        os.makedirs(self.directory, exist_ok=True)
        self.ini_path = os.path.join(self.directory, "curlerd.ini")
        self.log_path = os.path.join(self.directory, "curlerd.log")
        self.worker_count = children
        self.settings = {
            "job-servers": job_server,
            "job-queue": QUEUE,
            "curl-paths": base_url + "/jobs",
            "workers": str(children),
            "log-level": log_level,
            "log-file": self.log_path,
        }
        self.process = None

    @property
    def pid(self):
        return self.process.pid

    def start(self):
        with open(self.ini_path, "w", encoding="utf-8") as ini:
            ini.write("[curlerd]\n" + "".join(f"{key} = {value}\n" for key, value in self.settings.items()))
        self.process = subprocess.Popen([find_curlerd(), "-c", self.ini_path], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def worker_pids(self):
        return measure.live_children(self.process.pid)

    def check(self):
        if self.process.poll() is not None:
            raise WorkerExited(f"curlerd exited with status {self.process.returncode}: " + read_tail(self.log_path))

    def log_tail(self):
        return read_tail(self.log_path)

    def stop(self):
        """Drain curlerd with SIGTERM, and kill the whole tree if it has not exited in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            testing.kill_tree(self.process.pid)
            self.process.wait()


def read_tail(path):
    try:
        with open(path, "rb") as log_file:
            log_file.seek(0, os.SEEK_END)
            log_file.seek(max(0, log_file.tell() - LOG_TAIL_BYTES))
            text = log_file.read().decode("utf-8", "replace").strip()
    except FileNotFoundError:
        return "(no log)"
    return text or "(empty log)"
