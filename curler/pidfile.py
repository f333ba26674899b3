"""The pidfile: written atomically, checked for a running curlerd, removed only if it is still ours."""

import logging
import os
import tempfile

import psutil

log = logging.getLogger("curler.pidfile")


class AlreadyRunning(Exception):
    """The pidfile names a curlerd process that is still running."""


def read(path):
    """Return the pid in ``path``, or None when the file is missing or holds no number."""
    try:
        with open(path) as pid_file:
            return int(pid_file.read().strip())
    except (FileNotFoundError, ValueError):
        return None


def is_curlerd(pid):
    """True when ``pid`` is a running process whose command line is curlerd's."""
    try:
        process = psutil.Process(pid)
        command = " ".join(process.cmdline())
        return process.status() != psutil.STATUS_ZOMBIE and "curlerd" in command
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def check(path):
    """Raise AlreadyRunning if ``path`` names a live curlerd; warn about a stale pidfile."""
    pid = read(path)
    if pid is None or pid == os.getpid():
        return
    if is_curlerd(pid):
        raise AlreadyRunning(f"curlerd is already running with pid {pid} (pidfile {path}); "
                             f"stop it first or use another --pidfile")
    log.warning("replacing stale pidfile %s (pid %d is not a running curlerd)", path, pid)


def write(path, pid):
    """Write ``pid`` to ``path`` through a temporary file and a rename, so readers never see half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".curlerd-pid.", dir=directory)
    try:
        os.write(fd, f"{pid}\n".encode())
        os.fchmod(fd, 0o644)
        os.close(fd)
        os.rename(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def remove(path, pid):
    """Remove ``path`` if it still holds ``pid``."""
    if read(path) == pid:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
