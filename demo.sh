#!/usr/bin/env bash
# Install what is missing, then run the demo: gearmand, the example web app and
# curlerd on loopback, one job submitted and shown arriving as a form POST.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
exec .venv/bin/python examples/demo.py
