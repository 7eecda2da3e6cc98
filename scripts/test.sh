#!/usr/bin/env bash
# Install what the tests need, lint, and run the whole suite (unit and integration: real
# redis-server, rclone S3 server and Celery worker processes, all started by the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --tests
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/pytest "$@"
