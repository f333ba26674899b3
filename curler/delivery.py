"""HTTP delivery: one POST per attempt through a requests session's connection pools.

The session and its adapter decide TLS verification, CA bundle, proxies and
connection pooling once per base URL, at set-up. Each attempt then calls the
urllib3 pool that the adapter mounted, which skips the per-call work of
``Session.post`` (environment and proxy look-ups, hooks, cookie handling)
while sending the same request on the same connections.
"""

import hashlib
import hmac
import logging
import random
import signal
import time
import urllib.parse

import requests
import urllib3
from requests.adapters import HTTPAdapter

from . import __version__, http1

log = logging.getLogger("curler.delivery")

USER_AGENT = f"curler/{__version__}"
VERBOSE_BODY_LIMIT = 2048
REDACTED_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-curler-signature"})


class RequestTimeout(Exception):
    """The whole request took longer than the configured timeout."""


class Attempt:
    """The outcome of one HTTP attempt: a status with its body, or an error."""

    __slots__ = ("url", "status", "body", "error", "location", "retry_after", "truncated", "connection_error",
                 "headers")

    def __init__(self, url, status=None, body=b"", error=None, location=None, retry_after=None,
                 truncated=False, connection_error=False, headers=None):
        self.url = url
        self.status = status
        self.body = body
        self.error = error
        self.location = location
        self.retry_after = retry_after
        self.truncated = truncated
        self.connection_error = connection_error
        self.headers = headers

    def describe(self):
        if self.status is None:
            return self.error
        if 300 <= self.status < 400:
            return f"HTTP {self.status} redirect to {self.location or '(no Location)'}; set curl-paths to the final URL"
        return f"HTTP {self.status}"


class Target:
    """One base URL with the pool, request-target prefix and headers that reach it."""

    __slots__ = ("base_url", "display_url", "pool", "prefix", "headers", "direct")

    def __init__(self, base_url, pool, prefix, headers, direct):
        self.base_url = base_url
        self.display_url = without_password(base_url)
        self.pool = pool
        self.prefix = prefix
        self.headers = headers
        # Without a proxy, requests go through the lean HTTP/1.1 exchange; through a
        # proxy, urllib3's urlopen handles the proxy protocol.
        self.direct = direct


def host_header(url):
    """Return the Host header urllib3 sends for ``url``: host, and port unless it is the default."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    default_port = 443 if parts.scheme == "https" else 80
    return host if parts.port in (None, default_port) else f"{host}:{parts.port}"


def without_password(url):
    """Return ``url`` with the password of its user information replaced, for logs and dead letters."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:[redacted]@{netloc}"))


def sign(secret, timestamp, body):
    """Return the X-Curler-Signature value: ``v1=`` and the hex HMAC-SHA256 of ``"<timestamp>.<body>"``."""
    message = str(timestamp).encode() + b"." + body
    return "v1=" + hmac.new(secret, message, hashlib.sha256).hexdigest()


