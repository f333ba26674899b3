"""CPU time and memory of the worker processes under test, read through psutil."""

import psutil

MIB = 1024 * 1024


def tree_cpu_seconds(pid):
    """Return user + system CPU seconds of ``pid`` and all its descendants, exited ones included.

    A child that exited and was reaped adds its time to its parent's
    ``children_user`` and ``children_system``, so recycled curlerd children
    still count. A descendant that exits between the listing and its read is
    missed for that one sample.
    """
    root = psutil.Process(pid)
    total = process_cpu(root)
    for descendant in root.children(recursive=True):
        try:
            total += process_cpu(descendant)
        except psutil.NoSuchProcess:
            pass
    return total


def process_cpu(process):
    times = process.cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def memory(pid):
    """Return ``(rss, uss)`` of ``pid`` in bytes. USS counts the pages that only this process maps."""
    info = psutil.Process(pid).memory_full_info()
    return info.rss, info.uss


def rss(pid):
    return psutil.Process(pid).memory_info().rss


def live_children(pid):
    """Return the pids of the running (not zombie) children of ``pid``."""
    pids = []
    for child in psutil.Process(pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                pids.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return sorted(pids)
