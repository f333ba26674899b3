"""The Gearman protocol module: framing and parsing, then the worker and client against a real gearmand."""

import os
import socket
import struct
import threading

import pytest

from curler import gearman, testing


class FakeSocket:
    """A socket that hands out queued bytes a few at a time, to exercise partial reads."""

    def __init__(self, data, chunk):
        self.data = data
        self.chunk = chunk

    def close(self):
        pass

    def recv(self, size):
        piece, self.data = self.data[:min(size, self.chunk)], self.data[min(size, self.chunk):]
        return piece


def connection_with(data, chunk):
    connection = gearman.Connection(("127.0.0.1", 1))
    connection.sock = FakeSocket(data, chunk)
    return connection


def test_pack_matches_protocol_example():
    packet = gearman.pack(gearman.Packet.CAN_DO, b"reverse")
    assert packet == bytes.fromhex("00524551 00000001 00000007") + b"reverse"


def test_pack_joins_arguments_with_nul():
    packet = gearman.pack(gearman.Packet.SUBMIT_JOB, b"reverse", b"", b"test")
    assert packet[:12] == bytes.fromhex("00524551 00000007 0000000d")
    assert packet[12:] == b"reverse\0\0test"


@pytest.mark.parametrize("chunk", [1, 5, 12, 13, 1000])
def test_read_packet_across_partial_reads(chunk):
    assign = gearman.pack(gearman.Packet.JOB_ASSIGN_UNIQ, b"H:lap:1", b"reverse", b"u-1", b"te\0st",
                          magic=gearman.RES)
    noop = gearman.pack(gearman.Packet.NOOP, magic=gearman.RES)
    connection = connection_with(assign + noop, chunk)
    packet_type, data = connection.read_packet()
    assert packet_type == gearman.Packet.JOB_ASSIGN_UNIQ
    assert data.split(b"\0", 3) == [b"H:lap:1", b"reverse", b"u-1", b"te\0st"]
    assert connection.read_packet() == (gearman.Packet.NOOP, b"")


def test_read_packet_rejects_bad_magic():
    connection = connection_with(b"HTTP/1.1 400 Bad Request\r\n\r\n", 100)
    with pytest.raises(gearman.GearmanError, match="invalid magic"):
        connection.read_packet()


def test_read_packet_rejects_oversized_packet():
    header = struct.pack(">4sII", gearman.RES, gearman.Packet.NOOP, gearman.MAX_PACKET_SIZE + 1)
    connection = connection_with(header, 100)
    with pytest.raises(gearman.GearmanError, match="over the"):
        connection.read_packet()


def test_read_packet_reports_closed_connection():
    connection = connection_with(b"\0RES", 100)
    with pytest.raises(gearman.ConnectionLost, match="closed"):
        connection.read_packet()


@pytest.mark.parametrize("text, address", [
    ("localhost", ("localhost", 4730)),
    ("localhost:4731", ("localhost", 4731)),
    ("127.0.0.1:1", ("127.0.0.1", 1)),
    ("[::1]:4730", ("::1", 4730)),
    ("[::1]", ("::1", 4730)),
])
def test_parse_server_accepts(text, address):
    assert gearman.parse_server(text) == address


@pytest.mark.parametrize("text", ["", "localhost:", "localhost:abc", "localhost:0", "localhost:70000", "::1:4730", ":4730", "[::1"])
def test_parse_server_rejects(text):
    with pytest.raises(ValueError):
        gearman.parse_server(text)


def address_of(server):
    return gearman.parse_server(server.address)


def test_background_job_reaches_worker(gearmand):
    address = address_of(gearmand)
    with gearman.Client([address]) as client:
        handle, _ = client.submit_background("reverse", b"payload", unique=b"u-1")
    worker = gearman.Worker([address], ["reverse"], "test-worker")
    try:
        job = worker.grab_job(5)
        assert job is not None
        assert job.handle == handle
        assert job.function == b"reverse"
        assert job.unique == b"u-1"
        assert job.workload == b"payload"
        worker.complete(job, b"done")
        worker.flush(job)
    finally:
        worker.close()


