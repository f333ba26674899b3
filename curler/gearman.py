"""The Gearman protocol: binary worker and client sides, and the text admin protocol.

Packet layout and types follow the PROTOCOL document of gearmand: a 12-byte
header (magic ``\\0REQ`` or ``\\0RES``, big-endian type, big-endian size) and
arguments separated by NUL bytes, the last one running to the end of the packet.
Sockets wait with poll (through :mod:`selectors` or a socket timeout), never with
``select()``, so file descriptors above 1024 work.
"""

import enum
import logging
import os
import random
import selectors
import socket
import struct
import time

log = logging.getLogger("curler.gearman")

REQ = b"\0REQ"
RES = b"\0RES"
HEADER = struct.Struct(">4sII")
HEADER_SIZE = HEADER.size
# The largest packet size a peer may announce. A corrupt header then raises a
# protocol error instead of making the worker buffer up to 4 GiB.
MAX_PACKET_SIZE = 1 << 30
RECV_SIZE = 1 << 16

DEFAULT_PORT = 4730
CONNECT_TIMEOUT = 3.0
IO_TIMEOUT = 10.0
RECONNECT_MIN_DELAY = 1.0
RECONNECT_MAX_DELAY = 30.0


class Packet(enum.IntEnum):
    CAN_DO = 1
    CANT_DO = 2
    RESET_ABILITIES = 3
    PRE_SLEEP = 4
    NOOP = 6
    SUBMIT_JOB = 7
    JOB_CREATED = 8
    GRAB_JOB = 9
    NO_JOB = 10
    JOB_ASSIGN = 11
    WORK_STATUS = 12
    WORK_COMPLETE = 13
    WORK_FAIL = 14
    GET_STATUS = 15
    ECHO_REQ = 16
    ECHO_RES = 17
    SUBMIT_JOB_BG = 18
    ERROR = 19
    STATUS_RES = 20
    SUBMIT_JOB_HIGH = 21
    SET_CLIENT_ID = 22
    CAN_DO_TIMEOUT = 23
    WORK_EXCEPTION = 25
    OPTION_REQ = 26
    OPTION_RES = 27
    WORK_DATA = 28
    WORK_WARNING = 29
    GRAB_JOB_UNIQ = 30
    JOB_ASSIGN_UNIQ = 31
    SUBMIT_JOB_HIGH_BG = 32
    SUBMIT_JOB_LOW = 33
    SUBMIT_JOB_LOW_BG = 34


# (priority, background) -> submission packet type
SUBMIT_TYPES = {
    ("normal", False): Packet.SUBMIT_JOB,
    ("normal", True): Packet.SUBMIT_JOB_BG,
    ("high", False): Packet.SUBMIT_JOB_HIGH,
    ("high", True): Packet.SUBMIT_JOB_HIGH_BG,
    ("low", False): Packet.SUBMIT_JOB_LOW,
    ("low", True): Packet.SUBMIT_JOB_LOW_BG,
}
PRIORITIES = ("high", "normal", "low")


class GearmanError(Exception):
    """A job server could not be reached or broke the protocol."""


class ConnectionLost(GearmanError):
    """The connection to a job server closed or timed out."""


class ServerError(GearmanError):
    """The job server sent an ERROR packet."""


def pack(packet_type, *args, magic=REQ):
    """Encode one packet; ``args`` are bytes joined with NUL separators."""
    data = b"\0".join(args)
    return HEADER.pack(magic, packet_type, len(data)) + data


