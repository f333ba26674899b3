"""A small HTTP/1.1 endpoint for the benchmark, run as its own process.

It replies to every request with ``200 ok`` on kept-alive connections. With
``--delay`` it waits that many seconds before each reply, without blocking
other connections. With ``--record`` it writes one line per request to
standard output: the ``time.monotonic()`` value at which the request was read
in full, which the benchmark compares with the job's submission time (on Linux
both processes read the same CLOCK_MONOTONIC).

It serves when nginx is not installed and for the cases nginx cannot do: the
slow endpoint and the arrival times. Request bodies must carry a
Content-Length, as urllib3 sends for a bytes body; chunked bodies get 411.
"""

import argparse
import asyncio
import signal
import sys
import time

HEADER_END = b"\r\n\r\n"
MAX_HEAD_BYTES = 64 * 1024
REPLY = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
         b"Connection: keep-alive\r\n\r\nok")
LENGTH_REQUIRED = (b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\n"
                   b"Connection: close\r\n\r\n")


def content_length(head):
    """Return the Content-Length of a request head, 0 when absent, or None for a chunked body."""
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding":
            return None
    return length


class HTTPProtocol(asyncio.Protocol):
    """One client connection: split the byte stream into requests and reply to each in order."""

    def __init__(self, delay, record):
        self.delay = delay
        self.record = record
        self.buffer = bytearray()
        self.transport = None
        self.replies = asyncio.Queue() if delay else None

    def connection_made(self, transport):
        self.transport = transport
        if self.delay:
            asyncio.get_running_loop().create_task(self.send_delayed())

    def connection_lost(self, error):
        if self.replies is not None:
            self.replies.put_nowait(None)

    def data_received(self, data):
        self.buffer += data
        while True:
            end = self.buffer.find(HEADER_END)
            if end < 0:
                if len(self.buffer) > MAX_HEAD_BYTES:
                    self.transport.close()
                return
            length = content_length(bytes(self.buffer[:end]))
            if length is None:
                self.transport.write(LENGTH_REQUIRED)
                self.transport.close()
                return
            request_end = end + len(HEADER_END) + length
            if len(self.buffer) < request_end:
                return
            del self.buffer[:request_end]
            self.respond()

    def respond(self):
        if self.record:
            sys.stdout.write(f"{time.monotonic():.6f}\n")
            sys.stdout.flush()
        if self.delay:
            self.replies.put_nowait(time.monotonic() + self.delay)
        else:
            self.transport.write(REPLY)

    async def send_delayed(self):
        """Send each reply when its delay has passed, in request order."""
        while True:
            due = await self.replies.get()
            if due is None:
                return
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if self.transport.is_closing():
                return
            self.transport.write(REPLY)


async def serve(port, delay, record):
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    server = await loop.create_server(lambda: HTTPProtocol(delay, record), "127.0.0.1", port, backlog=1024)
    async with server:
        await stop.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1 to listen on")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before each reply")
    parser.add_argument("--record", action="store_true",
                        help="print the monotonic clock value of each request's arrival, one per line")
    options = parser.parse_args()
    asyncio.run(serve(options.port, options.delay, options.record))


if __name__ == "__main__":
    main()
