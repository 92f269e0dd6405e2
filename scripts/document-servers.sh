#!/usr/bin/env bash
# Test servers for the MongoDB and DynamoDB backends: `start DIR` installs SecantusDB
# (MongoDB wire protocol) and moto (DynamoDB API) into the ignored venv .venv if they are
# missing, starts both on free loopback ports with scratch data under DIR, and writes
# DIR/env with their addresses for the tests; `stop DIR` stops them.
set -euo pipefail

dir=${2:-}
[ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"

install_servers() {
    [ -x "$venv/bin/secantusd-py" ] && [ -x "$venv/bin/moto_server" ] && return
    echo "installing SecantusDB and moto into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q --pre secantusdb "moto[server]==5.2.5"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for_port() { # name, port, log
    for _ in $(seq 1 300); do
        if python3 -c "import socket, sys; socket.create_connection(('127.0.0.1', $2), 1)" 2>/dev/null; then
            return
        fi
        sleep 0.1
    done
    echo "$1 did not start on port $2; see $3" >&2
    exit 1
}

case "$1" in
start)
    install_servers
    mongo=$(free_port)
    mkdir -p "$dir/mongo"
    # SecantusDB writes scratch files under TMPDIR and HOME: keep them in DIR.
    (
        cd "$dir/mongo"
        TMPDIR="$dir/mongo" HOME="$dir/mongo" nohup "$venv/bin/secantusd-py" \
            --host 127.0.0.1 --port "$mongo" --storage-path :memory: >"$dir/mongo/log" 2>&1 &
        echo $! >"$dir/mongo/pid"
    )
    dynamo=$(free_port)
    mkdir -p "$dir/dynamo"
    (
        cd "$dir/dynamo"
        # moto_server as scripts/moto_serial.py runs it: one request at a time, atomic as
        # DynamoDB's own requests are (moto's threaded server shows half-written items).
        nohup "$venv/bin/python" "$root/scripts/moto_serial.py" -H 127.0.0.1 -p "$dynamo" \
            >"$dir/dynamo/log" 2>&1 &
        echo $! >"$dir/dynamo/pid"
    )
    wait_for_port SecantusDB "$mongo" "$dir/mongo/log"
    wait_for_port moto "$dynamo" "$dir/dynamo/log"
    {
        echo "export CSAI_TEST_MONGO_URI=mongodb://127.0.0.1:$mongo"
        echo "export CSAI_TEST_DYNAMO_ENDPOINT=http://127.0.0.1:$dynamo"
    } >"$dir/env"
    echo "mongo (SecantusDB) on $mongo, dynamo (moto) on $dynamo" >&2
    ;;
stop)
    for pidfile in "$dir"/*/pid; do
        [ -f "$pidfile" ] || continue
        kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
