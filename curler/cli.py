"""Command-line entry points: ``curlerd`` (the daemon and its operating commands) and ``curler``."""

import sys

from . import config, pidfile
from .supervisor import Supervisor

# Exit statuses of curlerd.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2       # invalid configuration, as argparse does
EXIT_NOT_RUNNING = 3  # LSB: program is not running (curlerd status)


def main(argv=None):
    """Run ``curlerd``: the supervisor, or one of the operating commands."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    try:
        settings, check_only = config.load(argv)
    except config.ConfigError as error:
        print_errors(error)
        return EXIT_CONFIG
    if check_only:
        print("\n".join(settings.redacted()))
        return EXIT_OK
    try:
        return Supervisor(settings, argv).run()
    except pidfile.AlreadyRunning as error:
        print(f"curlerd: {error}", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, KeyError) as error:
        print(f"curlerd: cannot start: {error}", file=sys.stderr)
        return EXIT_FAILED


def print_errors(error):
    for line in str(error).splitlines():
        print(f"curlerd: {line}", file=sys.stderr)


def run_status(argv):
    from . import commands
    return commands.status(argv)


def run_submit(argv):
    from . import commands
    return commands.submit(argv)


def run_replay(argv):
    from . import commands
    return commands.replay(argv)


COMMANDS = {
    "status": run_status,
    "submit": run_submit,
    "replay-dead-letters": run_replay,
}


CURLER_USAGE = """usage: curler COMMAND [OPTIONS]

commands:
  submit               submit a job to a curlerd queue
  status               show what a running curlerd is doing
  replay-dead-letters  move dead letters back onto their queues

Run 'curler COMMAND --help' for the options of a command."""


def curler_main(argv=None):
    """Run ``curler``: submit, status and replay-dead-letters for operators."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(CURLER_USAGE)
        return EXIT_OK
    if not argv or argv[0] not in COMMANDS:
        if argv:
            print(f"curler: unknown command {argv[0]!r}", file=sys.stderr)
        print(CURLER_USAGE, file=sys.stderr)
        return EXIT_CONFIG
    return COMMANDS[argv[0]](argv[1:])


def entry():
    sys.exit(main())


def curler_entry():
    sys.exit(curler_main())
