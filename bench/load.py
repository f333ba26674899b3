"""Put background jobs on a queue quickly and watch the queue drain, through gearmand's protocols."""

import json
import time

from curler import gearman

# A typical curler job: a method name and a small data object.
JOB = {"method": "generate_archive", "data": {"user_id": 5}}
PAYLOAD = json.dumps(JOB).encode()
# SUBMIT_JOB_BG packets written before their JOB_CREATED replies are read. A
# batch is about 80 KiB, small enough that neither side's socket buffer fills
# while the other is still writing.
BATCH = 1000
POLL_INTERVAL = 0.005


def preload(address, function, count, payload=PAYLOAD):
    """Submit ``count`` background jobs on one connection, a batch of packets per write."""
    connection = gearman.Connection(gearman.parse_server(address))
    connection.connect()
    packet = gearman.pack(gearman.Packet.SUBMIT_JOB_BG, function.encode(), b"", payload)
    try:
        remaining = count
        while remaining:
            batch = min(BATCH, remaining)
            connection.send(packet * batch)
            for _ in range(batch):
                read_job_created(connection)
            remaining -= batch
    finally:
        connection.close()


def read_job_created(connection):
    while True:
        packet_type, data = connection.read_packet()
        if packet_type == gearman.Packet.JOB_CREATED:
            return data
        if packet_type == gearman.Packet.ERROR:
            raise gearman.ServerError(f"job server {connection.name}: {gearman.format_error(data)}")
        if packet_type != gearman.Packet.NOOP:
            raise gearman.GearmanError(f"job server {connection.name}: expected JOB_CREATED, "
                                       f"got {gearman.packet_name(packet_type)}")


def queue_status(address, function):
    """Return ``(queued, running, workers)`` of ``function``, where queued counts the running jobs too."""
    status = gearman.server_status(gearman.parse_server(address))
    return status.get(function, (0, 0, 0))


def wait_for_workers(address, function, count, timeout):
    """Wait until ``count`` workers have registered ``function``."""
    deadline = time.monotonic() + timeout
    while queue_status(address, function)[2] < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} workers for {function} did not register within {timeout} s")
        time.sleep(0.02)


def wait_drained(address, function, timeout, check=None):
    """Wait until no job of ``function`` is queued or running, and return the monotonic time it was seen.

    ``check`` is called on every poll and may raise to end the wait early, for
    example when the worker under test has exited.
    """
    deadline = time.monotonic() + timeout
    while True:
        queued, _, _ = queue_status(address, function)
        now = time.monotonic()
        if queued == 0:
            return now
        if now > deadline:
            raise TimeoutError(f"{queued} jobs of {function} still queued after {timeout} s")
        if check is not None:
            check()
        time.sleep(POLL_INTERVAL)
