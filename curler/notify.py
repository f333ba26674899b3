"""systemd notifications (READY=1, RELOADING=1, STOPPING=1) through $NOTIFY_SOCKET, when it is set."""

import logging
import os
import socket
import time

log = logging.getLogger("curler.notify")


def notify(state):
    """Send ``state`` to the service manager; do nothing outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    if state.startswith("RELOADING=1"):
        # systemd's Type=notify-reload wants the time the reload started.
        state += f"\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as error:
        log.warning("could not notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), error)
