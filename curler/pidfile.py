"""The pidfile: written atomically, checked for a running curlerd, removed only if it is still ours."""

import logging
import os
import tempfile

import psutil

log = logging.getLogger("curler.pidfile")

PROGRAM = "curlerd"


class AlreadyRunning(Exception):
    """The pidfile names a curlerd process that is still running."""


def read(path):
    """Return the pid in ``path``, or None when the file is missing or contains no positive number."""
    try:
        with open(path) as pid_file:
            pid = int(pid_file.read().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid > 0 else None


def is_curlerd(pid):
    """Tell whether ``pid`` is a running curlerd supervisor or child.

    A curlerd process either has set its title ("curlerd: master") or still
    has the command line it started with, where the program or the script
    that the interpreter runs is named curlerd.
    """
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        command = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    if command and command[0].startswith(PROGRAM + ":"):
        return True
    return any(os.path.basename(part) == PROGRAM for part in command[:2])


def check(path):
    """Raise AlreadyRunning if ``path`` names a live curlerd; warn about a stale pidfile."""
    pid = read(path)
    if pid is None or pid == os.getpid():
        return
    if is_curlerd(pid):
        raise AlreadyRunning(f"curlerd is already running with pid {pid} (pidfile {path}); "
                             f"stop it first or use another --pidfile")
    log.warning("replacing stale pidfile %s (pid %d is not a running curlerd)", path, pid)


def check_writable(path):
    """Raise OSError when no pidfile can be created in the directory of ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".curlerd-pid.", dir=directory)
    os.close(fd)
    os.unlink(temporary)


def write(path, pid):
    """Write ``pid`` to ``path`` through a temporary file and a rename, so readers never see half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".curlerd-pid.", dir=directory)
    try:
        try:
            os.write(fd, f"{pid}\n".encode())
            os.fchmod(fd, 0o644)
        finally:
            os.close(fd)
        os.rename(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def remove(path, pid):
    """Remove ``path`` if it still contains ``pid``; log a warning when it cannot be read or removed."""
    try:
        if read(path) != pid:
            return
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        log.warning("cannot remove pidfile %s: %s", path, error)
