"""Operating commands: submit a job, show the status of a running curlerd, replay dead letters."""

import argparse
import json
import os
import sys
import time

import psutil

from . import config, deadletter, gearman, pidfile, scoreboard

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3


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
    parser = argparse.ArgumentParser(prog="curler submit", description="Submit a job to a curlerd queue.")
    common_options(parser)
    parser.add_argument("--queue", help="queue (Gearman function) to submit to (default: the first of job-queue)")
    parser.add_argument("--foreground", action="store_true", help="wait for the job and print the endpoint's response")
    parser.add_argument("--data", help="the job's data as a JSON object; key=value fields are added to it")
    parser.add_argument("--priority", choices=gearman.PRIORITIES, default="normal", help="Gearman job priority")
    parser.add_argument("method", help="method, the path under the base URL, such as generate_archive")
    parser.add_argument("fields", nargs="*", type=parse_field, metavar="key=value", help="string fields of data")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args)
    except config.ConfigError as error:
        print(f"curler: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        data = json.loads(args.data) if args.data else {}
    except ValueError as error:
        parser.error(f"--data is not valid JSON: {error}")
    if not isinstance(data, dict):
        parser.error("--data must be a JSON object, such as '{\"user_id\": 5}'")
    data.update(args.fields)
    payload = json.dumps({"method": args.method, "data": data}).encode()
    queue = args.queue or settings.job_queue[0]
    try:
        with gearman.Client(settings.job_servers) as client:
            if args.foreground:
                status, result = client.submit_foreground(queue, payload, priority=args.priority)
                sys.stdout.write(result.decode("utf-8", "replace"))
                if status != "complete":
                    print(f"curler: job failed ({status})", file=sys.stderr)
                    return EXIT_FAILED
            else:
                handle, server = client.submit_background(queue, payload, priority=args.priority)
                print(handle.decode())
    except gearman.GearmanError as error:
        print(f"curler: {error}", file=sys.stderr)
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
            moved, kept = deadletter.replay(settings.job_servers, dead_letter_queue, method=args.method)
        except gearman.GearmanError as error:
            print(f"curlerd: replay of {dead_letter_queue} failed: {error}", file=sys.stderr)
            return EXIT_FAILED
        total += moved
        print(f"{dead_letter_queue}: moved {moved} dead letters back" + (f", left {kept}" if kept else ""))
    print(f"moved {total} dead letters in all")
    return EXIT_OK


def status(argv):
    """``curlerd status``: show the supervisor, each child and the job server counts."""
    parser = argparse.ArgumentParser(prog="curlerd status", description="Show what a running curlerd is doing.")
    common_options(parser)
    parser.add_argument("--pidfile", help="pidfile of the curlerd to show (default: from the config)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args)
    except config.ConfigError as error:
        print(f"curlerd: {error}", file=sys.stderr)
        return EXIT_USAGE
    if not settings.pidfile:
        print("curlerd: status needs the pidfile: give --pidfile or a config with pidfile", file=sys.stderr)
        return EXIT_USAGE
    pid = pidfile.read(settings.pidfile)
    if pid is None or not pidfile.is_curlerd(pid):
        print(f"curlerd is not running (pidfile {settings.pidfile})")
        return EXIT_NOT_RUNNING
    report = collect_status(pid, settings)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_status(report)
    return EXIT_OK


def collect_status(pid, settings):
    now = time.monotonic()
    master = psutil.Process(pid)
    report = {"pid": pid, "uptime": round(time.time() - master.create_time(), 1),
              "rss": master.memory_info().rss, "children": [], "queues": {}}
    try:
        board = scoreboard.Scoreboard(scoreboard.default_path(pid))
    except (OSError, ValueError) as error:
        report["error"] = f"cannot read the scoreboard: {error}"
        board = None
    if board is not None:
        for slot in board.slots():
            report["children"].append(child_status(slot, now))
        board.close()
    for name in settings.job_queue:
        report["queues"][name] = queue_status(name, settings.job_servers)
    return report


def child_status(slot, now):
    try:
        rss = psutil.Process(slot.pid).memory_info().rss
    except psutil.Error:
        rss = None
    busy = slot.state in (scoreboard.BUSY, scoreboard.BACKOFF)
    return {
        "pid": slot.pid,
        "state": slot.state_name,
        "job_handle": slot.handle if busy else None,
        "method": slot.method if busy else None,
        "busy_seconds": round(now - slot.job_started, 1) if busy and slot.job_started else None,
        "jobs_done": slot.jobs_done,
        "rss": rss,
        "uptime": round(now - slot.started, 1),
    }


def queue_status(name, servers):
    counts = {"queued": 0, "running": 0, "workers": 0, "errors": []}
    for server in servers:
        try:
            queued, running, workers = gearman.server_status(server).get(name, (0, 0, 0))
        except (OSError, gearman.GearmanError) as error:
            counts["errors"].append(f"{gearman.format_server(server)}: {error}")
            continue
        counts["queued"] += queued
        counts["running"] += running
        counts["workers"] += workers
    return counts


def print_status(report):
    print(f"curlerd {report['pid']}: up {report['uptime']:.0f} s, rss {mib(report['rss'])}")
    if report.get("error"):
        print(f"  {report['error']}")
    print(f"  {'PID':>7} {'STATE':<12} {'JOBS':>8} {'RSS':>9} {'UPTIME':>8}  JOB")
    for child in report["children"]:
        job = ""
        if child["job_handle"]:
            job = f"{child['job_handle']} {child['method']} ({child['busy_seconds']} s)"
        print(f"  {child['pid']:>7} {child['state']:<12} {child['jobs_done']:>8} {mib(child['rss']):>9} "
              f"{child['uptime']:>7.0f}s  {job}")
    for name, counts in report["queues"].items():
        line = f"  queue {name}: {counts['queued']} queued, {counts['running']} running, {counts['workers']} workers"
        if counts["errors"]:
            line += " (" + "; ".join(counts["errors"]) + ")"
        print(line)


def mib(value):
    return "-" if value is None else f"{value / 1048576:.1f} MiB"
