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


def test_crash_table_and_holders(tmp_path):
    board = scoreboard.Scoreboard(str(tmp_path / "board"), create=True)
    key = scoreboard.job_key(b"s:1", b"H:x:1", b"")
    other = scoreboard.job_key(b"s:1", b"H:x:2", b"")
    board.record_crashes(key, 1)
    board.record_crashes(other, 1)
    board.record_crashes(key, 2)
    assert board.crash_counts() == {key: 2, other: 1}

    clock = lambda: 1.0
    for index in (0, 1, 2):
        board.claim(index, 100 + index, 0.0)
    scoreboard.SlotWriter(board, 0, clock).busy(b"H:x:1", "m", b"q", key)
    scoreboard.SlotWriter(board, 1, clock).busy(b"H:x:1", "m", b"q", key)
    scoreboard.SlotWriter(board, 2, clock).busy(b"H:x:2", "m", b"q", other)
    assert board.holders(key, own_index=0) == 1
    assert board.holders(key, own_index=5) == 2
    assert board.holders(other, own_index=0) == 1
    board.close()


def test_crash_table_replaces_oldest_when_full(tmp_path):
    board = scoreboard.Scoreboard(str(tmp_path / "board"), create=True)
    keys = [scoreboard.job_key(b"s", str(n).encode(), b"") for n in range(scoreboard.CRASH_CAPACITY + 1)]
    for key in keys:
        board.record_crashes(key, 1)
    counts = board.crash_counts()
    assert len(counts) == scoreboard.CRASH_CAPACITY
    assert keys[0] not in counts
    assert keys[-1] in counts
    board.close()
