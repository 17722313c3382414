#!/usr/bin/env bash
# Fetch a stock, unmodified, prebuilt OHIF viewer for the OHIF compatibility test
# (tests/browser/test_ohif.py; issue 8 item 5): the `dist/` of npm @ohif/app, pinned by
# version and sha512 (tests/ohif/ohif-app.pin), unpacked to tests/ohif/dist (not committed).
#
# Why `npm pack` rather than `npm ci`: @ohif/app's dist is a self-contained webpack build,
# but the package also declares its monorepo siblings as dependencies, some of which are
# not published at matching versions (@ohif/i18n 3.x), so `npm install @ohif/app` cannot
# resolve; the tarball alone is all that is served. Exits 0 with a warning when npm is
# missing or the registry cannot be reached (the test then skips); --strict fails instead.
set -euo pipefail
strict="${1:-}"
cd "$(dirname "$0")/../tests/ohif"
# shellcheck disable=SC1091
source ./ohif-app.pin          # OHIF_PACKAGE, OHIF_VERSION, OHIF_INTEGRITY
stamp="dist/.pacsd-ohif-version"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$OHIF_PACKAGE@$OHIF_VERSION" ]; then
  exit 0
fi
fail() {
  echo "warning: $*: the OHIF compatibility test will skip" >&2
  [ "$strict" = "--strict" ] && exit 1
  exit 0
}
command -v npm >/dev/null 2>&1 || fail "npm not installed"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching $OHIF_PACKAGE@$OHIF_VERSION (stock OHIF build) for tests/ohif"
npm pack "$OHIF_PACKAGE@$OHIF_VERSION" --pack-destination "$tmp" --silent >/dev/null \
  || fail "npm pack $OHIF_PACKAGE@$OHIF_VERSION failed"
tgz=$(ls "$tmp"/*.tgz)
got=$(python3 -c 'import base64, hashlib, sys
print("sha512-" + base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$tgz")
if [ "$got" != "$OHIF_INTEGRITY" ]; then
  echo "error: $tgz has $got, the pin says $OHIF_INTEGRITY" >&2
  exit 1
fi
rm -rf dist dist.new
mkdir dist.new
tar xzf "$tgz" -C dist.new --strip-components=2 package/dist
echo "$OHIF_PACKAGE@$OHIF_VERSION" > dist.new/.pacsd-ohif-version
mv dist.new dist
echo "OHIF unpacked: $(pwd)/dist"