class Delivery:
    """Sends POST requests for one child; created after the fork, never shared between processes."""

    def __init__(self, settings):
        self.settings = settings
        self.session = make_session(settings)
        self.verify = settings.ca_bundle or True
        self.timeouts = {}
        self.max_response_bytes = settings.max_response_bytes
        self.verbose = settings.verbose
        self.targets = {}
        self.in_request = False
        signal.signal(signal.SIGALRM, self.on_alarm)

    def target(self, base_url):
        target = self.targets.get(base_url)
        if target is None:
            target = self.targets[base_url] = self.make_target(base_url)
        return target

    def make_target(self, base_url):
        """Resolve proxies, TLS settings and the connection pool for ``base_url`` once."""
        session = self.session
        request = requests.Request("POST", base_url + "/").prepare()
        proxies = {"http": self.settings.proxy, "https": self.settings.proxy} if self.settings.proxy else {}
        verify = self.verify
        if session.trust_env:
            merged = session.merge_environment_settings(base_url, proxies, None, verify, None)
            proxies, verify = merged["proxies"], merged["verify"]
        adapter = session.get_adapter(base_url)
        pool = adapter.get_connection_with_tls_context(request, verify, proxies, None)
        prefix = adapter.request_url(request, proxies).rstrip("/")
        headers = {"Host": host_header(base_url), **session.headers}
        # requests turns user information in the URL into Basic authentication.
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        proxy = requests.utils.select_proxy(base_url, proxies)
        if proxy and not base_url.startswith("https://"):
            headers.update(adapter.proxy_headers(proxy))
        if proxy:
            del headers["Host"]
        return Target(base_url, pool, prefix, headers, direct=not proxy)

    def on_alarm(self, signum, frame):
        if self.in_request:
            self.in_request = False
            raise RequestTimeout()

    def timeout_for(self, seconds):
        timeout = self.timeouts.get(seconds)
        if timeout is None:
            connect = min(self.settings.connect_timeout, seconds)
            timeout = self.timeouts[seconds] = urllib3.Timeout(connect=connect, read=seconds)
        return timeout

    def post(self, base_url, path, body, headers, secret=None, timeout=None):
        """Send one POST and return an :class:`Attempt`, which also carries HTTP and network errors.

        ``timeout`` bounds the whole request in seconds (default: the global timeout option).
        """
        target = self.target(base_url)
        url = target.display_url + path
        request_headers = target.headers.copy()
        request_headers.update(headers)
        if secret is not None:
            timestamp = int(time.time())
            request_headers["X-Curler-Timestamp"] = str(timestamp)
            request_headers["X-Curler-Signature"] = sign(secret, timestamp, body)
        if self.verbose:
            log_request(url, request_headers, body)
        send = self.exchange if target.direct else self.send
        attempt = send(target, url, target.prefix + path, body, request_headers, timeout or self.settings.timeout)
        if self.verbose:
            log_attempt(attempt)
        return attempt

    def exchange(self, target, url, request_target, body, headers, timeout):
        """Send one request on a pooled connection and read the response with :mod:`http1`."""
        pool = target.pool
        # NOTE: _get_conn and _put_conn are urllib3's private pool API, stable from
        # urllib3 1.x to 2.x; the tests run the direct path against http and https.
        conn = pool._get_conn()
        self.arm(timeout)
        try:
            sock = self.open(conn, timeout)
            sock.sendall(request_head(request_target, headers, len(body)) + body)
            response = http1.read_response(sock, self.max_response_bytes)
            self.disarm()
        except BaseException as error:
            self.disarm()
            conn.close()
            return self.failed_attempt(url, error, timeout)
        finally:
            pool._put_conn(conn)
        if not response.reusable:
            conn.close()
        headers = response.headers
        status = response.status
        return Attempt(url, status=status, body=response.body, truncated=response.truncated, headers=headers,
                       location=headers.get("location") if 300 <= status < 400 else None,
                       retry_after=headers.get("retry-after"))

    def arm(self, timeout):
        """Start the deadline of one request: SIGALRM raises RequestTimeout when it passes."""
        self.in_request = True
        signal.setitimer(signal.ITIMER_REAL, timeout)

    def disarm(self):
        self.in_request = False
        signal.setitimer(signal.ITIMER_REAL, 0)

    def open(self, conn, timeout):
        """Return the connection's socket, connecting first when it is new.

        The pool's ``_get_conn`` already closed a kept-alive connection that the server dropped.
        """
        if conn.sock is None:
            conn.timeout = min(self.settings.connect_timeout, timeout)
            conn.connect()
            # The SIGALRM deadline bounds every request, so the socket blocks
            # without a per-call poll.
            conn.sock.settimeout(None)
        return conn.sock

    def failed_attempt(self, url, error, timeout):
        """Return the Attempt for an exception raised while sending or reading; re-raise others."""
        if isinstance(error, (RequestTimeout, TimeoutError, urllib3.exceptions.ReadTimeoutError)):
            return Attempt(url, error=f"timed out after {timeout:g} s")
        # urllib3 2 derives NewConnectionError from ConnectTimeoutError, so it is checked first.
        if isinstance(error, urllib3.exceptions.NewConnectionError):
            return Attempt(url, error=f"connection failed: {reason_text(error)}", connection_error=True)
        if isinstance(error, urllib3.exceptions.ConnectTimeoutError):
            return Attempt(url, error=f"connect timed out after {self.settings.connect_timeout:g} s",
                           connection_error=True)
        if isinstance(error, (http1.ProtocolError, ConnectionError)):
            return Attempt(url, error=f"request failed: {reason_text(error)}", connection_error=True)
        if isinstance(error, (urllib3.exceptions.HTTPError, OSError)):
            return Attempt(url, error=f"request failed: {reason_text(error)}")
        raise error

    def send(self, target, url, request_target, body, headers, timeout):
        """Send one request through urllib3's urlopen, as the proxy path does."""
        response = None
        self.arm(timeout)
        try:
            response = target.pool.urlopen(
                "POST", request_target, body=body, headers=headers, retries=False, redirect=False,
                assert_same_host=False, timeout=self.timeout_for(timeout), preload_content=False,
                decode_content=False)
            attempt = self.read(url, response)
            self.disarm()
            return attempt
        except (RequestTimeout, urllib3.exceptions.HTTPError, OSError) as error:
            self.disarm()
            return self.failed_attempt(url, error, timeout)
        finally:
            self.disarm()
            if response is not None:
                response.release_conn()

    def read(self, url, response):
        limit = self.max_response_bytes
        body = response.read(limit + 1)
        truncated = len(body) > limit
        if truncated:
            body = body[:limit]
            # Closing drops the connection instead of reading the rest of a large body.
            response.close()
        status = response.status
        headers = response.headers
        return Attempt(url, status=status, body=body, truncated=truncated, headers=headers,
                       location=headers.get("Location") if 300 <= status < 400 else None,
                       retry_after=headers.get("Retry-After"))

    def close(self):
        self.session.close()


