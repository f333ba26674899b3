"""The measurements: drain rate and CPU per job, memory, idle dispatch latency and memory over many jobs.

Each function starts the worker it is given, measures, and stops it again.
"""

import dataclasses
import os
import signal
import statistics
import time

import load
import measure
import workers
from curler import gearman

REGISTER_TIMEOUT = 30.0
# Drains slower than this many jobs per second count as hung.
MIN_RATE = 20.0
DRAIN_TIMEOUT_MARGIN = 60.0
# Seconds between two latency samples, so the workers are asleep (PRE_SLEEP
# sent, waiting for NOOP) when the next job arrives.
IDLE_GAP = 0.02
ARRIVAL_TIMEOUT = 10.0


@dataclasses.dataclass
class Drain:
    """One drain of a preloaded queue: wall time, CPU time and the memory of each worker process."""

    jobs: int
    seconds: float
    cpu_seconds: float
    delivered: int = None
    memory: list = dataclasses.field(default_factory=list)  # (rss, uss) per process that took jobs
    supervisor_memory: tuple = None

    @property
    def rate(self):
        return self.jobs / self.seconds

    @property
    def cpu_per_job(self):
        return self.cpu_seconds / self.jobs


@dataclasses.dataclass
class Latency:
    """Seconds from a background job's submission to its POST arriving, one sample per job."""

    samples: list

    @property
    def p50(self):
        return statistics.median(self.samples)

    @property
    def p99(self):
        return statistics.quantiles(self.samples, n=100, method="inclusive")[98]


@dataclasses.dataclass
class MemoryGrowth:
    """The one child's RSS after warm-up and after each step of jobs."""

    step: int
    samples: list  # bytes, the first taken after warm-up

    @property
    def growth(self):
        return max(self.samples) - self.samples[0]


def median_drain(drains):
    """Combine repeated drains of one case: median wall and CPU time, memory of the last drain."""
    last = drains[-1]
    delivered = [d.delivered for d in drains if d.delivered is not None]
    return Drain(jobs=last.jobs,
                 seconds=statistics.median(d.seconds for d in drains),
                 cpu_seconds=statistics.median(d.cpu_seconds for d in drains),
                 delivered=min(delivered) if delivered else None,
                 memory=last.memory,
                 supervisor_memory=last.supervisor_memory)


def drain_timeout(jobs):
    return jobs / MIN_RATE + DRAIN_TIMEOUT_MARGIN


def start_and_warm_up(worker, job_server, warmup):
    """Start ``worker``, wait until all its Gearman workers registered, then run ``warmup`` jobs."""
    worker.start()
    try:
        load.wait_for_workers(job_server, workers.QUEUE, worker.worker_count, REGISTER_TIMEOUT)
        load.preload(job_server, workers.QUEUE, warmup)
        load.wait_drained(job_server, workers.QUEUE, drain_timeout(warmup), check=worker.check)
    except Exception:
        worker.stop()
        raise


def signal_all(pids, signum):
    for pid in pids:
        os.kill(pid, signum)


def drain(worker, job_server, jobs, warmup, endpoint=None):
    """Measure how fast ``worker`` drains ``jobs`` preloaded jobs, and its memory afterwards.

    The processes that take jobs are stopped with SIGSTOP while the queue is
    loaded and continued together, so the clock and the CPU count start with
    a full queue and warm workers. When ``endpoint`` counts requests, the
    drain must have delivered at least one request per job.
    """
    start_and_warm_up(worker, job_server, warmup)
    try:
        pids = worker.worker_pids()
        signal_all(pids, signal.SIGSTOP)
        try:
            load.preload(job_server, workers.QUEUE, jobs)
            served_before = endpoint.requests_served() if endpoint is not None else None
            cpu_before = measure.tree_cpu_seconds(worker.pid)
            started = time.monotonic()
        finally:
            signal_all(pids, signal.SIGCONT)
        finished = load.wait_drained(job_server, workers.QUEUE, drain_timeout(jobs), check=worker.check)
        cpu_after = measure.tree_cpu_seconds(worker.pid)
        result = Drain(jobs=jobs, seconds=finished - started, cpu_seconds=cpu_after - cpu_before)
        if served_before is not None:
            # Both stub_status reads count themselves once.
            result.delivered = endpoint.requests_served() - served_before - 1
            check_delivered(result)
        result.memory = [measure.memory(pid) for pid in worker.worker_pids()]
        if worker.worker_pids() != [worker.pid]:
            result.supervisor_memory = measure.memory(worker.pid)
        return result
    finally:
        worker.stop()


def check_delivered(result):
    if result.delivered < result.jobs:
        raise RuntimeError(f"the queue drained, but the endpoint received only {result.delivered} requests "
                           f"for {result.jobs} jobs: the worker completed jobs without delivering them")


def latency(worker, job_server, endpoint, samples, warmup):
    """Submit ``samples`` jobs one at a time to an idle ``worker`` and time each until its POST arrives.

    ``endpoint`` must record arrivals (BuiltinEndpoint with ``record=True``).
    """
    start_and_warm_up(worker, job_server, 0)
    try:
        with gearman.Client([gearman.parse_server(job_server)]) as client:
            for _ in range(warmup):
                client.submit_background(workers.QUEUE, load.PAYLOAD)
                endpoint.next_arrival(ARRIVAL_TIMEOUT)
            times = []
            for _ in range(samples):
                time.sleep(IDLE_GAP)
                submitted = time.monotonic()
                client.submit_background(workers.QUEUE, load.PAYLOAD)
                times.append(endpoint.next_arrival(ARRIVAL_TIMEOUT) - submitted)
        load.wait_drained(job_server, workers.QUEUE, drain_timeout(1), check=worker.check)
        return Latency(times)
    finally:
        worker.stop()


def memory_growth(worker, job_server, total, step, warmup):
    """Run ``total`` jobs through a one-child curlerd in steps, and sample the child's RSS after each."""
    start_and_warm_up(worker, job_server, warmup)
    try:
        (child,) = worker.worker_pids()
        samples = [measure.rss(child)]
        for _ in range(total // step):
            load.preload(job_server, workers.QUEUE, step)
            load.wait_drained(job_server, workers.QUEUE, drain_timeout(step), check=worker.check)
            if worker.worker_pids() != [child]:
                raise RuntimeError(f"curlerd replaced child {child} during the memory run: "
                                   + worker.log_tail())
            samples.append(measure.rss(child))
        return MemoryGrowth(step, samples)
    finally:
        worker.stop()
