#!/usr/bin/env bash
# Every table of BENCHMARKS.md, in order: builds csai-bench and csai-sidecar (release),
# starts fresh test servers under .data/bench (Redis, the MongoDB- and DynamoDB-compatible
# servers, by the project's own scripts), runs each command and prints it with its
# table. About 10 minutes after the build. Benchmarks print figures; they assert nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

data=.data/bench
cleanup() {
    scripts/redis-servers.sh stop "$data/redis" >/dev/null 2>&1 || true
    scripts/document-servers.sh stop "$data/documents" >/dev/null 2>&1 || true
    scripts/postgres-server.sh stop "$data/postgres" >/dev/null 2>&1 || true
}
trap cleanup EXIT
rm -rf "$data"
scripts/redis-servers.sh start "$data/redis" >/dev/null
scripts/document-servers.sh start "$data/documents" >/dev/null
scripts/postgres-server.sh start "$data/postgres" >/dev/null
# shellcheck disable=SC1091
source "$data/redis/env"
# shellcheck disable=SC1091
source "$data/documents/env"
# shellcheck disable=SC1091
source "$data/postgres/env"
redis=${CSAI_TEST_REDIS_URL#redis://}
mongo=$CSAI_TEST_MONGO_URI
dynamo=$CSAI_TEST_DYNAMO_ENDPOINT
postgres=$CSAI_TEST_POSTGRES_URL

cargo build --release --quiet --bin csai-bench --bin csai-sidecar
bench=target/release/csai-bench

run() {
    echo
    echo "\$ csai-bench $*"
    "$bench" "$@" 2>/dev/null
}

echo "# in-memory, 64 concurrent streams"
run --ops append,get,replace,chat --concurrency 64 --duration 5s

echo "# Redis at 1,000/s: sidecar in the bench's process, then in its own process"
run --backend redis --redis-address "$redis" --ops append,get --concurrency 16 --rate 1000 \
    --duration 5s --sessions 20
CSAI_STORAGE_TYPE=redis CSAI_REDIS_ADDRESS=$redis CSAI_REDIS_KEY_PREFIX=csai-bench: \
    CSAI_LISTEN=127.0.0.1:7719 \
    CSAI_LOG_LEVEL=warn target/release/csai-sidecar &
sidecar=$!
sleep 1
run --target 127.0.0.1:7719 --backend redis --redis-address "$redis" --ops append,get \
    --concurrency 16 --rate 1000 --duration 5s --sessions 20
kill "$sidecar"
wait "$sidecar" || true

echo "# MongoDB and DynamoDB (Python test servers: far slower than the real ones)"
run --backend mongo --mongo-uri "$mongo" --ops append,get --concurrency 16 --rate 100 \
    --duration 5s --sessions 20
run --backend dynamo --dynamo-endpoint "$dynamo" --ops append,get --concurrency 16 --rate 40 \
    --duration 5s --sessions 20

echo "# append cost against session length (the last row repeats the first)"
run --backend redis --redis-address "$redis" --ops append --concurrency 16 --rate 1000 \
    --duration 5s --sessions 20 --lengths 10,1000,10000 --cs-ai-layout --no-floors
run --backend mongo --mongo-uri "$mongo" --ops append --concurrency 16 --rate 100 \
    --duration 5s --sessions 5 --lengths 10,1000,10000,10 --no-floors
run --backend dynamo --dynamo-endpoint "$dynamo" --ops append --concurrency 16 --rate 20 \
    --duration 5s --sessions 5 --lengths 10,1000,10000,10 --no-floors

echo "# a bot's mix on Redis: per turn a read of the window and two appends, one replace in 20"
run --backend redis --redis-address "$redis" --mix append:20,get:10,replace:1 \
    --concurrency 16 --rate 1000 --duration 5s --sessions 20

echo "# chat turn at 500/s"
run --ops chat --concurrency 16 --rate 500 --duration 5s --sessions 20

echo "# SQLite and PostgreSQL at 1,000/s, SQLite's closed-loop appends, then against length"
run --backend sqlite --ops append,get --concurrency 16 --rate 1000 --duration 5s --sessions 20
run --backend postgres --postgres-url "$postgres" --ops append,get --concurrency 16 --rate 1000 \
    --duration 5s --sessions 20
run --backend sqlite --ops append --concurrency 64 --duration 5s --sessions 100 --no-floors
run --backend sqlite --ops append --concurrency 16 --rate 1000 --duration 5s --sessions 5 \
    --lengths 10,1000,10000,10 --no-floors
run --backend postgres --postgres-url "$postgres" --ops append --concurrency 16 --rate 500 \
    --duration 5s --sessions 5 --lengths 10,1000,10000,10 --no-floors

echo "# Unix domain socket against loopback TCP, one caller: in the bench's process, then as a child"
run --unix-socket --ops append --concurrency 1 --duration 10s
run --sidecar-process --unix-socket --ops append --concurrency 1 --duration 10s

echo "# memory of the in-memory backend"
run --memory-messages 100000 --payload 200
run --memory-messages 100000 --payload 1000

echo "# 10x overload: 640 streams against a limit of 64, then against no limit"
run --overload-limit 64 --concurrency 640 --connections 4 --payload 16384 --window 20 \
    --sessions 100 --duration 5s

echo "# token-budgeted reads against last_n, at 10 and 10,000 messages"
run --ops get,tokens --lengths 10,10000,10 --window 20 --concurrency 16 --rate 1000 --duration 5s \
    --sessions 5 --no-floors
run --backend redis --redis-address "$redis" --ops get,tokens --lengths 10,10000,10 --window 20 \
    --concurrency 16 --rate 1000 --duration 5s --sessions 5 --no-floors

echo "# change feeds: 100 watchers on 10 sessions, appends at a fixed rate, then idle watchers"
run --watchers 100 --sessions 10 --rate 200 --duration 10s
run --backend redis --redis-address "$redis" --watchers 100 --sessions 10 --rate 200 --duration 10s
run --backend postgres --postgres-url "$postgres" --watchers 100 --sessions 10 --rate 200 \
    --duration 10s
run --backend mongo --mongo-uri "$mongo" --watchers 20 --sessions 10 --rate 20 --duration 10s
run --backend dynamo --dynamo-endpoint "$dynamo" --watchers 20 --sessions 10 --rate 20 \
    --duration 10s
run --idle-watchers 10000
