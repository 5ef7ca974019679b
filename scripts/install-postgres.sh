#!/usr/bin/env bash
# Install Debian's PostgreSQL (server, pgbench, pg_basebackup) for `make bench-peers`, if it is
# missing. Prints the directory holding its binaries (initdb, pg_ctl, pg_basebackup, pgbench,
# psql, postgres) on the last line. apt-get runs with sudo unless we are root.
set -euo pipefail

NEEDED=(initdb pg_ctl pg_basebackup pgbench psql postgres)

# The newest /usr/lib/postgresql/<version>/bin holding every binary the bench uses.
find_bin_dir() {
    local d b ok
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        ok=1
        for b in "${NEEDED[@]}"; do [[ -x "$d/$b" ]] || ok=0; done
        if [[ $ok == 1 ]]; then echo "$d"; return 0; fi
    done
    return 1
}

if ! dir="$(find_bin_dir)"; then
    sudo=$([ "$(id -u)" = 0 ] || echo sudo)
    echo "installing PostgreSQL (apt-get install postgresql) for the peer benchmark" >&2
    $sudo apt-get update >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >&2
    # The package starts a system cluster on port 5432; the bench runs its own clusters on
    # other ports and never touches it.
    dir="$(find_bin_dir)" || { echo "install-postgres: no PostgreSQL binaries after apt-get" >&2; exit 1; }
fi
if [[ "$(id -u)" = 0 ]] && ! id postgres >/dev/null 2>&1; then
    echo "install-postgres: running as root but there is no 'postgres' user to run the servers as" >&2
    exit 1
fi
echo "$dir"
