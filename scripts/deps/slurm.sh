#!/usr/bin/env bash
# Install a SLURM controller, node daemon, client tools and munge (Debian/Ubuntu), as root.
# Idempotent: does nothing when they are already installed.
set -euo pipefail

packages=(slurmctld slurmd slurm-client munge)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "slurm: already installed"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "slurm: installing ${missing[*]} needs root" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y --no-install-recommends "${missing[@]}"
# The packages may start the daemons through systemd where it runs; the test cluster starts its own.
echo "slurm: installed ${missing[*]}"