def make_session(settings):
    session = requests.Session()
    session.trust_env = settings.trust_env
    session.headers = requests.structures.CaseInsensitiveDict({
        "User-Agent": USER_AGENT,
        "Accept": "*/*",
        # Identity keeps max-response-bytes a bound on memory as well as on bytes read.
        "Accept-Encoding": "identity",
        "Connection": "keep-alive",
    })
    pools = max(10, len(settings.curl_paths) + sum(len(q.curl_paths) for q in settings.queues.values()))
    adapter = HTTPAdapter(pool_connections=pools, pool_maxsize=1, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def request_head(request_target, headers, content_length):
    """Return the request line and headers of a POST as bytes, ending with the blank line."""
    lines = [f"POST {request_target} HTTP/1.1"]
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    lines.append(f"Content-Length: {content_length}\r\n\r\n")
    return "\r\n".join(lines).encode("latin-1")


def reason_text(error):
    reason = getattr(error, "reason", None) or error
    text = str(reason)
    # urllib3 prefixes messages with the object's repr; keep the part after it.
    if ">: " in text:
        text = text.split(">: ", 1)[1]
    return text


def redact(headers):
    return {k: ("[redacted]" if k.lower() in REDACTED_HEADERS else v) for k, v in headers.items()}


def truncate(body):
    text = body[:VERBOSE_BODY_LIMIT].decode("utf-8", "replace")
    if len(body) > VERBOSE_BODY_LIMIT:
        text += f"... ({len(body)} bytes)"
    return text


def log_request(url, headers, body):
    log.info("request: POST %s headers=%s body=%r", url, redact(headers), truncate(body))


def log_attempt(attempt):
    if attempt.status is None:
        log.info("response: %s error=%s", attempt.url, attempt.error)
    else:
        log.info("response: %s status=%s headers=%s body=%r", attempt.url, attempt.status,
                 redact(attempt.headers or {}), truncate(attempt.body))


def pick_base_url(urls, avoid=None):
    """Choose a base URL at random, avoiding ``avoid`` when another one exists."""
    if len(urls) == 1:
        return urls[0]
    choices = [url for url in urls if url != avoid] if avoid else urls
    return random.choice(choices)


def host_of(url):
    return urllib.parse.urlsplit(url).netloc
