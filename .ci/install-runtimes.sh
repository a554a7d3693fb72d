#!/usr/bin/env bash
# Install the container runtimes and networking tools the isolation suite runs on: crun, runc,
# gVisor's runsc, bubblewrap, iproute2 and iptables, and what the image tests use: debootstrap, zstd,
# a registry to pull from on loopback (docker-registry), htpasswd and openssl (Debian packages).
# Idempotent.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
need=()
for pair in crun:crun runc:runc runsc:runsc bwrap:bubblewrap ip:iproute2 iptables:iptables \
    debootstrap:debootstrap zstd:zstd docker-registry:docker-registry htpasswd:apache2-utils openssl:openssl; do
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
# the registry package may start a service where systemd runs: the tests start their own registries
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi
