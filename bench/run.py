"""Benchmark curlerd against the dispatch ceiling and the original single-process design.

Run from the repository root:

    python bench/run.py            # 20,000 jobs per drain, about two minutes on 2 CPUs
    python bench/run.py --quick    # a few hundred jobs per drain, a smoke run

It starts a private gearmand and HTTP endpoints on 127.0.0.1, measures every
case in one run, prints one Markdown report and writes it into BENCHMARKS.md
between the result markers.
"""

import argparse
import dataclasses
import datetime
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time

import cases
import report
import servers
import workers
from curler import __version__, gearman, testing

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUTPUT = os.path.join(REPOSITORY, "BENCHMARKS.md")
SLOW_CHILDREN = 32
SLOW_DELAY = 0.05
SLOW_IDEAL_RATE = SLOW_CHILDREN / SLOW_DELAY
CHILDREN_PER_CPU_HIGH = 4
BUSY_LOAD_PER_CPU = 0.25


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Job counts of one run."""

    jobs: int                 # jobs per measured drain
    repeat: int               # drains per case in the main table, of which the median is reported
    warmup: int               # jobs run before each measured drain
    latency_samples: int      # jobs submitted one at a time for the latency percentiles
    latency_warmup: int       # jobs submitted one at a time before the timed ones
    slow_jobs: int            # jobs through curlerd against the slow endpoint
    slow_baseline_jobs: int   # jobs through (b) against the slow endpoint, 20 per second at most
    growth_total: int         # jobs through one child while its RSS is sampled
    growth_step: int          # jobs between two RSS samples


FULL = Sizes(jobs=20000, repeat=3, warmup=500, latency_samples=300, latency_warmup=20, slow_jobs=3200,
             slow_baseline_jobs=60, growth_total=100000, growth_step=10000)
QUICK = Sizes(jobs=300, repeat=1, warmup=20, latency_samples=30, latency_warmup=5, slow_jobs=320,
              slow_baseline_jobs=10, growth_total=1000, growth_step=200)


class Bench:
    """The servers of one run and the job counts to use with them."""

    def __init__(self, directory, sizes, gearmand_threads):
        self.directory = directory
        self.sizes = sizes
        self.cpus = os.cpu_count() or 1
        self.gearmand = testing.Gearmand(threads=gearmand_threads)
        self.endpoint = None

    @property
    def job_server(self):
        return self.gearmand.address

    def start(self):
        self.gearmand.start()
        self.endpoint = servers.start_fast_endpoint(self.directory)

    def stop(self):
        if self.endpoint is not None:
            self.endpoint.stop()
        self.gearmand.close()

    def curlerd(self, children, base_url=None, log_level="warning", name="curlerd"):
        return workers.Curlerd(self.job_server, base_url or self.endpoint.url, self.directory, children,
                               log_level=log_level, name=name)

    def requests_worker(self, base_url=None):
        return workers.requests_worker(self.job_server, base_url or self.endpoint.url, self.directory)


def progress(text):
    print(f"bench: {text}", file=sys.stderr, flush=True)


def throughput_cases(bench):
    """Return ``[(key, label, workers, factory)]`` for the drain table, in table order."""
    cpus = bench.cpus
    high = CHILDREN_PER_CPU_HIGH * cpus
    return [
        ("a", "(a) `gearman -w`, no command: dispatch only, no HTTP", 1,
         lambda: workers.gearman_cli(bench.job_server, bench.directory)),
        ("b", "(b) Python worker, `requests.Session.post` per job", 1, bench.requests_worker),
        ("c", "(c) curlerd, 1 child", 1, lambda: bench.curlerd(1)),
        ("c-info", "(c) curlerd, 1 child, log-level info (the default)", 1,
         lambda: bench.curlerd(1, log_level="info", name="curlerd-info")),
        ("d", f"(d) curlerd, {cpus} children (1 per CPU)", cpus, lambda: bench.curlerd(cpus)),
        ("d-high", f"(d) curlerd, {high} children ({CHILDREN_PER_CPU_HIGH} per CPU)", high,
         lambda: bench.curlerd(high)),
    ]


def run_drains(bench, table_cases, repeat):
    """Drain every case ``repeat`` times with the cases interleaved, and return the median drain of each."""
    runs = {}
    for round_number in range(1, repeat + 1):
        for key, label, _, factory in table_cases:
            worker = factory()
            if worker is None:
                if round_number == 1:
                    progress(f"{label}: skipped, the program is not installed")
                continue
            progress(f"{label}: draining {bench.sizes.jobs:,} jobs (run {round_number} of {repeat})")
            endpoint = None if key == "a" else bench.endpoint
            drain = cases.drain(worker, bench.job_server, bench.sizes.jobs, bench.sizes.warmup, endpoint)
            runs.setdefault(key, []).append(drain)
            progress(f"{label}: {drain.rate:,.0f} jobs/s, {drain.cpu_per_job * 1e6:.0f} µs CPU per job")
    return {key: cases.median_drain(drains) for key, drains in runs.items()}


def run_latency(bench):
    sizes = bench.sizes
    latencies = {}
    per_cpu = f"curlerd, {bench.cpus} children (1 per CPU)"
    for key, label, make in (("b", "(b) requests worker", bench.requests_worker),
                             ("d", per_cpu, lambda url: bench.curlerd(bench.cpus, url, name="curlerd-latency"))):
        endpoint = servers.BuiltinEndpoint(record=True).start()
        try:
            progress(f"idle dispatch latency, {label}: {sizes.latency_samples} jobs one at a time")
            latencies[key] = cases.latency(make(endpoint.url), bench.job_server, endpoint,
                                           sizes.latency_samples, sizes.latency_warmup)
        finally:
            endpoint.stop()
    return latencies


def run_slow(bench):
    sizes = bench.sizes
    endpoint = servers.BuiltinEndpoint(delay=SLOW_DELAY).start()
    slow = {}
    try:
        progress(f"slow endpoint, curlerd with {SLOW_CHILDREN} children: {sizes.slow_jobs:,} jobs")
        worker = bench.curlerd(SLOW_CHILDREN, base_url=endpoint.url, name="curlerd-slow")
        slow["curlerd"] = cases.drain(worker, bench.job_server, sizes.slow_jobs, 2 * SLOW_CHILDREN)
        progress(f"slow endpoint, (b) requests worker: {sizes.slow_baseline_jobs} jobs")
        worker = bench.requests_worker(endpoint.url)
        slow["b"] = cases.drain(worker, bench.job_server, sizes.slow_baseline_jobs, 1)
    finally:
        endpoint.stop()
    return slow


def run_growth(bench):
    sizes = bench.sizes
    progress(f"memory over {sizes.growth_total:,} jobs, curlerd with 1 child")
    worker = bench.curlerd(1, name="curlerd-growth")
    return cases.memory_growth(worker, bench.job_server, sizes.growth_total, sizes.growth_step, sizes.warmup)


def read_cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def program_version(command):
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "not installed"
    first_line = (result.stdout or result.stderr).strip().splitlines()[0]
    # gearmand appends " - <bug tracker URL>" to its version.
    return first_line.split(" - ")[0]


def git_revision():
    """Return the checked-out commit, marked when the tree has uncommitted changes."""
    try:
        commit = subprocess.run(["git", "-C", REPOSITORY, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        changes = subprocess.run(["git", "-C", REPOSITORY, "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + (" with uncommitted changes" if changes else "")


def command_line(argv):
    script = os.path.relpath(os.path.abspath(sys.argv[0]), REPOSITORY)
    return shlex.join(["python", script, *argv])


def machine_info(bench, argv, started):
    return {
        "Date (UTC)": started.strftime("%Y-%m-%d %H:%M"),
        "Command": f"`{command_line(argv)}`",
        "CPUs": f"{bench.cpus} × {read_cpu_model()}",
        "System": platform.platform(),
        "Python": platform.python_version(),
        "curler": f"{__version__} (commit {git_revision()})",
        "gearmand": f"{program_version([testing.find_gearmand(), '--version'])}, --threads {bench.gearmand.threads}",
        "Fast endpoint": bench.endpoint.describe(),
        "Drains per case": f"{bench.sizes.repeat} (the table shows the median)",
        "Load average at the start": format_load(),
    }


def format_load():
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min)"


def warn_if_busy(cpus):
    """Print a warning when other processes keep the CPUs busy, because they skew every figure."""
    one, _, _ = os.getloadavg()
    if one > BUSY_LOAD_PER_CPU * cpus:
        progress(f"warning: the load average is {one:.2f} on {cpus} CPUs; "
                 "other processes will make the figures lower and noisier")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Benchmark curlerd against `gearman -w` and a requests-based worker on this machine.")
    parser.add_argument("--quick", action="store_true",
                        help="run a few hundred jobs per case instead of the full counts, to check that it works")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help=f"jobs per measured drain (default: {FULL.jobs:,}, or {QUICK.jobs} with --quick)")
    parser.add_argument("--repeat", type=int, default=None, metavar="N",
                        help=f"drains per case in the main table, reporting the median "
                             f"(default: {FULL.repeat}, or {QUICK.repeat} with --quick)")
    parser.add_argument("--gearmand-threads", type=int, default=1, metavar="N",
                        help="I/O threads of the private gearmand (default: 1)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, metavar="PATH",
                        help="Markdown file whose result section is replaced (default: BENCHMARKS.md)")
    options = parser.parse_args(argv)
    if options.jobs is not None and options.jobs < 1:
        parser.error(f"--jobs must be 1 or more, got {options.jobs}")
    if options.repeat is not None and options.repeat < 1:
        parser.error(f"--repeat must be 1 or more, got {options.repeat}")
    if options.gearmand_threads < 0:
        parser.error(f"--gearmand-threads must be 0 or more, got {options.gearmand_threads}")
    return options


def run_all(argv, sizes, gearmand_threads, started):
    """Start the servers, measure every case and return the results."""
    with tempfile.TemporaryDirectory(prefix="curler-bench-") as directory:
        bench = Bench(directory, sizes, gearmand_threads)
        try:
            bench.start()
            table_cases = throughput_cases(bench)
            return report.Results(
                machine=machine_info(bench, argv, started),
                cpus=bench.cpus,
                table_cases=[(key, label, count) for key, label, count, _ in table_cases],
                drains=run_drains(bench, table_cases, sizes.repeat),
                latencies=run_latency(bench),
                slow=run_slow(bench),
                slow_ideal=SLOW_IDEAL_RATE,
                growth=run_growth(bench),
            )
        finally:
            bench.stop()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    options = parse_args(argv)
    sizes = QUICK if options.quick else FULL
    if options.jobs is not None:
        sizes = dataclasses.replace(sizes, jobs=options.jobs)
    if options.repeat is not None:
        sizes = dataclasses.replace(sizes, repeat=options.repeat)
    started = datetime.datetime.now(datetime.timezone.utc)
    clock = time.monotonic()
    warn_if_busy(os.cpu_count() or 1)
    try:
        results = run_all(argv, sizes, options.gearmand_threads, started)
    except (OSError, RuntimeError, TimeoutError, gearman.GearmanError) as error:
        progress(f"benchmark failed: {error}")
        return 1
    results.machine["Load average at the end"] = format_load()
    results.machine["Run time"] = f"{time.monotonic() - clock:.0f} s"
    text = report.render(results)
    print(text)
    report.write(options.output, text)
    progress(f"results written to {options.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
