#!/usr/bin/env bash
# The browser end-to-end test of the chat demo (clients/ts/demo): headless Chromium from
# Debian, driven through playwright-core (no browser download); and the package as an app
# gets it (npm pack, the tarball installed into a temporary app, imported from Node,
# type-checked, the page served through an import map by the package's vendor tool).
#   bash .ci/browser.sh install   # Debian's chromium if missing (root or sudo), the demo's
#                                 # npm packages; a second install waits for a running one
#   bash .ci/browser.sh test      # builds the page, runs both tests against target/debug/zserver
#                                 # (clients/ts/demo: npm test; about 30 s)
# .ci/run starts `install` in the background, so that the download overlaps the Rust build.
set -euo pipefail
cd "$(dirname "$0")/.."

browser_install() {
  exec 9>"${TMPDIR:-/tmp}/zserver-browser-install.lock"
  flock 9
  # openssl makes the TLS test's certificate (tls.test.mjs).
  if ! command -v chromium >/dev/null || ! command -v openssl >/dev/null; then
    echo "== installing chromium (and openssl) from Debian's packages"
    local sudo=()
    if [ "$(id -u)" != 0 ]; then
      sudo=(sudo -n)
    fi
    # .ci/services.sh may just have updated the package lists: once is enough.
    if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -60 2>/dev/null | head -1)" ]; then
      "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends chromium openssl >/dev/null
  fi
  # The demo's own tools (esbuild, playwright-core).
  [ -d clients/ts/demo/node_modules ] || (cd clients/ts/demo && npm ci --no-audit --no-fund)
}

browser_test() {
  # The client library, whose sources (and @noble packages) are bundled into the page, and
  # whose TypeScript packs and type-checks the tarball; .ci/test's TypeScript step has
  # installed it already. The tarball's dependencies come from npm's cache (--prefer-offline).
  [ -d clients/ts/node_modules ] || (cd clients/ts && npm ci --no-audit --no-fund)
  [ -x target/debug/zserver ] || cargo build -p zserver-cli
  (cd clients/ts/demo && npm test)
}

case "${1:-}" in
  install) browser_install ;;
  test) browser_test ;;
  *) echo "usage: $0 install|test" >&2; exit 2 ;;
esac
