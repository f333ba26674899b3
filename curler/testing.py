"""Helpers that start a private gearmand and a recording HTTP endpoint on loopback.

Used by the test suite, the demo and the benchmark. Everything here binds to
127.0.0.1 on a free port and stops what it started.
"""

import http.server
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse

LOOPBACK = "127.0.0.1"


def free_port():
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def wait_for_port(port, timeout=10.0, host=LOOPBACK):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def find_gearmand():
    """Return the path of gearmand, or raise FileNotFoundError with the package to install."""
    for candidate in (shutil.which("gearmand"), "/usr/sbin/gearmand", "/usr/local/sbin/gearmand"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError("gearmand not found: install it with 'apt-get install gearman-job-server'")


class Gearmand:
    """A private gearmand on a free loopback port."""

    def __init__(self, port=None, threads=1):
        self.port = port or free_port()
        self.threads = threads
        self.process = None
        self.directory = tempfile.mkdtemp(prefix="curler-gearmand-")

    @property
    def address(self):
        return f"{LOOPBACK}:{self.port}"

    def start(self):
        self.process = subprocess.Popen(
            [find_gearmand(), "--listen", LOOPBACK, "--port", str(self.port), "--threads", str(self.threads),
             "--log-file", os.path.join(self.directory, "gearmand.log"),
             "--pid-file", os.path.join(self.directory, "gearmand.pid")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        return self

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self):
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class Request:
    """One request the recording endpoint received."""

    def __init__(self, method, path, headers, body):
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.received = time.monotonic()

    @property
    def form(self):
        return dict(urllib.parse.parse_qsl(self.body.decode(), keep_blank_values=True))

    @property
    def fields(self):
        return urllib.parse.parse_qsl(self.body.decode(), keep_blank_values=True)


class Reply:
    """A scripted reply: status, headers, body, and seconds to wait before sending it."""

    def __init__(self, status=200, body=b"ok", headers=None, delay=0.0, trickle=None, hang=False):
        self.status = status
        self.body = body
        self.headers = headers or {}
        self.delay = delay
        self.trickle = trickle
        self.hang = hang


class Endpoint:
    """A threaded HTTP/1.1 server on loopback that records every request.

    Replies are scripted per path with :meth:`script`; a path with no script
    gets 200 ``ok``.
    """

    def __init__(self, port=None, tls=None):
        self.port = port or free_port()
        self.tls = tls  # (certificate file, key file) to serve https
        self.requests = []
        self.scripts = {}
        self.default = Reply()
        self.condition = threading.Condition()
        self.server = None
        self.connections = set()
        self.stopping = threading.Event()

    @property
    def url(self):
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{LOOPBACK}:{self.port}"

    def script(self, path, *replies):
        with self.condition:
            self.scripts.setdefault(path, []).extend(replies)

    def replace_script(self, path, *replies):
        with self.condition:
            self.scripts[path] = list(replies)

    def next_reply(self, path):
        with self.condition:
            replies = self.scripts.get(path)
            if replies:
                return replies.pop(0) if len(replies) > 1 else replies[0]
            return self.default

    def record(self, request):
        with self.condition:
            self.requests.append(request)
            self.condition.notify_all()

    def wait_for(self, count, timeout=30.0, path=None):
        """Wait until ``count`` requests (to ``path`` if given) arrived; return them."""
        deadline = time.monotonic() + timeout
        with self.condition:
            while True:
                matching = [r for r in self.requests if path is None or r.path == path]
                if len(matching) >= count:
                    return matching
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{len(matching)} of {count} requests arrived within {timeout} s")
                self.condition.wait(remaining)

    def start(self):
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                with endpoint.condition:
                    endpoint.connections.add(self.connection)

            def finish(self):
                with endpoint.condition:
                    endpoint.connections.discard(self.connection)
                super().finish()

            def log_message(self, *args):
                pass

            def do_POST(self):
                self.handle_any()

            def do_GET(self):
                self.handle_any()

            def handle_any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                endpoint.record(Request(self.command, self.path, dict(self.headers), body))
                reply = endpoint.next_reply(self.path)
                if reply.hang:
                    endpoint.stopping.wait(600)
                    return
                if reply.delay:
                    time.sleep(reply.delay)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if reply.trickle:
                    for index in range(len(reply.body)):
                        if endpoint.stopping.is_set():
                            return
                        self.wfile.write(reply.body[index:index + 1])
                        self.wfile.flush()
                        time.sleep(reply.trickle)
                else:
                    self.wfile.write(reply.body)

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        self.server.daemon_threads = True
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        """Stop listening and close every open connection, kept-alive ones included."""
        self.stopping.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        with self.condition:
            connections = list(self.connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def kill_tree(pid, sig=signal.SIGKILL):
    """Send ``sig`` to ``pid`` and all its descendants."""
    import psutil
    try:
        parent = psutil.Process(pid)
        processes = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        try:
            process.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
