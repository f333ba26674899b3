"""Logging set-up: one handler for the supervisor and its children, reopened for logrotate."""

import logging
import logging.handlers
import os
import socket
import sys

FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
# journald stamps each line itself.
JOURNAL_FORMAT = "[%(process)d] %(levelname)s %(name)s: %(message)s"
# The syslog daemon adds the time and host; "curlerd[pid]:" is the RFC 3164 tag.
SYSLOG_FORMAT = "curlerd[%(process)d]: %(levelname)s %(name)s: %(message)s"
SYSLOG_SOCKET = "/dev/log"

log = logging.getLogger("curler.logs")

_handler = None
_log_file = None


def setup(log_file, level):
    """Send every curler log record to ``log_file`` (None for standard error, 'syslog' for syslog).

    The new handler is opened before the old one is closed, so an OSError
    (a log file that cannot be opened, no syslog socket) leaves logging as it was.
    """
    global _handler, _log_file
    # The formats use neither source locations nor thread names, so records skip collecting them.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = make_handler(log_file)
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    _log_file = log_file
    _handler = handler
    root.addHandler(handler)
    root.setLevel(level.upper())


def make_handler(log_file):
    if log_file == "syslog":
        return syslog_handler(SYSLOG_SOCKET)
    if log_file:
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter(FORMAT))
        return handler
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(JOURNAL_FORMAT if stderr_is_journal() else FORMAT))
    return handler


def syslog_handler(address):
    """Return a handler for the local syslog socket at ``address``; raise OSError when nothing listens there."""
    # SysLogHandler only warns on each record when the socket is missing, so check first.
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(address)
    except OSError as error:
        raise OSError(error.errno, f"cannot log to syslog: no syslog socket at {address} ({error.strerror}); "
                      "start a syslog daemon or give --log-file a path") from None
    finally:
        probe.close()
    handler = logging.handlers.SysLogHandler(address=address, facility=logging.handlers.SysLogHandler.LOG_DAEMON,
                                             socktype=socket.SOCK_DGRAM)
    handler.setFormatter(logging.Formatter(SYSLOG_FORMAT))
    return handler


def stderr_is_journal(environ=None):
    """Tell whether standard error is the journal stream systemd set up.

    systemd sets JOURNAL_STREAM to the device and inode of that stream. A
    process whose standard error was redirected still inherits the variable,
    so both numbers are compared with standard error's.
    """
    environ = os.environ if environ is None else environ
    device, sep, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        stat = os.fstat(sys.stderr.fileno())
        return (stat.st_dev, stat.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError):
        return False


def reopen():
    """Reopen the log file, for example after logrotate moved it; keep the old file if the new one cannot be opened."""
    handler = _handler
    if not isinstance(handler, logging.FileHandler):
        return
    try:
        stream = open(handler.baseFilename, handler.mode, encoding=handler.encoding, errors=handler.errors)
    except OSError as error:
        log.error("cannot reopen log file %s (%s); still writing to the old one", handler.baseFilename, error)
        return
    handler.acquire()
    try:
        old, handler.stream = handler.stream, stream
    finally:
        handler.release()
    if old is not None:
        old.close()


def redirect_stdio(log_file):
    """Point standard input at /dev/null and output at the log file (or /dev/null), for daemon mode."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    target = null
    if log_file and log_file != "syslog":
        target = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    os.dup2(target, 1)
    os.dup2(target, 2)
