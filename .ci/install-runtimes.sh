#!/usr/bin/env bash
# Install the container runtimes and networking tools the isolation suite runs on: crun, runc,
# gVisor's runsc, bubblewrap, iproute2 and iptables (Debian packages). Idempotent.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
need=()
for pair in crun:crun runc:runc runsc:runsc bwrap:bubblewrap ip:iproute2 iptables:iptables; do
    cmd="${pair%%:*}"; pkg="${pair##*:}"
    if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ] && [ ! -x "/sbin/$cmd" ]; then
        need+=("$pkg")
    fi
done
if [ "${#need[@]}" -gt 0 ]; then
    echo "installing ${need[*]}" >&2
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
