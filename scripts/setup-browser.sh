#!/usr/bin/env bash
# What the browser tests (tests/browser.rs) need, installed when absent:
# Debian's Chromium (pinned; no browser download) and playwright-core from
# npm (pinned by tests/browser/package-lock.json). Where it cannot install
# (no root, no apt, no npm registry) it says why and the test skips.
set -uo pipefail
cd "$(dirname "$0")/.."

CHROMIUM_VERSION="156.0.8078.114-1~deb12u1"

if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup-browser: installing Debian's chromium $CHROMIUM_VERSION"
        export DEBIAN_FRONTEND=noninteractive
        if ! apt-get install -y --no-install-recommends "chromium=$CHROMIUM_VERSION" >/tmp/photolabel-apt.log 2>&1; then
            # Debian's security archive keeps only the newest build: take
            # it rather than test nothing, and say so.
            apt-get update >>/tmp/photolabel-apt.log 2>&1
            if apt-get install -y --no-install-recommends "chromium=$CHROMIUM_VERSION" >>/tmp/photolabel-apt.log 2>&1; then
                :
            elif apt-get install -y --no-install-recommends chromium >>/tmp/photolabel-apt.log 2>&1; then
                echo "setup-browser: WARNING chromium $CHROMIUM_VERSION is no longer in the archive; installed $(dpkg-query -W -f='${Version}' chromium)"
            else
                echo "setup-browser: could not install chromium (see /tmp/photolabel-apt.log); the browser tests will skip"
            fi
        fi
    else
        echo "setup-browser: /usr/bin/chromium is absent and this is not a root shell with apt-get; the browser tests will skip"
    fi
fi

if [ ! -f tests/browser/node_modules/playwright-core/package.json ]; then
    if command -v npm >/dev/null; then
        echo "setup-browser: npm ci (playwright-core, pinned by tests/browser/package-lock.json)"
        # PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: playwright-core downloads nothing,
        # but say it anyway in case a future version would.
        (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error) \
            || echo "setup-browser: npm ci failed; the browser tests will skip"
    else
        echo "setup-browser: npm not found; the browser tests will skip"
    fi
fi
exit 0