def parse_server(text, default_port=DEFAULT_PORT):
    """Split ``host:port`` (``[v6]:port`` for IPv6) into a tuple; raise ValueError."""
    text = text.strip()
    if not text:
        raise ValueError("empty job server address")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"invalid job server address {text!r}")
        port_text = rest[1:]
    elif text.count(":") > 1:
        raise ValueError(f"IPv6 job server address {text!r} needs brackets: [addr]:port")
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"job server address {text!r} has no host")
    if not port_text:
        if text.endswith(":"):
            raise ValueError(f"job server address {text!r} has an empty port: give host:port or just host")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"job server port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def format_server(address):
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def enable_keepalive(sock):
    """Turn on TCP keepalive so a job server that vanished is noticed within minutes."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


class Job:
    """A job assigned to this worker by JOB_ASSIGN_UNIQ."""

    __slots__ = ("handle", "function", "unique", "workload", "connection")

    def __init__(self, handle, function, unique, workload, connection):
        self.handle = handle
        self.function = function
        self.unique = unique
        self.workload = workload
        self.connection = connection


class Connection:
    """One TCP connection to one job server, with an input buffer and pending output."""

    def __init__(self, address, connect_timeout=CONNECT_TIMEOUT, io_timeout=IO_TIMEOUT):
        self.address = address
        self.name = format_server(address)
        self.connect_timeout = connect_timeout
        self.io_timeout = io_timeout
        self.sock = None
        self.buffer = bytearray()
        self.pending = []

    def connect(self):
        sock = socket.create_connection(self.address, timeout=self.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        enable_keepalive(sock)
        sock.settimeout(self.io_timeout)
        self.sock = sock
        self.buffer.clear()
        self.pending.clear()

    @property
    def connected(self):
        return self.sock is not None

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None
        self.buffer.clear()
        self.pending.clear()

    def fileno(self):
        return self.sock.fileno()

    def queue(self, data):
        """Hold ``data`` until the next :meth:`send` so several packets go out in one write."""
        self.pending.append(data)

    def send(self, data=b""):
        """Write pending packets and ``data``; raise ConnectionLost on failure."""
        if self.pending:
            self.pending.append(data)
            data = b"".join(self.pending)
            self.pending.clear()
        try:
            self.sock.sendall(data)
        except OSError as error:
            self.close()
            raise ConnectionLost(f"job server {self.name}: send failed: {error}") from error

    def flush(self):
        if self.pending and self.sock is not None:
            self.send()

    def fill(self):
        """Read what the socket has (waiting up to the I/O timeout); raise ConnectionLost."""
        try:
            chunk = self.sock.recv(RECV_SIZE)
        except socket.timeout as error:
            self.close()
            raise ConnectionLost(f"job server {self.name}: no reply within {self.io_timeout} s") from error
        except OSError as error:
            self.close()
            raise ConnectionLost(f"job server {self.name}: receive failed: {error}") from error
        if not chunk:
            self.close()
            raise ConnectionLost(f"job server {self.name} closed the connection")
        self.buffer += chunk

    def next_packet(self):
        """Return ``(type, data)`` from the buffer, or None if no whole packet is buffered."""
        buffer = self.buffer
        if len(buffer) < HEADER_SIZE:
            return None
        magic, packet_type, size = HEADER.unpack_from(buffer)
        if magic != RES:
            self.close()
            raise GearmanError(f"job server {self.name}: invalid magic {bytes(magic)!r} (not a Gearman job server?)")
        if size > MAX_PACKET_SIZE:
            self.close()
            raise GearmanError(f"job server {self.name}: packet of {size} bytes is over the {MAX_PACKET_SIZE} limit")
        end = HEADER_SIZE + size
        if len(buffer) < end:
            return None
        data = bytes(buffer[HEADER_SIZE:end])
        del buffer[:end]
        return packet_type, data

    def read_packet(self):
        """Block (up to the I/O timeout per read) until one whole packet arrives."""
        while True:
            packet = self.next_packet()
            if packet is not None:
                return packet
            self.fill()

    def request(self, packet_type, *args):
        """Send one request and return the first reply that is not NOOP."""
        self.send(pack(packet_type, *args))
        while True:
            reply_type, data = self.read_packet()
            if reply_type == Packet.ERROR:
                raise ServerError(f"job server {self.name}: {format_error(data)}")
            if reply_type != Packet.NOOP:
                return reply_type, data


def format_error(data):
    code, _, text = data.partition(b"\0")
    return f"{code.decode('utf-8', 'replace')}: {text.decode('utf-8', 'replace')}"


class WorkerConnection(Connection):
    """A worker's connection: its sleep state and its reconnect schedule."""

    def __init__(self, address, **timeouts):
        super().__init__(address, **timeouts)
        self.awake = False
        self.registered_fd = None
        self.retry_at = 0.0
        self.retry_delay = RECONNECT_MIN_DELAY
        self.failing = False


