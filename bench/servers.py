"""The HTTP endpoints the benchmark posts to: nginx with a private config, or bench/endpoint.py.

Both listen on a free 127.0.0.1 port and reply ``200 ok`` to ``POST /jobs/...``.
"""

import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

from curler import testing

ENDPOINT_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "endpoint.py")
NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
STOP_TIMEOUT = 10.0

# One worker process without a master keeps nginx to one process and one CPU at
# most. With "return 200", nginx replies before it reads the body and then
# discards the body, so kept-alive connections stay in sync.
NGINX_CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port};
        location /jobs/ {{
            default_type text/plain;
            return 200 "ok";
        }}
        location = /stub_status {{
            stub_status;
        }}
    }}
}}
"""


def find_nginx():
    """Return the path of nginx, or None when it is not installed."""
    for candidate in (shutil.which("nginx"), *NGINX_CANDIDATES):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def read_text(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as text_file:
            return text_file.read().strip() or "(empty log)"
    except FileNotFoundError:
        return "(no log)"


def stop_process(process, sig=signal.SIGTERM):
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Nginx:
    """nginx from the distribution, one process, with its config and files in ``directory``."""

    description = "nginx {version}, one worker process, `return 200` on /jobs/"

    def __init__(self, executable, directory):
        self.executable = executable
        self.directory = os.path.join(directory, "nginx")
        self.port = testing.free_port()
        self.process = None

    @property
    def url(self):
        return f"http://{testing.LOOPBACK}:{self.port}"

    @property
    def pid(self):
        return self.process.pid

    def version(self):
        result = subprocess.run([self.executable, "-v"], capture_output=True, text=True, check=False)
        return result.stderr.strip().rpartition("/")[2] or "(unknown version)"

    def start(self):
        os.makedirs(self.directory, exist_ok=True)
        config_path = os.path.join(self.directory, "nginx.conf")
        with open(config_path, "w", encoding="utf-8") as config_file:
            config_file.write(NGINX_CONFIG.format(directory=self.directory, port=self.port))
        error_log = os.path.join(self.directory, "error.log")
        # -e sets the error log used before the config is read, which otherwise
        # is a system path that an unprivileged user cannot open.
        with open(os.path.join(self.directory, "stderr.log"), "wb") as stderr:
            self.process = subprocess.Popen(
                [self.executable, "-p", self.directory, "-c", config_path, "-e", error_log],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            testing.wait_for_port(self.port)
        except TimeoutError:
            stop_process(self.process)
            raise RuntimeError(f"nginx did not start on port {self.port}: {read_text(error_log)}") from None
        return self

    def describe(self):
        return self.description.format(version=self.version())

    def requests_served(self):
        """Return the total request count from stub_status, in which each stub_status request counts itself."""
        with urllib.request.urlopen(self.url + "/stub_status", timeout=10) as response:
            lines = response.read().decode().splitlines()
        # The third line contains the accepts, handled and requests counters.
        return int(lines[2].split()[2])

    def stop(self):
        # SIGTERM stops nginx at once, while SIGQUIT would wait for kept-alive connections to close.
        stop_process(self.process)


class BuiltinEndpoint:
    """bench/endpoint.py in its own process: asyncio, optionally slow or recording arrival times."""

    def __init__(self, delay=0.0, record=False):
        self.port = testing.free_port()
        self.delay = delay
        self.record = record
        self.process = None
        self.selector = None
        self.pending = b""

    @property
    def url(self):
        return f"http://{testing.LOOPBACK}:{self.port}"

    @property
    def pid(self):
        return self.process.pid

    def requests_served(self):
        """Return None: this endpoint keeps no request count."""
        return None

    def describe(self):
        text = "bench/endpoint.py (asyncio, one process)"
        if self.delay:
            text += f", {self.delay * 1000:g} ms per request"
        return text

    def start(self):
        command = [sys.executable, ENDPOINT_SCRIPT, "--port", str(self.port), "--delay", str(self.delay)]
        if self.record:
            command.append("--record")
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE if self.record else subprocess.DEVNULL)
        testing.wait_for_port(self.port)
        if self.record:
            os.set_blocking(self.process.stdout.fileno(), False)
            self.selector = selectors.DefaultSelector()
            self.selector.register(self.process.stdout, selectors.EVENT_READ)
        return self

    def next_arrival(self, timeout):
        """Return the monotonic time of the next request's arrival, or raise TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.selector.select(remaining):
                raise TimeoutError(f"no request reached the endpoint within {timeout} s")
            chunk = self.process.stdout.read()
            if chunk == b"":
                raise RuntimeError("the recording endpoint exited")
            self.pending += chunk or b""
        line, self.pending = self.pending.split(b"\n", 1)
        return float(line)

    def stop(self):
        if self.selector is not None:
            self.selector.close()
        stop_process(self.process)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()


def start_fast_endpoint(directory):
    """Start nginx when installed, else the built-in endpoint; return it."""
    executable = find_nginx()
    if executable is None:
        return BuiltinEndpoint().start()
    return Nginx(executable, directory).start()