def test_foreground_job_returns_result(gearmand):
    address = address_of(gearmand)
    worker = gearman.Worker([address], ["reverse"], "test-worker")
    results = []

    def run_client():
        with gearman.Client([address]) as client:
            results.append(client.submit_foreground("reverse", b"abc", timeout=10))

    thread = threading.Thread(target=run_client)
    thread.start()
    try:
        job = worker.grab_job(5)
        worker.complete(job, job.workload[::-1])
        worker.flush(job)
        thread.join(10)
    finally:
        worker.close()
    assert results == [("complete", b"cba")]


@pytest.mark.parametrize("outcome, expected", [("fail", ("fail", b"")), ("exception", ("exception", b"boom"))])
def test_foreground_job_reports_failure(gearmand, outcome, expected):
    address = address_of(gearmand)
    worker = gearman.Worker([address], ["reverse"], "test-worker")
    results = []

    def run_client():
        with gearman.Client([address]) as client:
            client.connections[0].connect()
            client.connections[0].request(gearman.Packet.OPTION_REQ, b"exceptions")
            results.append(client.submit_foreground("reverse", b"abc", timeout=10))

    thread = threading.Thread(target=run_client)
    thread.start()
    try:
        job = worker.grab_job(5)
        if outcome == "fail":
            worker.fail(job)
        else:
            worker.exception(job, b"boom")
        worker.flush(job)
        thread.join(10)
    finally:
        worker.close()
    assert results == [expected]


def test_priorities_order_jobs(gearmand):
    address = address_of(gearmand)
    with gearman.Client([address]) as client:
        client.submit_background("q", b"low", priority="low")
        client.submit_background("q", b"normal", priority="normal")
        client.submit_background("q", b"high", priority="high")
    worker = gearman.Worker([address], ["q"], "test-worker")
    order = []
    try:
        for _ in range(3):
            job = worker.grab_job(5)
            order.append(job.workload)
            worker.complete(job)
        worker.flush(job)
    finally:
        worker.close()
    assert order == [b"high", b"normal", b"low"]


def test_ten_megabyte_payload_round_trip(gearmand):
    address = address_of(gearmand)
    payload = os.urandom(10 * 1024 * 1024)
    with gearman.Client([address]) as client:
        client.submit_background("big", payload)
    worker = gearman.Worker([address], ["big"], "test-worker")
    try:
        job = worker.grab_job(10)
        assert job.workload == payload
        worker.complete(job, payload)
        worker.flush(job)
    finally:
        worker.close()


def test_sleeping_worker_wakes_on_noop(gearmand):
    address = address_of(gearmand)
    worker = gearman.Worker([address], ["later"], "test-worker")
    try:
        assert worker.grab_job(0.2) is None
        assert not worker.connections[0].awake
        with gearman.Client([address]) as client:
            client.submit_background("later", b"x")
        job = worker.grab_job(5)
        assert job is not None
        assert job.workload == b"x"
        worker.complete(job)
    finally:
        worker.close()


def test_wakeup_fd_interrupts_sleep(gearmand):
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK)
    worker = gearman.Worker([address_of(gearmand)], ["q"], "test-worker", wakeup_fd=read_fd)
    try:
        os.write(write_fd, b"x")
        assert worker.grab_job(30) is None
    finally:
        worker.close()
        os.close(read_fd)
        os.close(write_fd)


def test_worker_serves_two_job_servers():
    first, second = testing.Gearmand().start(), testing.Gearmand().start()
    addresses = [address_of(first), address_of(second)]
    worker = gearman.Worker(addresses, ["q"], "test-worker")
    try:
        assert worker.grab_job(0.1) is None
        for address, payload in zip(addresses, (b"one", b"two")):
            with gearman.Client([address]) as client:
                client.submit_background("q", payload)
        seen = set()
        for _ in range(2):
            job = worker.grab_job(5)
            seen.add(job.workload)
            worker.complete(job)
        assert seen == {b"one", b"two"}
    finally:
        worker.close()
        first.close()
        second.close()


