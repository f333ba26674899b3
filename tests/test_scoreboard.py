"""Scoreboard helpers: job keys and the removal of stale scoreboard files."""

import os

from curler import scoreboard

from test_pidfile import exited_pid


def test_job_key_tells_servers_apart():
    first = scoreboard.job_key(b"127.0.0.1:4730", b"H:host:1", b"")
    second = scoreboard.job_key(b"127.0.0.1:4731", b"H:host:1", b"")
    again = scoreboard.job_key(b"127.0.0.1:4730", b"H:host:1", b"")
    assert first != second
    assert first == again
    assert len(first) == 16


def test_remove_stale_scoreboards(tmp_path):
    dead = tmp_path / f"curlerd.{exited_pid()}.scoreboard"
    live = tmp_path / f"curlerd.{os.getpid()}.scoreboard"
    other = tmp_path / "unrelated.file"
    for path in (dead, live, other):
        path.write_bytes(b"x")
    assert scoreboard.remove_stale(str(tmp_path)) == 1
    assert not dead.exists()
    assert live.exists()
    assert other.exists()