class Worker:
    """A blocking Gearman worker on several job servers at once.

    :meth:`grab_job` returns one job at a time. The outcome is sent with
    :meth:`complete`, :meth:`fail` or :meth:`exception`; it is queued and goes out
    in the same write as the next GRAB_JOB_UNIQ on that connection, or on
    :meth:`flush`. :meth:`release` closes the job's connection without an outcome,
    so gearmand hands the job to another worker.
    """

    def __init__(self, servers, functions, client_id, wakeup_fd=None,
                 connect_timeout=CONNECT_TIMEOUT, io_timeout=IO_TIMEOUT, on_sleep=None):
        self.functions = [f.encode() if isinstance(f, str) else f for f in functions]
        self.client_id = client_id.encode() if isinstance(client_id, str) else client_id
        self.connections = [WorkerConnection(address, connect_timeout=connect_timeout, io_timeout=io_timeout)
                            for address in servers]
        self.wakeup_fd = wakeup_fd
        # Called before the worker waits for a NOOP, so the caller can show it is idle.
        self.on_sleep = on_sleep
        self.selector = selectors.DefaultSelector()
        if wakeup_fd is not None:
            self.selector.register(wakeup_fd, selectors.EVENT_READ, None)
        self.next_index = 0
        self.registration = b"".join(
            [pack(Packet.SET_CLIENT_ID, self.client_id)] + [pack(Packet.CAN_DO, f) for f in self.functions])
        self.grab_packet = pack(Packet.GRAB_JOB_UNIQ)
        self.sleep_packet = pack(Packet.PRE_SLEEP)

    # -- connections ------------------------------------------------------

    def connect_due(self, now):
        """Connect every connection whose reconnect time has come; register its functions."""
        for connection in self.connections:
            if connection.connected or now < connection.retry_at:
                continue
            try:
                connection.connect()
                connection.send(self.registration)
            except (OSError, GearmanError) as error:
                self.schedule_reconnect(connection, error, now)
                continue
            connection.registered_fd = connection.fileno()
            self.selector.register(connection.registered_fd, selectors.EVENT_READ, connection)
            connection.awake = True
            if connection.failing:
                log.info("reconnected to job server %s", connection.name)
            else:
                log.debug("connected to job server %s", connection.name)
            connection.failing = False
            connection.retry_delay = RECONNECT_MIN_DELAY

    def schedule_reconnect(self, connection, error, now=None):
        now = time.monotonic() if now is None else now
        self.drop(connection)
        if not connection.failing:
            log.warning("job server %s unavailable (%s); retrying with backoff up to %.0f s",
                        connection.name, error, RECONNECT_MAX_DELAY)
        else:
            log.debug("job server %s still unavailable (%s); next try in %.1f s",
                      connection.name, error, connection.retry_delay)
        connection.failing = True
        connection.retry_at = now + connection.retry_delay * random.uniform(0.8, 1.0)
        connection.retry_delay = min(connection.retry_delay * 2, RECONNECT_MAX_DELAY)

    def drop(self, connection):
        """Close ``connection`` and forget its socket in the selector."""
        if connection.registered_fd is not None:
            try:
                self.selector.unregister(connection.registered_fd)
            except (KeyError, ValueError):
                pass
            connection.registered_fd = None
        connection.close()
        connection.awake = False

    def lost(self, connection, error):
        """Handle a connection that failed during I/O: close it and schedule a reconnect."""
        self.drop(connection)
        connection.retry_delay = RECONNECT_MIN_DELAY
        self.schedule_reconnect(connection, error)

    def close(self):
        """Send queued outcomes, then close every connection."""
        for connection in self.connections:
            if connection.connected:
                try:
                    connection.flush()
                except GearmanError as error:
                    log.warning("job server %s: could not send queued job outcome: %s", connection.name, error)
            self.drop(connection)
        self.selector.close()

    # -- the job loop -----------------------------------------------------

    def grab_job(self, timeout):
        """Return the next job, or None when ``timeout`` seconds pass or the wakeup fd fires."""
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            self.connect_due(now)
            if self.has_sleeper():
                self.poll_wakeups(0)
            job = self.grab_from_awake()
            if job is not None:
                return job
            if self.sleep_until(deadline):
                return None
            if time.monotonic() >= deadline:
                return None

    def has_sleeper(self):
        """True when a connection sleeps while another is awake, so its NOOP may be waiting unread."""
        return len(self.connections) > 1 and any(c.connected and not c.awake for c in self.connections)

    def grab_from_awake(self):
        """Ask each awake connection for a job, starting after the last one that had work."""
        connections = self.connections
        count = len(connections)
        for offset in range(count):
            index = (self.next_index + offset) % count
            connection = connections[index]
            if not connection.awake:
                continue
            try:
                job = self.grab(connection)
            except GearmanError as error:
                self.lost(connection, error)
                continue
            if job is not None:
                self.next_index = (index + 1) % count if count > 1 else 0
                return job
        return None

    def grab(self, connection):
        connection.send(self.grab_packet)
        while True:
            packet_type, data = connection.read_packet()
            if packet_type == Packet.JOB_ASSIGN_UNIQ:
                handle, function, unique, workload = data.split(b"\0", 3)
                return Job(handle, function, unique, workload, connection)
            if packet_type == Packet.NO_JOB:
                connection.awake = False
                connection.send(self.sleep_packet)
                return None
            if packet_type == Packet.NOOP:
                continue
            if packet_type == Packet.ERROR:
                raise ServerError(f"job server {connection.name}: {format_error(data)}")
            raise GearmanError(f"job server {connection.name}: unexpected {packet_name(packet_type)} after GRAB_JOB_UNIQ")

    def sleep_until(self, deadline):
        """Wait for a NOOP, the wakeup fd, a reconnect time or the deadline; True if woken by the fd."""
        for connection in self.connections:
            if connection.pending and connection.connected:
                try:
                    connection.flush()
                except GearmanError as error:
                    self.lost(connection, error)
        wait_until = deadline
        for connection in self.connections:
            if not connection.connected:
                wait_until = min(wait_until, connection.retry_at)
        if self.on_sleep is not None:
            self.on_sleep()
        return self.poll_wakeups(max(0.0, wait_until - time.monotonic()))

    def poll_wakeups(self, timeout):
        """Read NOOPs that arrived within ``timeout`` seconds; True if the wakeup fd fired."""
        woken = False
        for key, _ in self.selector.select(timeout):
            connection = key.data
            if connection is None:
                drain_fd(self.wakeup_fd)
                woken = True
            else:
                self.read_wakeups(connection)
        return woken

    def read_wakeups(self, connection):
        try:
            connection.fill()
            while True:
                packet = connection.next_packet()
                if packet is None:
                    return
                packet_type, data = packet
                if packet_type == Packet.NOOP:
                    connection.awake = True
                elif packet_type == Packet.ERROR:
                    log.warning("job server %s: %s", connection.name, format_error(data))
                else:
                    log.debug("job server %s: ignored %s while asleep", connection.name, packet_name(packet_type))
        except GearmanError as error:
            self.lost(connection, error)

    # -- outcomes -----------------------------------------------------------

    def complete(self, job, result=b""):
        self.report(job, pack(Packet.WORK_COMPLETE, job.handle, result))

    def fail(self, job):
        self.report(job, pack(Packet.WORK_FAIL, job.handle))

    def exception(self, job, data=b""):
        self.report(job, pack(Packet.WORK_EXCEPTION, job.handle, data))

    def report(self, job, packet):
        connection = job.connection
        if not connection.connected:
            raise ConnectionLost(f"job server {connection.name}: connection lost while the job was running")
        connection.queue(packet)

    def flush(self, job):
        """Send the queued outcome of ``job`` now instead of with the next grab."""
        try:
            job.connection.flush()
        except GearmanError as error:
            self.lost(job.connection, error)
            raise

    def release(self, job):
        """Give ``job`` back: close its connection, which makes gearmand hand it out again.

        The connection is opened again on the next :meth:`grab_job`.
        """
        self.drop(job.connection)
        job.connection.retry_at = 0.0

    def echo(self, data=b"ping"):
        """Send ECHO_REQ on every connected connection and check the replies; used by tests."""
        for connection in self.connections:
            if connection.connected:
                reply_type, reply = connection.request(Packet.ECHO_REQ, data)
                if reply_type != Packet.ECHO_RES or reply != data:
                    raise GearmanError(f"job server {connection.name}: bad ECHO_RES")

    @property
    def connected_count(self):
        return sum(1 for connection in self.connections if connection.connected)


