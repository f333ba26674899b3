"""A lean HTTP/1.1 exchange on a connection that urllib3 opened.

urllib3 (through the requests session) still owns connecting, TLS verification
and connection pooling. Once a connection is open, sending the request head and
body in one write and reading the response with this small parser costs a
fraction of http.client's per-call work (header validation, the email-package
header parser, response objects).

The parser handles what a job endpoint can send back: interim 1xx responses,
bodies framed by Content-Length, chunked transfer coding or the end of the
connection, and ``Connection: close``. Bodies past ``limit`` bytes are not
read; the connection is then closed instead of reused.
"""

RECV_SIZE = 65536
MAX_HEAD_BYTES = 65536
NO_BODY_STATUSES = frozenset({204, 304})


class ProtocolError(Exception):
    """The peer sent something that is not a valid HTTP/1.x response, or closed too early."""


class Response:
    """A parsed response: status, headers (lower-case names), body, and whether the connection is reusable."""

    __slots__ = ("status", "headers", "body", "truncated", "reusable")

    def __init__(self, status, headers, body, truncated, reusable):
        self.status = status
        self.headers = headers
        self.body = body
        self.truncated = truncated
        self.reusable = reusable


class Reader:
    """Buffered reads from one socket."""

    __slots__ = ("sock", "buffer")

    def __init__(self, sock, buffer=b""):
        self.sock = sock
        self.buffer = bytearray(buffer)

    def fill(self):
        chunk = self.sock.recv(RECV_SIZE)
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def read_until(self, marker, limit):
        """Return the bytes before ``marker`` and consume both; raise ProtocolError past ``limit``."""
        start = 0
        while True:
            index = self.buffer.find(marker, start)
            if index >= 0:
                data = bytes(self.buffer[:index])
                del self.buffer[:index + len(marker)]
                return data
            if len(self.buffer) > limit:
                raise ProtocolError(f"no {marker!r} within {limit} bytes")
            start = max(0, len(self.buffer) - len(marker) + 1)
            if not self.fill():
                raise ProtocolError("connection closed in the middle of the response")

    def read_exactly(self, size):
        while len(self.buffer) < size:
            if not self.fill():
                raise ProtocolError("connection closed in the middle of the response body")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def read_to_end(self, limit):
        """Read until the peer closes, or until more than ``limit`` bytes; return (data, complete)."""
        while len(self.buffer) <= limit:
            if not self.fill():
                data = bytes(self.buffer)
                self.buffer.clear()
                return data, True
        data = bytes(self.buffer[:limit])
        self.buffer.clear()
        return data, False


def read_response(sock, limit):
    """Read one response from ``sock``, keeping at most ``limit`` body bytes."""
    reader = Reader(sock)
    while True:
        version, status, headers = read_head(reader)
        if status >= 200 or status == 101:
            break
        # An interim response (100 Continue, 103 Early Hints) precedes the real one.
    keep_alive = wants_keep_alive(version, headers)
    if status in NO_BODY_STATUSES or status < 200:
        return Response(status, headers, b"", False, keep_alive and not reader.buffer)

    if "chunked" in headers.get("transfer-encoding", "").lower():
        body, complete = read_chunked(reader, limit)
    elif "content-length" in headers:
        body, complete = read_sized(reader, headers["content-length"], limit)
    else:
        body, complete = reader.read_to_end(limit)
        keep_alive = False
    reusable = keep_alive and complete and not reader.buffer
    return Response(status, headers, body, not complete, reusable)


def read_head(reader):
    head = reader.read_until(b"\r\n\r\n", MAX_HEAD_BYTES).decode("iso-8859-1")
    status_line, _, header_block = head.partition("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ProtocolError(f"invalid status line {status_line[:80]!r}")
    headers = {}
    for line in header_block.split("\r\n"):
        name, sep, value = line.partition(":")
        if not sep:
            continue
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return version, int(code), headers


def wants_keep_alive(version, headers):
    connection = headers.get("connection", "").lower()
    if version == "HTTP/1.0":
        return "keep-alive" in connection
    return "close" not in connection


def read_sized(reader, length_text, limit):
    try:
        length = int(length_text.split(",")[0])
    except ValueError:
        raise ProtocolError(f"invalid Content-Length {length_text!r}") from None
    if length <= limit:
        return reader.read_exactly(length), True
    return reader.read_exactly(limit), False


def read_chunked(reader, limit):
    parts = []
    size_read = 0
    while True:
        size_line = reader.read_until(b"\r\n", MAX_HEAD_BYTES)
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError:
            raise ProtocolError(f"invalid chunk size {size_line[:40]!r}") from None
        if size == 0:
            skip_trailers(reader)
            return b"".join(parts), True
        if size_read + size > limit:
            parts.append(reader.read_exactly(limit - size_read))
            return b"".join(parts), False
        parts.append(reader.read_exactly(size))
        reader.read_exactly(2)
        size_read += size


def skip_trailers(reader):
    """Consume the trailer lines after the last chunk, up to the empty line that ends them."""
    while reader.read_until(b"\r\n", MAX_HEAD_BYTES):
        pass
