"""The Prometheus metrics endpoint, served by the supervisor from a background thread.

Children never call this module: each one adds to the counters in its own
scoreboard slot, and every scrape sums the live slots with the totals kept
from children that already exited. The supervisor forks children from its
main thread while the server thread runs, so a child closes the sockets it
inherited from the server (``close_in_child``) and never runs the thread.
"""

import logging
import socket
import socketserver
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from . import child as child_module
from . import scoreboard

log = logging.getLogger("curler.metrics")

# Values of the ``reason`` label of curler_child_restarts_total.
RESTART_REASONS = ("crash", "hang", "memory", "max_jobs", "setup_failed")
# Child states shown by curler_children; a free slot has no child.
CHILD_STATES = tuple(name.replace(" ", "_") for state, name in sorted(scoreboard.STATE_NAMES.items())
                     if state != scoreboard.FREE)
# Outcomes of curler_jobs_total. A retried job is also counted under its final
# outcome, so retries have their own metric and the outcomes add up to all jobs.
JOB_OUTCOMES = tuple(name for name in scoreboard.OUTCOMES if name != "retried")


def restart_reason(code, expected, kill_reason):
    """Return why a child exit needs a replacement, or None for an exit the supervisor asked for.

    ``code`` is the exit status, or None when a signal killed the child.
    """
    if kill_reason == "hang":
        return "hang"
    if code == child_module.EXIT_MAX_MEMORY:
        return "memory"
    if code == child_module.EXIT_MAX_JOBS:
        return "max_jobs"
    if expected:
        return None
    if code == child_module.EXIT_SETUP_FAILED:
        return "setup_failed"
    return "crash"


class Tally:
    """Job and HTTP counters summed over children, keyed by queue name where the scoreboard has a queue index."""

    def __init__(self):
        self.jobs = {}      # (queue, outcome) -> jobs
        self.retried = {}   # queue -> jobs that needed more than one attempt
        self.attempts = 0
        self.status_classes = [0] * 5
        self.request_errors = 0
        self.duration_microseconds = 0
        self.duration_count = 0
        self.buckets = [0] * len(scoreboard.DURATION_BUCKETS)

    def copy(self):
        other = Tally()
        other.jobs = dict(self.jobs)
        other.retried = dict(self.retried)
        other.attempts = self.attempts
        other.status_classes = list(self.status_classes)
        other.request_errors = self.request_errors
        other.duration_microseconds = self.duration_microseconds
        other.duration_count = self.duration_count
        other.buckets = list(self.buckets)
        return other

    def add(self, queues, counters):
        """Add one slot's ``counters``; the i-th queue block belongs to ``queues[i]``."""
        self.attempts += counters[scoreboard.ATTEMPTS]
        for index in range(5):
            self.status_classes[index] += counters[scoreboard.STATUS_CLASS + index]
        self.request_errors += counters[scoreboard.REQUEST_ERRORS]
        self.duration_microseconds += counters[scoreboard.DURATION_SUM]
        self.duration_count += counters[scoreboard.DURATION_COUNT]
        for index in range(len(self.buckets)):
            self.buckets[index] += counters[scoreboard.BUCKETS + index]
        for queue_index, queue in enumerate(queues[:scoreboard.MAX_QUEUES_PER_CHILD]):
            base = scoreboard.QUEUE_OUTCOMES + queue_index * len(scoreboard.OUTCOMES)
            for outcome_index, outcome in enumerate(scoreboard.OUTCOMES):
                value = counters[base + outcome_index]
                if outcome_index == scoreboard.RETRIED:
                    self.retried[queue] = self.retried.get(queue, 0) + value
                else:
                    self.jobs[(queue, outcome)] = self.jobs.get((queue, outcome), 0) + value


def latest(previous, current):
    """Return the element-wise maximum, so a counter never goes down between two scrapes."""
    if previous is None:
        return tuple(current)
    return tuple(max(a, b) for a, b in zip(previous, current))


def format_bound(bound):
    return "+Inf" if bound == float("inf") else repr(float(bound))


class Metrics:
    """The supervisor's metrics: a custom collector over the scoreboard and an HTTP server for it."""

    def __init__(self, supervisor):
        self.supervisor = supervisor
        self.lock = threading.Lock()
        self.exited = Tally()          # counters of children that exited
        self.seen = {}                 # pid -> (queues, counters last read) of children not yet reported exited
        self.restarts = dict.fromkeys(RESTART_REASONS, 0)
        self.failed_reloads = 0
        self.server = None
        self.thread = None
        self.registry = prometheus_client.CollectorRegistry()
        self.registry.register(Collector(self))
        prometheus_client.ProcessCollector(registry=self.registry)

    # -- hooks called by the supervisor ---------------------------------------

    def serve(self, address, port):
        """Listen on ``address``:``port`` and serve scrapes from a daemon thread."""
        self.listen(address, port)
        self.start()

    def listen(self, address, port):
        """Bind the listening socket; raise OSError naming the address when that fails."""
        try:
            family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
            server_class = type("MetricsServer", (MetricsServer,), {"address_family": family})
            self.server = make_server(address, port, prometheus_client.make_wsgi_app(self.registry),
                                      server_class, handler_class=QuietHandler)
        except OSError as error:
            raise OSError(error.errno, f"cannot listen on {format_address(address, port)} for metrics "
                          f"({error.strerror or error}): free the port or change metrics-port") from None

    def start(self):
        """Serve scrapes from a daemon thread, which must start after any fork that detaches."""
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)
        self.thread.start()
        host, port = self.server.server_address[:2]
        log.info("metrics endpoint listening on http://%s/metrics", format_address(host, port))

    def close_in_child(self):
        """Close, in a newly forked child, the sockets it inherited from the metrics server."""
        if self.server is not None:
            self.server.close_inherited()
            self.server = None
            self.thread = None

    def shutdown(self):
        """Stop the server thread and close the listening socket."""
        if self.server is None:
            return
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
        self.server = None
        self.thread = None

    def child_exited(self, child, code, expected, slot_view):
        """Keep the final counters of an exited child and count its restart reason."""
        with self.lock:
            queues, counters = self.seen.pop(child.pid, (None, None))
            self.exited.add(tuple(child.group.queues), latest(counters, slot_view.counters))
            reason = restart_reason(code, expected, child.kill_reason)
            if reason is not None and not self.supervisor.stopping:
                self.restarts[reason] += 1

    def reload_failed(self):
        """Count a SIGHUP whose configuration was invalid and left the running one in place."""
        with self.lock:
            self.failed_reloads += 1

    # -- read on each scrape ------------------------------------------------------

    def snapshot(self):
        """Return ``(tally, child states, restarts, reloads, failed reloads)`` as of now."""
        supervisor = self.supervisor
        with self.lock:
            children = dict(supervisor.children)
            states = dict.fromkeys(CHILD_STATES, 0)
            for slot in supervisor.board.slots():
                child = children.get(slot.pid)
                if child is None:
                    continue  # forked a moment ago, or reaped: its counters are zero or already kept
                state = slot.state_name.replace(" ", "_")
                states[state] = states.get(state, 0) + 1
                previous = self.seen.get(slot.pid, (None, None))[1]
                self.seen[slot.pid] = (tuple(child.group.queues), latest(previous, slot.counters))
            tally = self.exited.copy()
            for queues, counters in self.seen.values():
                tally.add(queues, counters)
            restarts = dict(self.restarts)
            failed_reloads = self.failed_reloads
        # The first generation is the start; each successful reload starts another.
        reloads = max(supervisor.generation - 1, 0)
        return tally, states, restarts, reloads, failed_reloads


class Collector:
    """Builds the curler_* metric families from a snapshot at each scrape."""

    def __init__(self, metrics):
        self.metrics = metrics

    def collect(self):
        tally, states, restarts, reloads, failed_reloads = self.metrics.snapshot()
        queues = list(self.metrics.supervisor.settings.job_queue)
        queues += sorted({queue for queue, _ in tally.jobs} - set(queues))

        jobs = CounterMetricFamily("curler_jobs", "Jobs finished, by queue and final outcome.",
                                   labels=["queue", "outcome"])
        retried = CounterMetricFamily("curler_jobs_retried", "Jobs that needed more than one HTTP attempt, "
                                      "also counted under their final outcome in curler_jobs_total.",
                                      labels=["queue"])
        for queue in queues:
            for outcome in JOB_OUTCOMES:
                jobs.add_metric([queue, outcome], tally.jobs.get((queue, outcome), 0))
            retried.add_metric([queue], tally.retried.get(queue, 0))
        yield jobs
        yield retried

        yield CounterMetricFamily("curler_http_attempts", "HTTP requests made to the web app, retries included.",
                                  value=tally.attempts)
        responses = CounterMetricFamily("curler_http_responses", "HTTP responses received, by status class.",
                                        labels=["status_class"])
        for index, count in enumerate(tally.status_classes):
            responses.add_metric([f"{index + 1}xx"], count)
        yield responses
        yield CounterMetricFamily("curler_http_request_errors",
                                  "HTTP attempts that got no response: connection errors and timeouts.",
                                  value=tally.request_errors)

        cumulative = 0
        buckets = []
        for bound, count in zip(scoreboard.DURATION_BUCKETS, tally.buckets):
            cumulative += count
            buckets.append((format_bound(bound), cumulative))
        yield HistogramMetricFamily("curler_job_duration_seconds",
                                    "Time from taking a job to its outcome, retries and backoff included.",
                                    buckets=buckets, sum_value=tally.duration_microseconds / 1e6)

        children = GaugeMetricFamily("curler_children", "Child processes alive, by state.", labels=["state"])
        for state, count in states.items():
            children.add_metric([state], count)
        yield children

        restart_family = CounterMetricFamily("curler_child_restarts",
                                             "Children replaced, by reason: crash, hang (killed after "
                                             "missing heartbeats), memory and max_jobs (recycled), setup_failed.",
                                             labels=["reason"])
        for reason, count in restarts.items():
            restart_family.add_metric([reason], count)
        yield restart_family

        reload_family = CounterMetricFamily("curler_reloads", "Configuration reloads (SIGHUP), by result.",
                                            labels=["result"])
        reload_family.add_metric(["success"], reloads)
        reload_family.add_metric(["failure"], failed_reloads)
        yield reload_family


class MetricsServer(socketserver.ThreadingMixIn, WSGIServer):
    """A thread-per-request WSGI server that remembers its open connections, so a forked child can close them."""

    daemon_threads = True

    def __init__(self, *args, **kwargs):
        self.connections = set()
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        self.connections.discard(request)
        super().shutdown_request(request)

    def close_inherited(self):
        """Close this process's copies of the sockets without shutting them down, which would end them for the parent too."""
        for connection in list(self.connections):
            connection.close()
        self.connections.clear()
        self.socket.close()


class QuietHandler(WSGIRequestHandler):
    """A request handler that logs nothing, so scrapes do not fill the log."""

    def log_message(self, format, *args):
        pass


def format_address(address, port):
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
