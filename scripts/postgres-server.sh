#!/usr/bin/env bash
# Test server for the PostgreSQL backend: `start DIR` installs PostgreSQL 15 from Debian
# if it is missing, creates a cluster under DIR/data owned by an unprivileged user (the
# package's `postgres` user when run as root, else the caller), starts it on a free
# loopback port with its socket in DIR, and writes DIR/env with CSAI_TEST_POSTGRES_URL;
# `stop DIR` stops it.
set -euo pipefail

dir=${2:-}
[ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
bin=/usr/lib/postgresql/15/bin

install_server() {
    [ -x "$bin/postgres" ] && return
    echo "installing PostgreSQL 15 (Debian's postgresql-15)" >&2
    local sudo=
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql-15 >/dev/null
}

# initdb and postgres refuse to run as root.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "$1" in
start)
    install_server
    port=$(free_port)
    rm -rf "$dir/data"
    mkdir -p "$dir/data"
    if [ "$(id -u)" -eq 0 ]; then
        # The owner must reach DIR through every parent folder.
        chown -R postgres "$dir"
        chmod o+x "$dir"
        folder=$dir
        while [ "$folder" != / ]; do
            folder=$(dirname "$folder")
            chmod o+x "$folder" 2>/dev/null || true
        done
    fi
    as_owner "$bin/initdb" -D "$dir/data" -U csai --auth=trust --encoding=UTF8 \
        --locale=C >"$dir/initdb.log" 2>&1
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 \
        -o "-p $port -h 127.0.0.1 -k $dir -c max_connections=200" start >/dev/null
    as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U csai csai_test
    echo "export CSAI_TEST_POSTGRES_URL=postgres://csai@127.0.0.1:$port/csai_test" >"$dir/env"
    echo "PostgreSQL 15 on 127.0.0.1:$port (data in $dir/data)"
    ;;
stop)
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
    fi
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
