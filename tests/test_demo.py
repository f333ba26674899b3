"""The README's demo: gearmand, the example web app and curlerd, one job end to end."""

import os
import subprocess
import sys

DEMO = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "demo.py")


def test_demo_shows_job_arriving():
    result = subprocess.run([sys.executable, DEMO], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "webapp: POST /jobs/generate_archive user_id=5" in result.stdout
    assert "demo finished" in result.stdout
