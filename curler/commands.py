"""Operating commands: submit a job, show the status of a running curlerd, replay dead letters."""

import argparse
import json
import sys
import time

import psutil

from . import config, deadletter, gearman, job, pidfile, scoreboard

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
# LSB init script statuses, which curlerd status returns.
EXIT_DEAD_PIDFILE = 1     # not running, but the pidfile is left
EXIT_NOT_RUNNING = 3
EXIT_STATUS_UNKNOWN = 4

# The pidfile that the packaged systemd unit and init.d script give curlerd.
DEFAULT_PIDFILE = "/run/curlerd/curlerd.pid"


def common_options(parser):
    parser.add_argument("-c", "--config", help="curlerd INI file to take job servers, queues and pidfile from")
    parser.add_argument("--job-servers", help="job servers as host:port, comma-separated (default: from the config, else localhost:4730)")


def load_settings(args):
    argv = ["-c", args.config] if args.config else []
    if getattr(args, "job_servers", None):
        argv += ["--job-servers", args.job_servers]
    if getattr(args, "pidfile", None):
        argv += ["--pidfile", args.pidfile]
    settings, _ = config.load(argv)
    return settings


def parse_field(text):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value


def submit(argv):
    """``curler submit``: queue a job and print its handle, or run it and print the response."""
    args, parser = parse_submit_args(argv)
    try:
        settings = load_settings(args)
    except config.ConfigError as error:
        print(f"curler: {error}", file=sys.stderr)
        return EXIT_USAGE
    payload = build_payload(parser, args)
    queue = args.queue or settings.job_queue[0]

    try:
        with gearman.Client(settings.job_servers) as client:
            if args.foreground:
                return run_foreground(client, queue, payload, args)
            handle, _ = client.submit_background(queue, payload, unique=args.unique, priority=args.priority)
            print(handle.decode())
    except gearman.GearmanError as error:
        print(f"curler: submitting to {queue} failed: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def parse_submit_args(argv):
    """Return the parsed arguments of ``curler submit`` and the parser, for later usage errors."""
    parser = argparse.ArgumentParser(prog="curler submit", description="Submit a job to a curlerd queue.")
    common_options(parser)
    parser.add_argument("--queue", help="queue (Gearman function) to submit to (default: the first of job-queue)")
    parser.add_argument("--foreground", action="store_true", help="wait for the job and print the endpoint's response")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="with --foreground, seconds to wait for the outcome (default: no limit)")
    parser.add_argument("--data", help="the job's data as a JSON object; key=value fields are added to it")
    parser.add_argument("--priority", choices=gearman.PRIORITIES, default="normal", help="Gearman job priority")
    parser.add_argument("--unique", default="",
                        help="Gearman unique id, sent to the endpoint as X-Curler-Job-Unique (default: none)")
    parser.add_argument("method", help="method, the path under the base URL, such as generate_archive")
    parser.add_argument("fields", nargs="*", type=parse_field, metavar="key=value", help="string fields of data")
    return parser.parse_args(argv), parser


def build_payload(parser, args):
    """Return the job payload ``{"method": ..., "data": {...}}`` from --data and the key=value fields."""
    try:
        data = json.loads(args.data) if args.data else {}
    except ValueError as error:
        parser.error(f"--data is not valid JSON: {error}")
    if not isinstance(data, dict):
        parser.error("--data must be a JSON object, such as '{\"user_id\": 5}'")
    data.update(args.fields)
    try:
        job.method_path(args.method)
    except job.InvalidPayload as error:
        parser.error(str(error))
    return json.dumps({"method": args.method, "data": data}).encode()


def run_foreground(client, queue, payload, args):
    """Run the job, write the response body as it came to standard output, and return the exit status."""
    status, result = client.submit_foreground(queue, payload, unique=args.unique, priority=args.priority,
                                              timeout=args.timeout)
    sys.stdout.flush()
    sys.stdout.buffer.write(result)
    sys.stdout.buffer.flush()
    if status != "complete":
        print(f"curler: job failed ({status})", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def replay(argv):
    """``curlerd replay-dead-letters``: move dead letters back onto their original queues."""
    parser = argparse.ArgumentParser(prog="curlerd replay-dead-letters",
                                     description="Move dead letters back onto the queues they came from.")
    common_options(parser)
    parser.add_argument("--queue", help="queue whose dead letter queue to replay (default: every queue in job-queue)")
    parser.add_argument("--method", help="replay only dead letters of this method")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args)
    except config.ConfigError as error:
        print(f"curlerd: {error}", file=sys.stderr)
        return EXIT_USAGE
    queues = [args.queue] if args.queue else list(settings.job_queue)
    total = 0
    for name in queues:
        queue = settings.queues.get(name)
        dead_letter_queue = queue.dead_letter_queue if queue else f"{name}.failed"
        if not dead_letter_queue:
            print(f"{name}: dead letters are off")
            continue
        try:
            moved, left = deadletter.replay(settings.job_servers, dead_letter_queue, method=args.method)
        except gearman.GearmanError as error:
            print(f"curlerd: replay of {dead_letter_queue} failed: {error}", file=sys.stderr)
            return EXIT_FAILED
        total += moved
        print(f"{dead_letter_queue}: moved {moved} dead letters back" + (f", left {left}" if left else ""))
    print(f"moved {total} dead letters in all")
    return EXIT_OK


