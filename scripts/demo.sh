#!/usr/bin/env bash
# Run the whole service locally (tiny offline model, local Redis, local S3), submit the seed's
# two sample prompts, save the images under out/, then stop everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh

PORT=${SDQ_DEMO_PORT:-8000}
API="http://127.0.0.1:$PORT"
.venv/bin/sdq up --port "$PORT" --data-dir .sdq &
STACK=$!
trap 'kill -TERM $STACK 2>/dev/null; wait $STACK 2>/dev/null || true' EXIT

.venv/bin/sdq ready --api-url "$API" --timeout 300
.venv/bin/sdq submit --api-url "$API" --wait --out out --steps 25 \
  "a photograph of an astronaut riding a horse" \
  "a photograph of a cat riding a horse"
echo
echo "Images are in out/. To keep the service running: .venv/bin/sdq up"
