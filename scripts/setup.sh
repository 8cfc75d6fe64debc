#!/usr/bin/env bash
# Installs everything a fresh machine lacks into the project: Debian packages (when missing),
# the Python environment at .venv/ (from requirements-dev.lock), and the Kafka jars from Maven
# Central into .lakeward/lib/. Idempotent: a second run changes nothing and takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }
fail() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# --- Debian packages -------------------------------------------------------------------------
missing=()
ldconfig -p | grep -q 'libcurl.so.4 ' || missing+=(libcurl4)
ldconfig -p | grep -q 'libssl.so.3 ' || missing+=(libssl3)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v prometheus >/dev/null || missing+=(prometheus)
# amtool checks the Alertmanager config (tests/test_alerting.py).
command -v amtool >/dev/null || missing+=(prometheus-alertmanager)
# The Temporal Web UI test drives it headless (Playwright, no browser download).
command -v chromium >/dev/null || missing+=(chromium)
# The lease tests run a private PostgreSQL for OpenBao's database engine (tests/test_vault_leases.py).
command -v initdb >/dev/null || [[ -x /usr/lib/postgresql/15/bin/initdb ]] || missing+=(postgresql)
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    fail "missing Debian packages: ${missing[*]}; install with: sudo apt-get install -y ${missing[*]}"
  fi
  say "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Python environment ----------------------------------------------------------------------
PYTHON=${PYTHON:-}
if [[ -z $PYTHON ]]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PYTHON=$candidate; break
    fi
  done
fi
[[ -n $PYTHON ]] || fail "Python 3.11 is required; install it with: sudo apt-get install -y python3.11 python3.11-venv"

if [[ ! -x .venv/bin/python ]]; then
  say "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -m uv --version >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q 'uv==0.13.9'
fi
# Exact versions from the lock, then the project itself (editable) without re-resolving.
.venv/bin/python -m uv pip install -q --python .venv/bin/python -r requirements-dev.lock
.venv/bin/python -m uv pip install -q --python .venv/bin/python --no-deps -e .

# --- Jars from Maven Central -----------------------------------------------------------------
.venv/bin/lakeward stack setup --all >/dev/null
say "ready: .venv/bin/lakeward $(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("lakeward"))')"