def status(argv):
    """``curlerd status``: show the supervisor, each child and the job server counts.

    Exit statuses follow LSB: 0 running, 1 dead with its pidfile left, 3 not
    running, 4 unknown (the pidfile cannot be read).
    """
    parser = argparse.ArgumentParser(prog="curlerd status", description="Show what a running curlerd is doing.")
    common_options(parser)
    parser.add_argument("--pidfile", help=f"pidfile of the curlerd to show (default: from the config, else {DEFAULT_PIDFILE})")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args)
    except config.ConfigError as error:
        print(f"curlerd: {error}", file=sys.stderr)
        return EXIT_USAGE
    path = settings.pidfile or DEFAULT_PIDFILE
    try:
        pid = pidfile.read(path)
    except OSError as error:
        print(f"curlerd: cannot read pidfile {path}: {error.strerror}", file=sys.stderr)
        return EXIT_STATUS_UNKNOWN
    if pid is None:
        print(f"curlerd is not running (no pid in {path})")
        return EXIT_NOT_RUNNING
    if not pidfile.is_curlerd(pid):
        print(f"curlerd is not running, but its pidfile {path} is left (pid {pid})")
        return EXIT_DEAD_PIDFILE
    report = collect_status(pid, settings)
    report["pidfile"] = path
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_status(report)
    return EXIT_OK


def collect_status(pid, settings):
    """Return the status report of the curlerd supervisor ``pid`` as plain data."""
    now = time.monotonic()
    report = {"pid": pid, "uptime": None, "rss": None, "children": [], "queues": {}}
    try:
        master = psutil.Process(pid)
        report["uptime"] = round(time.time() - master.create_time(), 1)
        report["rss"] = master.memory_info().rss
    except psutil.Error:
        pass  # the supervisor exited a moment ago, but its children and queues are still worth showing
    try:
        board = scoreboard.Scoreboard(scoreboard.default_path(pid))
    except (OSError, ValueError) as error:
        report["error"] = f"cannot read the scoreboard: {error}"
    else:
        try:
            report["children"] = [child_status(slot, now) for slot in board.slots()]
        finally:
            board.close()
    report["queues"] = queue_counts(settings)
    return report


def child_status(slot, now):
    """Return one child's row: what it does, how long for, and its memory."""
    try:
        rss = psutil.Process(slot.pid).memory_info().rss
    except psutil.Error:
        rss = None
    busy = slot.state in (scoreboard.BUSY, scoreboard.BACKOFF) and bool(slot.handle)
    return {
        "pid": slot.pid,
        "state": slot.state_name,
        "job_handle": slot.handle if busy else None,
        "method": slot.method if busy else None,
        "queue": slot.queue if busy else None,
        "busy_seconds": round(now - slot.job_started, 1) if busy and slot.job_started else None,
        "jobs_done": slot.jobs_done,
        "rss": rss,
        "uptime": round(now - slot.started, 1),
    }


def queue_counts(settings):
    """Return ``{queue: counts}`` summed over the job servers, with one admin ``status`` request per server.

    Each entry has the queued, running and workers counts, the jobs waiting on
    its dead letter queue, and an error for each job server that did not reply.
    """
    names = list(settings.job_queue)
    counts = {}
    for name in names:
        dead_letter_queue = settings.queues[name].dead_letter_queue or None
        counts[name] = {"queued": 0, "running": 0, "workers": 0, "dead_letter_queue": dead_letter_queue,
                        "dead_letters": 0 if dead_letter_queue else None, "errors": []}
    for server in settings.job_servers:
        try:
            functions = gearman.server_status(server)
        except (OSError, gearman.GearmanError) as error:
            for name in names:
                counts[name]["errors"].append(f"{gearman.format_server(server)}: {error}")
            continue
        for name in names:
            entry = counts[name]
            queued, running, workers = functions.get(name, (0, 0, 0))
            entry["queued"] += queued
            entry["running"] += running
            entry["workers"] += workers
            if entry["dead_letter_queue"]:
                entry["dead_letters"] += functions.get(entry["dead_letter_queue"], (0, 0, 0))[0]
    return counts


def print_status(report):
    uptime = "?" if report["uptime"] is None else format_duration(report["uptime"])
    print(f"curlerd {report['pid']} (pidfile {report['pidfile']}): up {uptime}, rss {mib(report['rss'])}, "
          f"{len(report['children'])} children")
    if report.get("error"):
        print(f"  {report['error']}")
    if report["children"]:
        print(f"  {'PID':>7}  {'STATE':<11}  {'JOBS':>7}  {'RSS':>9}  {'UPTIME':>7}  JOB")
    for child in report["children"]:
        job = ""
        if child["job_handle"]:
            seconds = child["busy_seconds"]
            job = f"{child['job_handle']} {child['method']} on {child['queue']}"
            if seconds is not None:
                job += f" for {format_duration(seconds)}"
        print(f"  {child['pid']:>7}  {child['state']:<11}  {child['jobs_done']:>7}  {mib(child['rss']):>9}  "
              f"{format_duration(child['uptime']):>7}  {job}".rstrip())
    for name, counts in report["queues"].items():
        line = f"  queue {name}: {counts['queued']} queued, {counts['running']} running, {counts['workers']} workers"
        if counts["dead_letter_queue"]:
            line += f"; {counts['dead_letters']} dead letters on {counts['dead_letter_queue']}"
        if counts["errors"]:
            line += " (no answer from " + "; ".join(counts["errors"]) + ")"
        print(line)


def format_duration(seconds):
    """Format seconds as 42s, 3m05s, 2h07m or 4d03h."""
    seconds = int(max(seconds, 0))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def mib(value):
    return "-" if value is None else f"{value / 1048576:.1f} MiB"
