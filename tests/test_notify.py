"""systemd notifications: curlerd sends READY, RELOADING and STOPPING to $NOTIFY_SOCKET as Type=notify expects."""

import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import CURLERD, wait_until
from curler import gearman, notify, testing


@pytest.fixture
def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(30)
    yield sock
    sock.close()


def receive(sock):
    return sock.recv(4096).decode().split("\n")


def test_notify_without_socket_does_nothing(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notify.notify("READY=1")


def test_notify_sends_state(notify_socket, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.getsockname())
    notify.notify("READY=1")
    assert receive(notify_socket) == ["READY=1"]


def test_reloading_carries_monotonic_time(notify_socket, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.getsockname())
    notify.notify("RELOADING=1")
    state, stamp = receive(notify_socket)
    assert state == "RELOADING=1"
    assert stamp.startswith("MONOTONIC_USEC=")
    assert 0 < int(stamp.split("=")[1]) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_abstract_socket_address(monkeypatch):
    name = f"curler-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notify.notify("STOPPING=1")
        assert receive(sock) == ["STOPPING=1"]


def test_unreachable_socket_logs_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    notify.notify("READY=1")
    assert "could not notify systemd" in caplog.text


def test_curlerd_lifecycle_notifications(tmp_path, gearmand, notify_socket):
    ini = tmp_path / "curler.ini"
    ini.write_text(f"[curlerd]\njob-servers = {gearmand.address}\nworkers = 2\nlog-file = {tmp_path / 'curlerd.log'}\n")
    environ = dict(os.environ, NOTIFY_SOCKET=notify_socket.getsockname())
    process = subprocess.Popen([CURLERD, "-c", str(ini)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=environ)
    try:
        assert receive(notify_socket) == ["READY=1"]
        wait_until(lambda: gearman_workers(gearmand) == 2, message="both children registered")

        process.send_signal(signal.SIGHUP)
        assert receive(notify_socket)[0] == "RELOADING=1"
        assert receive(notify_socket) == ["READY=1"]

        process.send_signal(signal.SIGTERM)
        assert receive(notify_socket) == ["STOPPING=1"]
        assert process.wait(30) == 0
    finally:
        testing.kill_tree(process.pid)
        process.wait(10)


def gearman_workers(gearmand):
    return gearman.server_status(gearman.parse_server(gearmand.address)).get("curl", (0, 0, 0))[2]
