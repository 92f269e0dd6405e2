#!/usr/bin/env bash
# Installs what the tests need, then runs every quality gate and every test.
# This is the README's test command and exactly what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# The Rust toolchain (cargo, rustfmt, clippy) comes from rustup; cargo fetches the crates;
# the test servers are installed by their scripts: redis-server and PostgreSQL 15 from
# Debian, SecantusDB (MongoDB) and moto (DynamoDB) from PyPI into the ignored venv .venv; the
# clients' toolchains by scripts/clients.sh.
for tool in cargo cargo-fmt cargo-clippy; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        if command -v rustup >/dev/null 2>&1; then
            rustup component add rustfmt clippy
        else
            echo "scripts/test.sh: $tool is missing; install Rust with rustup (https://rustup.rs)" >&2
            exit 1
        fi
    fi
done

# One build of everything, run once: incremental caches would only double the disk used
# (a fresh CI build ran out of space with them). Set CARGO_INCREMENTAL=1 to keep them.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# Installs, test servers and clients beside fmt and clippy: they wait mostly on the
# network and the disk, clippy on the CPU. Their log is printed once they are done.
servers=.data/test-servers
stop_servers() {
    [ -d "$servers/redis" ] && scripts/redis-servers.sh stop "$servers/redis"
    [ -d "$servers/documents" ] && scripts/document-servers.sh stop "$servers/documents"
    [ -d "$servers/postgres" ] && scripts/postgres-server.sh stop "$servers/postgres"
    return 0
}
prepare() {
    echo "== test servers (at ${SECONDS}s)"
    # Real servers on free loopback ports, data under the ignored .data/ folder; stopped
    # on exit, also when a test fails.
    scripts/redis-servers.sh start "$servers/redis"
    scripts/document-servers.sh start "$servers/documents"
    scripts/postgres-server.sh start "$servers/postgres"
    echo "== clients and proto (at ${SECONDS}s)"
    # Python client (PyPI, venv .venv-client), Go with Debian's gRPC libraries, buf (npm).
    scripts/clients.sh install
    scripts/clients.sh lint
    scripts/clients.sh check
    scripts/clients.sh build-go .data/clients/go-bot
    echo "== ready (at ${SECONDS}s)"
}
stop_servers
rm -rf "$servers"
mkdir -p "$servers"
log=$(mktemp)
prepare_log=$(mktemp)
preparing=
trap '[ -n "$preparing" ] && { kill "$preparing" 2>/dev/null || true; }; stop_servers; rm -f "$log" "$prepare_log"' EXIT
prepare >"$prepare_log" 2>&1 &
preparing=$!

echo "== cargo fmt --check (at ${SECONDS}s)"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings (at ${SECONDS}s)"
cargo clippy --all-targets -- -D warnings
echo "== waiting for the test servers and clients (at ${SECONDS}s)"
if ! wait "$preparing"; then
    cat "$prepare_log"
    echo "scripts/test.sh: installing or starting what the tests need failed (above)" >&2
    exit 1
fi
preparing=
cat "$prepare_log"
# shellcheck source=/dev/null
source "$servers/redis/env"
# shellcheck source=/dev/null
source "$servers/documents/env"
# shellcheck source=/dev/null
source "$servers/postgres/env"
export CSAI_TEST_CLIENT_PYTHON="$PWD/.venv-client/bin/python"
export CSAI_TEST_GO_BOT="$PWD/.data/clients/go-bot"

echo "== cargo test (at ${SECONDS}s)"
cargo test --no-fail-fast 2>&1 | tee "$log"
# One closing line over every test binary, so the total is plain to read.
awk '/^test result:/ { passed += $4; failed += $6; ignored += $8 }
     END { printf "%d passed, %d failed, %d skipped\n", passed, failed, ignored }' "$log"

# The test servers have done their work: their CPU goes to the steps below.
stop_servers

echo "== fuzz (at ${SECONDS}s)"
scripts/fuzz.sh 60

echo "== README quick start (at ${SECONDS}s)"
# The README's first commands as written: `cargo run` (the debug build the tests just
# made), the sidecar, the first calls, SIGTERM.
CSAI_QUICKSTART_GO_BOT="$CSAI_TEST_GO_BOT" scripts/quickstart.sh
echo "== done in ${SECONDS}s"
