#!/usr/bin/env bash
# Build the web viewer (viewer-web/ -> viewer-web/dist) that `pacsd serve` serves at
# /viewer (R-D1; docs/viewer.md). Needs Node.js 20.19+ and npm; installs exactly the
# locked dependencies (npm ci). Exits 0 with a warning when npm is missing, so set-up
# scripts can call it unconditionally; pass --strict to fail instead.
set -euo pipefail
cd "$(dirname "$0")/../viewer-web"
if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
  echo "warning: node/npm not installed: the web viewer is not built (/viewer answers 404)" >&2
  [ "${1:-}" = "--strict" ] && exit 1
  exit 0
fi
echo "building the web viewer (npm ci && npm run build in viewer-web/)"
npm ci --no-audit --no-fund --loglevel=error
npm test --silent
npm run build --silent >/dev/null
echo "web viewer built: $(pwd)/dist (pacsd serves it at /viewer)"
