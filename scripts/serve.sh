#!/usr/bin/env bash
# The README's first command: install pacsd with its first-party plugins, build the web
# viewer (skipped with a warning when Node.js/npm are missing), then run the server with
# embedded defaults (SQLite + ./pacsd-data, HTTP on 127.0.0.1:8042). Arguments go to
# `pacsd serve` (e.g. --config FILE, --data-dir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check .
for plugin in plugins/pacsd-*/; do
  python3 -m pip install -q --disable-pip-version-check "$plugin"
done
bash scripts/build-viewer.sh
exec pacsd serve "$@"