def test_worker_reconnects_after_restart():
    server = testing.Gearmand().start()
    address = address_of(server)
    worker = gearman.Worker([address], ["q"], "test-worker")
    try:
        assert worker.grab_job(0.1) is None
        server.stop()
        assert worker.grab_job(0.5) is None
        server.start()
        with gearman.Client([address]) as client:
            client.submit_background("q", b"after restart")
        job = worker.grab_job(15)
        assert job is not None
        assert job.workload == b"after restart"
    finally:
        worker.close()
        server.close()


def test_worker_starts_with_server_down():
    port = testing.free_port()
    worker = gearman.Worker([("127.0.0.1", port)], ["q"], "test-worker")
    server = testing.Gearmand(port=port)
    try:
        assert worker.grab_job(0.2) is None
        assert worker.connected_count == 0
        server.start()
        with gearman.Client([("127.0.0.1", port)]) as client:
            client.submit_background("q", b"late")
        job = worker.grab_job(15)
        assert job.workload == b"late"
    finally:
        worker.close()
        server.close()


def test_released_job_is_handed_out_again(gearmand):
    address = address_of(gearmand)
    with gearman.Client([address]) as client:
        handle, _ = client.submit_background("q", b"again")
    worker = gearman.Worker([address], ["q"], "test-worker")
    try:
        job = worker.grab_job(5)
        worker.release(job)
        again = worker.grab_job(5)
        assert again.handle == handle
        assert again.workload == b"again"
    finally:
        worker.close()


def test_client_id_and_admin_protocol(gearmand):
    address = address_of(gearmand)
    worker = gearman.Worker([address], ["q1", "q2"], "curlerd-test-42")
    try:
        worker.grab_job(0.1)
        worker.echo(b"hello")
        with gearman.Client([address]) as client:
            client.submit_background("q1", b"x")
        workers = gearman.server_workers(address)
        ours = [w for w in workers if w[2] == "curlerd-test-42"]
        assert len(ours) == 1
        assert sorted(ours[0][3]) == ["q1", "q2"]
        status = gearman.server_status(address)
        assert status["q1"] == (1, 0, 1)
        assert status["q2"] == (0, 0, 1)
    finally:
        worker.close()


def test_client_reports_unreachable_servers():
    port = testing.free_port()
    with gearman.Client([("127.0.0.1", port)]) as client:
        with pytest.raises(gearman.GearmanError, match="no job server accepted"):
            client.submit_background("q", b"x")


def test_client_falls_back_to_second_server(gearmand):
    dead = ("127.0.0.1", testing.free_port())
    with gearman.Client([dead, address_of(gearmand)]) as client:
        handle, server = client.submit_background("q", b"x")
    assert server == gearmand.address
    assert handle.startswith(b"H:")


def test_worker_uses_poll_above_1024_descriptors(gearmand):
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1200:
        pytest.skip("the hard limit on open files is below 1200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    filler = [socket.socket() for _ in range(1100)]
    try:
        worker = gearman.Worker([address_of(gearmand)], ["q"], "test-worker")
        assert worker.grab_job(0.1) is None
        assert worker.connections[0].fileno() > 1024
        with gearman.Client([address_of(gearmand)]) as client:
            client.submit_background("q", b"high fd")
        job = worker.grab_job(5)
        assert job.workload == b"high fd"
        worker.close()
    finally:
        for sock in filler:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_foreground_timeout_names_the_limit(gearmand):
    with gearman.Client([address_of(gearmand)]) as client:
        with pytest.raises(gearman.ConnectionLost, match="did not finish within 0.5 s"):
            client.submit_foreground("nobody-works-on-this", b"x", timeout=0.5)


def test_foreground_job_is_not_resubmitted_after_wait_failure(gearmand):
    second = testing.Gearmand().start()
    try:
        with gearman.Client([address_of(gearmand), address_of(second)]) as client:
            with pytest.raises(gearman.ConnectionLost):
                client.submit_foreground("q", b"x", timeout=0.5)
        assert gearman.server_status(address_of(second)).get("q", (0, 0, 0))[0] == 0
        assert gearman.server_status(address_of(gearmand))["q"][0] == 1
    finally:
        second.close()
