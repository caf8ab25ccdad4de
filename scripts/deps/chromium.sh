#!/usr/bin/env bash
# Debian's headless-capable Chromium, used by the report rendering test. Idempotent:
# does nothing when /usr/bin/chromium already exists. Run as root.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "chromium: already installed ($(/usr/bin/chromium --version 2>/dev/null || echo unknown version))"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "chromium: must run as root to install the Debian package" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y chromium
/usr/bin/chromium --version
