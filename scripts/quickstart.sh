#!/usr/bin/env bash
# Runs the README's quick start as written: every ```sh block of "The two commands" and
# "A first call", in order. The first (`cargo run`) starts the sidecar in the
# background; the test command itself (the block `scripts/test.sh`, which runs this
# script) is skipped; the others run as they are, against that sidecar, with one
# exception: `go mod tidy` needs the Go module proxy, which CI cannot reach, so the Go
# block runs the same example bot built offline from the same source
# (CSAI_QUICKSTART_GO_BOT, from `scripts/clients.sh build-go`) with the same arguments.
# Then the sidecar is stopped with SIGTERM and must shut down cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
go_bot=${CSAI_QUICKSTART_GO_BOT:?set CSAI_QUICKSTART_GO_BOT to the Go example bot (scripts/clients.sh build-go)}
# A newcomer's shell: no CSAI_* setting of the caller's (the test servers' included).
while read -r name; do unset "$name"; done < <(compgen -e | grep '^CSAI_')

work=$(mktemp -d)
sidecar_group=
finish() {
    [ -n "$sidecar_group" ] && kill -TERM -- "-$sidecar_group" 2>/dev/null
    rm -rf "$work" clients/python/build clients/python/src/*.egg-info
}
trap finish EXIT

awk -v dir="$work" '
    /^## / { inside = ($0 == "## The two commands" || $0 == "## A first call") }
    inside && /^```sh$/ { n++; file = sprintf("%s/block-%02d.sh", dir, n); next }
    file && /^```$/ { close(file); file = ""; next }
    file { print > file }
' README.md
blocks=("$work"/block-*.sh)
if [ "${#blocks[@]}" -lt 3 ] || [ "$(cat "${blocks[0]}")" != "cargo run" ]; then
    echo "quickstart: the README's first command is no longer \`cargo run\`" >&2
    exit 1
fi
if (exec 3<>/dev/tcp/127.0.0.1/50051) 2>/dev/null; then
    echo "quickstart: something already listens on 127.0.0.1:50051; stop it first" >&2
    exit 1
fi

echo "quickstart: \$ cargo run"
setsid bash "${blocks[0]}" >"$work/sidecar.log" 2>&1 &
sidecar_group=$!
# The build comes first (a no-op after the tests): wait while it runs, then for SERVING.
until target/debug/csai-sidecar health >/dev/null 2>&1; do
    if ! kill -0 "$sidecar_group" 2>/dev/null; then
        tail -30 "$work/sidecar.log" >&2
        echo "quickstart: \`cargo run\` stopped before serving" >&2
        exit 1
    fi
    sleep 2
done
echo "quickstart: the sidecar is SERVING ($(grep -c . "$work/sidecar.log") log lines so far)"
# After the tests `cargo run` should build nothing: a crate compiled here is one whose
# features a test dependency changes, and the whole run pays for its second build.
rebuilt=$(grep -c '^ *Compiling ' "$work/sidecar.log" || true)
if [ "$rebuilt" -gt 0 ]; then
    echo "quickstart: note: \`cargo run\` compiled $rebuilt crate(s) the tests had built with" \
        "other features (see the dev-dependencies in Cargo.toml)"
fi

for block in "${blocks[@]:1}"; do
    command=$(cat "$block")
    if [ "$command" = "scripts/test.sh" ]; then
        continue
    fi
    if [[ "$command" == *"go mod tidy"* ]]; then
        command=${command//cd clients\/go && go mod tidy && go run .\/examples\/bot/\"$go_bot\"}
    fi
    echo "quickstart: \$ $command"
    (bash -euo pipefail -c "$command") 2>&1 | tee "$work/output" || {
        echo "quickstart: that command failed" >&2
        exit 1
    }
    cat "$work/output" >>"$work/outputs"
done

# What the commands printed: the bots' whole run with the echo model answering (twice:
# Python, then Go), and buf curl's append and read.
for expected in "health SERVING SERVING" "answer Where is order 7?" "done finish=stop rounds=0"; do
    if [ "$(grep -c "^$expected" "$work/outputs")" -ne 2 ]; then
        echo "quickstart: expected both bots to print \"$expected\"" >&2
        exit 1
    fi
done
grep -q '"content": "Where is my order?"' "$work/outputs" || {
    echo "quickstart: GetSession did not return the appended message" >&2
    exit 1
}

kill -TERM -- "-$sidecar_group"
for _ in $(seq 50); do
    kill -0 "$sidecar_group" 2>/dev/null || break
    sleep 0.2
done
sidecar_group=
grep -q "csai-sidecar stopped" "$work/sidecar.log" || {
    tail -30 "$work/sidecar.log" >&2
    echo "quickstart: the sidecar did not stop cleanly on SIGTERM" >&2
    exit 1
}
echo "quickstart: every README quick-start command ran; the sidecar stopped cleanly"
