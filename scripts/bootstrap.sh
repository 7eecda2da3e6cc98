#!/usr/bin/env bash
# Set up everything sdq needs on a fresh machine: a virtualenv with the project and its test
# tools, and redis-server; with --tests also chromium for the browser test. Safe to run again;
# it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # Installed first so the project's torch requirement is already met. On this project's CI
  # machines 2.13.0 is a CPU wheel on local disk; on a GPU host install the CUDA build you want.
  .venv/bin/pip install --quiet "torch==${SDQ_TORCH_VERSION:-2.13.0}"
fi
.venv/bin/pip install --quiet -e ".[dev]"

if ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server is missing: install Redis 7 (e.g. apt-get install redis-server)" >&2
    exit 1
  fi
fi

# The web page is tested in a real headless browser: Debian's chromium, driven by Playwright
# (the playwright pip package, a dev dependency; it never downloads a browser of its own).
if [ "${1:-}" = "--tests" ] && ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium is missing: install it (e.g. apt-get install chromium)" >&2
    exit 1
  fi
fi
