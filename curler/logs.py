"""Logging set-up: one handler for the supervisor and its children, reopened for logrotate."""

import logging
import logging.handlers
import os
import sys

FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
# journald stamps each line itself.
JOURNAL_FORMAT = "[%(process)d] %(levelname)s %(name)s: %(message)s"
SYSLOG_FORMAT = "curlerd[%(process)d]: %(levelname)s %(name)s: %(message)s"
SYSLOG_SOCKET = "/dev/log"

_handler = None
_log_file = None


def setup(log_file, level):
    """Send every curler log record to ``log_file`` (None for standard error, 'syslog' for syslog)."""
    global _handler, _log_file
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    _log_file = log_file
    _handler = make_handler(log_file)
    root.addHandler(_handler)
    root.setLevel(level.upper())


def make_handler(log_file):
    if log_file == "syslog":
        handler = logging.handlers.SysLogHandler(address=SYSLOG_SOCKET)
        handler.setFormatter(logging.Formatter(SYSLOG_FORMAT))
        return handler
    if log_file:
        handler = logging.FileHandler(log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    fmt = JOURNAL_FORMAT if os.environ.get("JOURNAL_STREAM") and not log_file else FORMAT
    handler.setFormatter(logging.Formatter(fmt))
    return handler


def reopen():
    """Reopen the log file, for example after logrotate moved it."""
    if isinstance(_handler, logging.FileHandler):
        _handler.acquire()
        try:
            _handler.close()
            _handler.stream = _handler._open()
        finally:
            _handler.release()


def redirect_stdio(log_file):
    """Point standard input at /dev/null and output at the log file (or /dev/null), for daemon mode."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    target = null
    if log_file and log_file != "syslog":
        target = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    os.dup2(target, 1)
    os.dup2(target, 2)
