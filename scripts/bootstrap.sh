#!/usr/bin/env bash
# Install what curler's demo and tests need: gearmand (Debian package
# gearman-job-server), Python's venv module, and a virtualenv in .venv with
# curler and its test tools. With --test it also installs openssl (tests make
# a TLS certificate) and logrotate (tests check the logrotate file).
# Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${CURLER_VENV:-.venv}
PYTHON=${PYTHON:-python3}
missing=()

if [ "${1:-}" = "--test" ]; then
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    command -v logrotate >/dev/null 2>&1 || [ -x /usr/sbin/logrotate ] || missing+=(logrotate)
fi

if ! command -v gearmand >/dev/null 2>&1 && [ ! -x /usr/sbin/gearmand ]; then
    missing+=(gearman-job-server)
fi
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "bootstrap: $PYTHON not found: install Python 3.11 or newer, or set PYTHON=/path/to/python3" >&2
    exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "bootstrap: curler needs Python 3.11 or newer, but $PYTHON is $("$PYTHON" -V 2>&1);" \
         "set PYTHON=/path/to/python3.11" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ] && ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=("python3-venv")
fi

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        sudo=()
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo=(sudo)
    else
        echo "bootstrap: missing ${missing[*]}: install with 'sudo apt-get install ${missing[*]}'" \
             "(or run this script as root), then run it again" >&2
        exit 1
    fi
    echo "bootstrap: installing ${missing[*]} with apt-get"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "bootstrap: creating the virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.curler-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "bootstrap: installing curler and its test tools into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    touch "$stamp"
fi
