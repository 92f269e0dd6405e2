#!/usr/bin/env bash
# Test Redis servers: `start DIR` installs redis-server from Debian if it is missing, starts
# a standalone instance, a 3-master Cluster, and a TLS instance that requires an ACL user,
# all on free loopback ports with their data under DIR, and writes DIR/env with their
# addresses for the tests; `stop DIR` stops them all.
set -euo pipefail

dir=${2:-}
[ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
# redis-server changes into --dir before it opens its log: every path must be absolute.
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

install_redis() {
    command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 \
        && command -v openssl >/dev/null 2>&1 && return
    echo "installing redis-server and openssl from Debian" >&2
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server openssl >/dev/null
}

# A free port whose cluster-bus port (+10000) is free too.
free_port() {
    python3 - <<'PY'
import random, socket
def free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
while True:
    port = random.randint(20000, 50000)
    if free(port) and free(port + 10000):
        print(port)
        break
PY
}

start_server() { # port, extra args...
    local port=$1; shift
    mkdir -p "$dir/$port"
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$dir/$port" --daemonize yes --pidfile "$dir/$port/redis.pid" \
        --logfile "$dir/$port/redis.log" "$@"
    wait_for "$port" redis-cli -p "$port"
}

wait_for() { # port, redis-cli command...
    local port=$1; shift
    for _ in $(seq 1 100); do
        "$@" ping 2>/dev/null | grep -q PONG && return
        sleep 0.1
    done
    echo "redis-server on port $port did not start; see $dir/$port/redis.log" >&2
    exit 1
}

case "$1" in
start)
    install_redis
    mkdir -p "$dir"
    standalone=$(free_port)
    start_server "$standalone"
    cluster_ports=()
    for _ in 1 2 3; do
        port=$(free_port)
        start_server "$port" --cluster-enabled yes --cluster-config-file nodes.conf \
            --cluster-node-timeout 5000
        cluster_ports+=("$port")
    done
    redis-cli --cluster create "${cluster_ports[@]/#/127.0.0.1:}" --cluster-replicas 0 \
        --cluster-yes >"$dir/cluster-create.log" 2>&1
    for _ in $(seq 1 100); do
        redis-cli -p "${cluster_ports[0]}" cluster info | grep -q cluster_state:ok && break
        sleep 0.1
    done
    nodes=$(printf 'redis://127.0.0.1:%s,' "${cluster_ports[@]}")

    # TLS with a certificate for 127.0.0.1 from a throwaway CA, and only the ACL user `csai`.
    tls=$(free_port)
    certs="$dir/$tls"
    mkdir -p "$certs"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=csai test CA" \
        -keyout "$certs/ca.key" -out "$certs/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$certs/key.pem" -out "$certs/server.csr" 2>/dev/null
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
        "extendedKeyUsage=serverAuth" >"$certs/server.ext"
    openssl x509 -req -in "$certs/server.csr" -CA "$certs/ca.pem" -CAkey "$certs/ca.key" \
        -CAcreateserial -days 2 -extfile "$certs/server.ext" -out "$certs/cert.pem" 2>/dev/null
    tls_password="pw-$RANDOM$RANDOM"
    redis-server --port 0 --tls-port "$tls" --bind 127.0.0.1 --save "" --appendonly no \
        --tls-cert-file "$dir/$tls/cert.pem" --tls-key-file "$dir/$tls/key.pem" \
        --tls-auth-clients no --user default off --user csai on ">$tls_password" '~*' '&*' '+@all' \
        --dir "$dir/$tls" --daemonize yes --pidfile "$dir/$tls/redis.pid" \
        --logfile "$dir/$tls/redis.log"
    wait_for "$tls" redis-cli --tls --cacert "$certs/ca.pem" -p "$tls" \
        --user csai --pass "$tls_password" --no-auth-warning
    {
        echo "export CSAI_TEST_REDIS_URL=redis://127.0.0.1:$standalone"
        echo "export CSAI_TEST_REDIS_CLUSTER=${nodes%,}"
        echo "export CSAI_TEST_REDIS_SERVER=$(command -v redis-server)"
        echo "export CSAI_TEST_REDIS_TLS_URL=rediss://127.0.0.1:$tls"
        echo "export CSAI_TEST_REDIS_TLS_CA=$certs/ca.pem"
        echo "export CSAI_TEST_REDIS_TLS_USER=csai"
        echo "export CSAI_TEST_REDIS_TLS_PASSWORD=$tls_password"
    } >"$dir/env"
    echo "redis: standalone on $standalone, cluster on ${cluster_ports[*]}, TLS on $tls" >&2
    ;;
stop)
    for pidfile in "$dir"/*/redis.pid; do
        [ -f "$pidfile" ] || continue
        kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
