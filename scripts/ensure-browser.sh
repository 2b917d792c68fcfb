#!/bin/sh
# Make a headless Chromium available for the report's browser test (tests/report).
# Installs Debian's `chromium` package when no Chromium/Chrome is found and this shell may
# install packages (root with apt-get). Always exits 0: without a browser that test is skipped.
for name in chromium chromium-browser google-chrome google-chrome-stable; do
    if command -v "$name" >/dev/null 2>&1; then
        exit 0
    fi
done
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-browser: installing chromium with apt-get" >&2
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; then
        apt-get update -q >/dev/null 2>&1 &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 ||
            echo "ensure-browser: could not install chromium; the browser test will be skipped" >&2
    fi
else
    echo "ensure-browser: no chromium found and cannot install it here (needs root and" \
        "apt-get); the browser test will be skipped" >&2
fi
exit 0
