"""Profile one curlerd child's per-job path with py-spy while it drains a preloaded queue.

    pip install py-spy
    python bench/profile_child.py                 # 8 s of samples, top 30 functions
    python bench/profile_child.py --seconds 20 --top 50 --log-level info

It starts a private gearmand, nginx (or bench/endpoint.py) and curlerd with
one child, and preloads enough jobs to keep the child busy for the whole
recording. It prints the share of samples per function twice. "Self" counts
the samples taken in the function itself, C calls it makes included.
"Inclusive" adds the functions it called. py-spy pauses the child for each
sample, so the child runs slower while it is recorded, but the shares stay
comparable.
"""

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile

import cases
import load
import run

# Jobs preloaded per second of recording: above any rate one child reaches.
JOBS_PER_SECOND = 10000
LINE_NUMBER = re.compile(r":\d+\)")


def record(py_spy, pid, seconds, rate, output):
    command = [py_spy, "record", "--pid", str(pid), "--rate", str(rate), "--duration", str(seconds),
               "--format", "raw", "--output", output]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not os.path.exists(output):
        raise RuntimeError(f"py-spy failed with status {result.returncode}: {result.stderr.strip()}")


def summarize(raw_path):
    """Return ``(samples, self counts, inclusive counts)`` from py-spy's collapsed stacks."""
    own = collections.Counter()
    inclusive = collections.Counter()
    total = 0
    with open(raw_path, encoding="utf-8") as raw:
        for line in raw:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count)
            total += count
            frames = [LINE_NUMBER.sub(")", frame) for frame in stack.split(";")]
            own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
    return total, own, inclusive


def print_counts(title, counts, total, top):
    print(f"\n{title}")
    for frame, count in counts.most_common(top):
        print(f"{count / total * 100:6.1f}%  {frame}")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Profile a curlerd child with py-spy during a drain.")
    parser.add_argument("--seconds", type=int, default=8, help="seconds to record (default: 8)")
    parser.add_argument("--rate", type=int, default=250, help="samples per second (default: 250)")
    parser.add_argument("--top", type=int, default=30, help="functions listed per table (default: 30)")
    parser.add_argument("--log-level", default="warning", help="curlerd log level (default: warning)")
    options = parser.parse_args(argv)
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        parser.error("py-spy not found: install it with 'pip install py-spy'")

    with tempfile.TemporaryDirectory(prefix="curler-profile-") as directory:
        bench = run.Bench(directory, run.FULL, gearmand_threads=1)
        try:
            bench.start()
            worker = bench.curlerd(1, log_level=options.log_level)
            cases.start_and_warm_up(worker, bench.job_server, run.FULL.warmup)
            try:
                (child,) = worker.worker_pids()
                load.preload(bench.job_server, "curl", options.seconds * JOBS_PER_SECOND)
                raw_path = os.path.join(directory, "py-spy.txt")
                record(py_spy, child, options.seconds, options.rate, raw_path)
            finally:
                worker.stop()
            total, own, inclusive = summarize(raw_path)
        finally:
            bench.stop()

    if not total:
        print("py-spy recorded no samples", file=sys.stderr)
        return 1
    print(f"{total} samples of curlerd child {child}")
    print_counts("self (the function itself and the C calls it makes)", own, total, options.top)
    print_counts("inclusive (with the functions it calls)", inclusive, total, options.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
