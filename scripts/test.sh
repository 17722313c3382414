#!/usr/bin/env bash
# Install everything the test suite needs, then run it. The README's test command and
# .ci/run both call this script, so a green run here means a fresh machine works too.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: DCMTK (DIMSE peer tests). Installed only when missing and when we may.
# Checked by path: pynetdicom installs console scripts of the same names (storescu,
# findscu, ...) that `command -v` would find instead of DCMTK's.
need_apt=()
[ -x /usr/bin/storescu ] || need_apt+=(dcmtk)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)  # web viewer browser tests (tests/browser)
# Firefox for the same flow over WebDriver BiDi (tests/browser/test_firefox.py).
[ -x /usr/bin/firefox-esr ] || need_apt+=(firefox-esr)
# CJK font: the zh-CN patient pages render as glyphs, not boxes, in the screenshots.
[ -f /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc ] || need_apt+=(fonts-noto-cjk)
# Orthanc + its DICOMweb plugin: the other PACS in tests/e2e/test_orthanc_peer.py.
[ -x /usr/sbin/Orthanc ] || need_apt+=(orthanc orthanc-dicomweb)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing system packages: ${need_apt[*]}"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "warning: ${need_apt[*]} missing and cannot be installed here; tests needing them skip"
  fi
fi

# PostgreSQL: the machine starts it; start it if it is installed but stopped.
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
# First-party plugins (issue 7), each its own distribution in the `pacsd` entry-point group.
for plugin in plugins/pacsd-*/; do python3 -m pip install -q --disable-pip-version-check -e "$plugin"; done
# The web viewer (viewer-web/): npm ci, its unit tests, the build the browser tests use.
bash scripts/build-viewer.sh
# A stock OHIF build (npm @ohif/app dist, pinned) for the OHIF compatibility test
# (tests/browser/test_ohif.py); warns and the test skips when npm or the registry is missing.
bash scripts/fetch-ohif.sh
# The OpenID Connect provider the OIDC login tests run (panva/oidc-provider, pinned by
# tests/security/oidc/package-lock.json; needs node, like the viewer build).
(cd tests/security/oidc && npm ci --no-audit --no-fund --silent)
exec python3 -m pytest "$@"