def drain_fd(fd):
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def packet_name(packet_type):
    try:
        return Packet(packet_type).name
    except ValueError:
        return f"packet type {packet_type}"


class Client:
    """A Gearman client that submits jobs, trying each job server in turn."""

    def __init__(self, servers, connect_timeout=CONNECT_TIMEOUT, io_timeout=IO_TIMEOUT):
        self.connections = [Connection(address, connect_timeout=connect_timeout, io_timeout=io_timeout)
                            for address in servers]

    def close(self):
        for connection in self.connections:
            connection.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def submit_background(self, function, workload, unique=b"", priority="normal"):
        """Queue a background job; return ``(job handle, job server name)``."""
        packet_type = SUBMIT_TYPES[(priority, True)]
        return self.on_any_server(lambda c: (self.submit(c, packet_type, function, workload, unique), c.name))

    def submit_foreground(self, function, workload, unique=b"", priority="normal", timeout=None):
        """Run a job and wait for it; return ``(status, data)``.

        ``status`` is ``"complete"``, ``"fail"`` or ``"exception"``; WORK_DATA
        packets are joined in front of the WORK_COMPLETE data.
        """
        packet_type = SUBMIT_TYPES[(priority, False)]
        # Only the submission moves on to the next job server; once a server
        # created the job, waiting on another one would run the job twice.
        connection, handle = self.on_any_server(
            lambda c: (c, self.submit(c, packet_type, function, workload, unique)))
        try:
            return self.wait_for_result(connection, handle, timeout)
        except (OSError, GearmanError):
            connection.close()
            raise

    def on_any_server(self, action):
        errors = []
        for connection in self.connections:
            try:
                if not connection.connected:
                    connection.connect()
                return action(connection)
            except (OSError, GearmanError) as error:
                connection.close()
                text = str(error)
                errors.append(text if connection.name in text else f"{connection.name}: {text}")
        raise GearmanError("no job server accepted the request (" + "; ".join(errors) + ")")

    @staticmethod
    def submit(connection, packet_type, function, workload, unique):
        function = function.encode() if isinstance(function, str) else function
        unique = unique.encode() if isinstance(unique, str) else unique
        reply_type, data = connection.request(packet_type, function, unique, workload)
        if reply_type != Packet.JOB_CREATED:
            raise GearmanError(f"job server {connection.name}: expected JOB_CREATED, got {packet_name(reply_type)}")
        return data

    @staticmethod
    def wait_for_result(connection, handle, timeout):
        deadline = None if timeout is None else time.monotonic() + timeout
        chunks = []
        while True:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ConnectionLost(f"job {handle.decode()} did not finish within {timeout} s")
                connection.sock.settimeout(remaining)
            else:
                connection.sock.settimeout(None)
            try:
                packet_type, data = connection.read_packet()
            except ConnectionLost:
                if deadline is not None and time.monotonic() >= deadline:
                    raise ConnectionLost(f"job {handle.decode()} did not finish within {timeout} s") from None
                raise
            job_handle, _, rest = data.partition(b"\0")
            if packet_type in (Packet.NOOP, Packet.WORK_STATUS, Packet.WORK_WARNING) or job_handle != handle:
                continue
            if packet_type == Packet.WORK_DATA:
                chunks.append(rest)
            elif packet_type == Packet.WORK_COMPLETE:
                connection.sock.settimeout(connection.io_timeout)
                return "complete", b"".join(chunks) + rest
            elif packet_type == Packet.WORK_FAIL:
                connection.sock.settimeout(connection.io_timeout)
                return "fail", b""
            elif packet_type == Packet.WORK_EXCEPTION:
                connection.sock.settimeout(connection.io_timeout)
                return "exception", rest
            elif packet_type == Packet.ERROR:
                raise ServerError(f"job server {connection.name}: {format_error(data)}")


