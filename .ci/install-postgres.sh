#!/usr/bin/env bash
# Make PostgreSQL's server binaries available for the tests (vivace.testing.postgres starts its own
# throwaway servers), and make sure the Debian package's default cluster is not left running.
# Idempotent: does nothing but the stop step when initdb is already there.
set -euo pipefail

have_initdb() {
    command -v initdb >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if ! have_initdb; then
    # policy-rc.d exit 101 stops the package's postinst from starting the cluster it creates.
    policy=/usr/sbin/policy-rc.d
    created_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
        $SUDO chmod +x "$policy"
        created_policy=1
    fi
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    if [ -n "$created_policy" ]; then $SUDO rm -f "$policy"; fi
fi

# Stop any cluster the package started (no systemd in containers, so use pg_ctlcluster directly).
if command -v pg_lsclusters >/dev/null 2>&1; then
    pg_lsclusters --no-header 2>/dev/null | while read -r version cluster _port status _rest; do
        if [ "$status" = "online" ]; then
            $SUDO pg_ctlcluster --mode fast "$version" "$cluster" stop || true
        fi
    done
fi

have_initdb || { echo "install-postgres.sh: initdb still not found" >&2; exit 1; }
echo "PostgreSQL binaries: $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
