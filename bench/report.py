"""Render the results as Markdown (machine, tables with ratios to case (b), targets) and write them into BENCHMARKS.md."""

import dataclasses
import os

MIB = 1024 * 1024
START_MARKER = "<!-- bench/run.py results: start -->"
END_MARKER = "<!-- bench/run.py results: end -->"
DOCUMENT_HEADER = "# Benchmarks\n\n"
BASELINE = "b"
NOT_MEASURED = "—"


@dataclasses.dataclass
class Results:
    """Everything one run measured, keyed by case: ``a``, ``b``, ``c``, ``c-info``, ``d``, ``d-high``."""

    machine: dict
    cpus: int
    table_cases: list  # (key, label, worker count) in table order
    drains: dict
    latencies: dict
    slow: dict  # "b" and "curlerd" against the slow endpoint
    slow_ideal: float
    growth: object


@dataclasses.dataclass
class Target:
    """One goal from the performance targets, with the measured value it is checked against."""

    name: str
    value: float  # None when the case was not measured
    goal: float
    minimum: bool  # True when the value must reach the goal, False when it must stay at or under it
    unit: str
    strict: bool = False  # True when the value must stay strictly under the goal

    @property
    def met(self):
        if self.value is None:
            return None
        if self.minimum:
            return self.value >= self.goal
        return self.value < self.goal if self.strict else self.value <= self.goal

    def verdict(self):
        if self.met is None:
            return "not measured"
        if self.met:
            return "yes"
        if self.minimum:
            return f"no: {(1 - self.value / self.goal) * 100:.0f}% short"
        return f"no: {(self.value / self.goal - 1) * 100:.0f}% over"

    def goal_text(self):
        if self.minimum:
            relation = ">="
        elif self.strict:
            relation = "<"
        else:
            relation = "<="
        return f"{relation} {format_number(self.goal)}{self.unit}"


def format_number(value):
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio(value, baseline):
    if value is None or not baseline:
        return NOT_MEASURED
    return f"{value / baseline:.2f}×"


def mib(value):
    return f"{value / MIB:.1f}"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def render(results):
    """Return the Markdown report of one run."""
    growth = results.growth
    jobs = growth.step * (len(growth.samples) - 1)
    parts = [
        machine_section(results.machine),
        "### Drain rate and CPU time per job",
        drain_section(results.table_cases, results.drains),
        "### Memory",
        memory_section(memory_rows(results), process_memory(results.drains.get(BASELINE))),
        "### Idle dispatch latency",
        latency_section(results.latencies, (("b", "(b) requests worker"),
                                            ("d", f"curlerd, {results.cpus} children (1 per CPU)"))),
        "### Slow endpoint",
        slow_section(results.slow, results.slow_ideal),
        f"### Memory over {jobs:,} jobs",
        growth_section(growth),
        "### Targets",
        targets_section(build_targets(results)),
    ]
    return "\n\n".join(parts) + "\n"


def process_memory(drain):
    return drain.memory[0] if drain is not None and drain.memory else None


def largest_uss(memory):
    return max(memory, key=lambda pair: pair[1]) if memory else None


def curlerd_child_memory(results):
    """Return every curlerd child's ``(rss, uss)`` measured in the run."""
    memory = []
    for key in ("c", "c-info", "d", "d-high"):
        if key in results.drains:
            memory += results.drains[key].memory
    if "curlerd" in results.slow:
        memory += results.slow["curlerd"].memory
    return memory


def memory_rows(results):
    drains = results.drains
    rows = []
    if "b" in drains:
        rows.append(("(b) requests worker", process_memory(drains["b"])))
    if "c" in drains:
        rows.append(("(c) curlerd child, 1 child", process_memory(drains["c"])))
    if "c-info" in drains:
        rows.append(("(c) curlerd child, 1 child, log-level info", process_memory(drains["c-info"])))
    for key in ("d", "d-high"):
        if key in drains:
            count = len(drains[key].memory)
            rows.append((f"(d) curlerd child with the largest USS of {count}", largest_uss(drains[key].memory)))
    if "d" in drains and drains["d"].supervisor_memory:
        rows.append(("(d) curlerd supervisor", drains["d"].supervisor_memory))
    if "curlerd" in results.slow:
        memory = results.slow["curlerd"].memory
        rows.append((f"curlerd child with the largest USS of {len(memory)} (slow endpoint)", largest_uss(memory)))
    return rows


def share(part, whole, scale=1.0):
    if part is None or whole is None:
        return None
    return part / whole * scale


def build_targets(results):
    drains = results.drains
    rate = {key: drain.rate for key, drain in drains.items()}
    cpu = {key: drain.cpu_per_job for key, drain in drains.items()}
    children = curlerd_child_memory(results)
    latency = results.latencies.get("d")
    slow = results.slow.get("curlerd")
    growth = results.growth
    jobs = growth.step * (len(growth.samples) - 1)
    return [
        Target("curlerd 1 child: jobs/s as a multiple of (b)", share(rate.get("c"), rate.get("b")),
               3.5, minimum=True, unit="×"),
        Target("curlerd 1 child: CPU per job as a multiple of (b)", share(cpu.get("c"), cpu.get("b")),
               0.2, minimum=False, unit="×"),
        Target(f"curlerd {results.cpus} children (1 per CPU): jobs/s as a share of (a)",
               share(rate.get("d"), rate.get("a"), 100), 55, minimum=True, unit="%"),
        Target("Largest curlerd child USS after warm-up",
               max(uss for _, uss in children) / MIB if children else None, 12, minimum=False, unit=" MiB"),
        Target("Idle dispatch latency p99, curlerd", latency.p99 * 1000 if latency else None,
               5, minimum=False, unit=" ms"),
        Target(f"Slow endpoint, 32 children: share of the ideal {results.slow_ideal:.0f} jobs/s",
               share(slow and slow.rate, results.slow_ideal, 100), 90, minimum=True, unit="%"),
        Target(f"Child RSS growth over {jobs:,} jobs", growth.growth / MIB, 5, minimum=False,
               unit=" MiB", strict=True),
    ]


def machine_section(machine):
    rows = [(name, value) for name, value in machine.items()]
    return table(("Machine and run", ""), rows)


def drain_section(cases, drains):
    baseline = drains.get(BASELINE)
    rows = []
    for key, label, workers in cases:
        drain = drains.get(key)
        if drain is None:
            rows.append((label, workers, NOT_MEASURED, NOT_MEASURED, NOT_MEASURED, NOT_MEASURED, NOT_MEASURED))
            continue
        rows.append((label, workers, f"{drain.jobs:,}", format_number(drain.rate),
                     ratio(drain.rate, baseline and baseline.rate),
                     format_number(drain.cpu_per_job * 1e6),
                     ratio(drain.cpu_per_job, baseline and baseline.cpu_per_job)))
    return table(("Case", "Workers", "Jobs", "Jobs/s", "Jobs/s × (b)", "CPU µs/job", "CPU × (b)"), rows)


def memory_section(memory_rows, baseline_memory):
    """Return the memory table of ``[(label, (rss, uss))]`` rows, with ratios to the (b) worker's RSS and USS."""
    rows = []
    for label, (rss, uss) in memory_rows:
        rows.append((label, mib(rss), ratio(rss, baseline_memory and baseline_memory[0]),
                     mib(uss), ratio(uss, baseline_memory and baseline_memory[1])))
    return table(("Process (after its drain)", "RSS MiB", "RSS × (b)", "USS MiB", "USS × (b)"), rows)


def latency_section(latencies, labels):
    baseline = latencies.get(BASELINE)
    rows = []
    for key, label in labels:
        result = latencies.get(key)
        if result is None:
            continue
        rows.append((label, len(result.samples), f"{result.p50 * 1000:.2f}",
                     ratio(result.p50, baseline and baseline.p50),
                     f"{result.p99 * 1000:.2f}", ratio(result.p99, baseline and baseline.p99)))
    return table(("Idle dispatch latency", "Jobs", "p50 ms", "p50 × (b)", "p99 ms", "p99 × (b)"), rows)


def slow_section(slow, ideal):
    baseline = slow.get(BASELINE)
    rows = []
    for key, label in (("b", "(b) requests worker, 1 process"), ("curlerd", "curlerd, 32 children")):
        drain = slow.get(key)
        if drain is None:
            continue
        rows.append((label, f"{drain.jobs:,}", format_number(drain.rate), f"{drain.rate / ideal * 100:.0f}%",
                     ratio(drain.rate, baseline and baseline.rate)))
    return table(("Endpoint waits 50 ms per request", "Jobs", "Jobs/s", "Of ideal 640", "Jobs/s × (b)"), rows)


def growth_section(growth):
    rows = []
    for index, sample in enumerate(growth.samples):
        rows.append((f"{index * growth.step:,}", mib(sample), mib(sample - growth.samples[0])))
    return table(("Jobs after warm-up", "Child RSS MiB", "Growth MiB"), rows)


def targets_section(targets):
    rows = [(t.name, NOT_MEASURED if t.value is None else format_number(t.value) + t.unit,
             t.goal_text(), t.verdict()) for t in targets]
    return table(("Target", "Measured", "Goal", "Met"), rows)


def write(path, block):
    """Put ``block`` between the result markers of ``path``, creating the file or the markers if missing."""
    marked = f"{START_MARKER}\n{block.rstrip()}\n{END_MARKER}\n"
    try:
        with open(path, encoding="utf-8") as document:
            text = document.read()
    except FileNotFoundError:
        text = DOCUMENT_HEADER
    start = text.find(START_MARKER)
    end = text.find(END_MARKER)
    if start >= 0 and end > start:
        rest = text[end + len(END_MARKER):].lstrip("\n")
        text = text[:start] + marked + ("\n" + rest if rest else "")
    else:
        text = text.rstrip("\n") + "\n\n" + marked
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as document:
        document.write(text)
    os.replace(temporary, path)