MULTILINE_ADMIN_COMMANDS = ("status", "workers", "prioritystatus")


def admin_command(address, command, timeout=IO_TIMEOUT):
    """Run one text admin command and return its reply lines.

    ``status``, ``workers`` and ``prioritystatus`` reply with lines ending in a
    lone ``.``; the other commands (``maxqueue``, ``version``) with one line.
    """
    multiline = command.split()[0] in MULTILINE_ADMIN_COMMANDS
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(command.encode() + b"\n")
        data = b""
        while not admin_reply_complete(data, multiline):
            chunk = sock.recv(RECV_SIZE)
            if not chunk:
                raise ConnectionLost(f"job server {format_server(address)} closed the admin connection")
            data += chunk
    if data.startswith(b"ERR "):
        raise ServerError(f"job server {format_server(address)}: {data.decode('utf-8', 'replace').strip()}")
    lines = data.decode("utf-8", "replace").replace("\r", "").split("\n")
    return lines[:lines.index(".")] if multiline else lines[:1]


def admin_reply_complete(data, multiline):
    if data.startswith(b"ERR ") or not multiline:
        return data.endswith(b"\n")
    return data == b".\n" or data.endswith(b"\n.\n")


def server_status(address, timeout=IO_TIMEOUT):
    """Return ``{function: (queued, running, workers)}`` from the admin ``status`` command."""
    status = {}
    for line in admin_command(address, "status", timeout):
        parts = line.split("\t")
        if len(parts) == 4:
            status[parts[0]] = tuple(int(p) for p in parts[1:])
    return status


def server_workers(address, timeout=IO_TIMEOUT):
    """Return ``[(fd, ip, client_id, [functions])]`` from the admin ``workers`` command."""
    workers = []
    for line in admin_command(address, "workers", timeout):
        head, _, functions = line.partition(" :")
        fields = head.split()
        if len(fields) >= 3:
            workers.append((fields[0], fields[1], fields[2], functions.split()))
    return workers
