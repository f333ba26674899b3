#!/usr/bin/env bash
# Install what is missing, then run the whole test suite in parallel.
# Extra arguments go to pytest, for example: ./test.sh tests/test_job.py -x
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh --test
exec .venv/bin/python -m pytest -n auto -p no:cacheprovider "$@"
