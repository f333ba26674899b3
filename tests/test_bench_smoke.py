"""The benchmark script: a quick run end to end, and the replacement of its section in the results file.

No timing is checked, only that the numbers are there.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPOSITORY, "bench")
RUN_TIMEOUT = 240


def load_report_module():
    """Import bench/report.py under its own name, because bench/ is a directory of scripts and not a package."""
    spec = importlib.util.spec_from_file_location("bench_report", os.path.join(BENCH, "report.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = load_report_module()

SECTIONS = ("### Drain rate and CPU time per job", "### Memory", "### Idle dispatch latency",
            "### Slow endpoint", "### Targets")
CASES = ("(b) Python worker", "(c) curlerd, 1 child", "(d) curlerd")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("bench") / "BENCHMARKS.md"
    output.write_text("# Benchmarks\n\nText before the results.\n")
    result = subprocess.run([sys.executable, os.path.join(BENCH, "run.py"), "--quick", "--output", str(output)],
                            cwd=REPOSITORY, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    return result, output


def test_quick_run_exits_zero(quick_run):
    result, _ = quick_run
    assert result.returncode == 0, result.stderr[-4000:]


def test_quick_run_prints_every_section(quick_run):
    result, _ = quick_run
    for section in SECTIONS:
        assert section in result.stdout


def test_quick_run_measures_each_case(quick_run):
    result, _ = quick_run
    for case in CASES:
        rows = [line for line in result.stdout.splitlines() if line.startswith(f"| {case}")]
        assert rows, f"no row for {case}"
        assert "—" not in rows[0], rows[0]


def test_quick_run_writes_output_file(quick_run):
    result, output = quick_run
    text = output.read_text()
    assert text.startswith("# Benchmarks\n\nText before the results.\n")
    assert text.count(report.START_MARKER) == 1
    assert text.count(report.END_MARKER) == 1
    assert result.stdout.strip() in text


def test_write_replaces_marked_section(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nIntro.\n")
    report.write(str(path), "first table\n")
    path.write_text(path.read_text() + "\n## Notes\n\nKept.\n")
    report.write(str(path), "second table\n")
    text = path.read_text()
    assert "first table" not in text
    assert "second table" in text
    assert text.startswith("# Benchmarks\n\nIntro.\n")
    assert text.endswith("## Notes\n\nKept.\n")
    assert text.count(report.START_MARKER) == 1


def test_write_creates_missing_file(tmp_path):
    path = tmp_path / "new.md"
    report.write(str(path), "a table\n")
    text = path.read_text()
    assert text.startswith("# Benchmarks\n")
    assert f"{report.START_MARKER}\na table\n{report.END_MARKER}\n" in text
