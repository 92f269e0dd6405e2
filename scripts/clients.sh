#!/usr/bin/env bash
# The Python and Go clients and the proto tooling: toolchains, stub generation, drift
# check, buf lint, example build.
#
#   scripts/clients.sh install        Python venv .venv-client (PyPI, pinned) with the
#                                     client installed; Go, protoc and plugins (Debian);
#                                     buf (npm) under .tools/
#   scripts/clients.sh lint           buf lint of proto/ (rules in buf.yaml), gofmt of clients/go
#   scripts/clients.sh generate       rewrites the committed stubs from proto/
#   scripts/clients.sh check          fails when the committed stubs differ from proto/
#   scripts/clients.sh build-go OUT   builds the Go example bot to OUT, offline, against
#                                     Debian's grpc-go and protobuf-go (GOPATH mode)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-client
python_pins=(grpcio==1.85.1 grpcio-tools==1.85.1 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1)
debian_packages=(golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev
    golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev)
go_module=github.com/csai-sidecar/csai-sidecar/clients/go
buf_version=1.75.0
buf=.tools/buf/node_modules/.bin/buf

install() {
    if ! "$venv/bin/python" -c "import grpc_tools, grpc_health, grpc_reflection" 2>/dev/null; then
        echo "installing grpcio-tools and the gRPC runtime into $venv" >&2
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q "${python_pins[@]}"
    fi
    # A fresh build each time: setuptools' build/ folder could hold stale modules.
    rm -rf clients/python/build clients/python/src/*.egg-info
    "$venv/bin/pip" install -q --no-deps --force-reinstall ./clients/python
    rm -rf clients/python/build clients/python/src/*.egg-info
    if ! [ -x "$buf" ] || [ "$("$buf" --version)" != "$buf_version" ]; then
        echo "installing buf $buf_version under .tools/buf" >&2
        npm install --silent --no-audit --no-fund --prefix .tools/buf "@bufbuild/buf@$buf_version"
    fi
    if ! command -v go >/dev/null || ! command -v protoc-gen-go-grpc >/dev/null \
        || ! [ -d /usr/share/gocode/src/google.golang.org/grpc ]; then
        echo "installing Go, protoc and the Go gRPC libraries from Debian" >&2
        local sudo=""
        [ "$(id -u)" -ne 0 ] && sudo=sudo
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${debian_packages[@]}" >/dev/null
    fi
}

# Writes the generated stubs under $1/python and $1/go.
generate_into() {
    local out=$1
    mkdir -p "$out/python" "$out/go"
    "$venv/bin/python" -m grpc_tools.protoc -I proto \
        --python_out="$out/python" --pyi_out="$out/python" --grpc_python_out="$out/python" \
        proto/csai/v1/*.proto
    protoc -I proto \
        --go_out="$out/go" --go_opt=module="$go_module" \
        --go-grpc_out="$out/go" --go-grpc_opt=module="$go_module" \
        proto/csai/v1/*.proto
}

generated_python=clients/python/src/csai/v1
generated_go=clients/go/csai/v1

generate() {
    local tmp
    tmp=$(mktemp -d)
    generate_into "$tmp"
    rm -f "$generated_python"/*_pb2*.py* "$generated_go"/*.pb.go
    mkdir -p "$generated_go"
    cp "$tmp"/python/csai/v1/* "$generated_python"/
    cp "$tmp"/go/csai/v1/* "$generated_go"/
    rm -rf "$tmp"
    echo "stubs regenerated in $generated_python and $generated_go"
}

check() {
    local tmp status=0
    tmp=$(mktemp -d)
    generate_into "$tmp"
    for pair in "$tmp/python/csai/v1:$generated_python" "$tmp/go/csai/v1:$generated_go"; do
        local fresh=${pair%%:*} committed=${pair##*:}
        if ! diff -r -x __init__.py -x __pycache__ "$fresh" "$committed" >/dev/null; then
            diff -r -x __init__.py -x __pycache__ "$fresh" "$committed" | head -20 >&2
            echo "scripts/clients.sh: $committed differs from proto/; run scripts/clients.sh generate" >&2
            status=1
        fi
    done
    rm -rf "$tmp"
    [ $status -eq 0 ] && echo "generated stubs match proto/"
    return $status
}

build_go() {
    local out=$1 gopath cache=$PWD/.data/go-cache
    gopath=$(mktemp -d)
    # GOPATH mode: the module's packages under their import path, Debian's libraries from
    # /usr/share/gocode, nothing downloaded.
    mkdir -p "$gopath/src/$(dirname "$go_module")"
    cp -r clients/go "$gopath/src/$go_module"
    mkdir -p "$(dirname "$out")"
    out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
    (cd "$gopath/src/$go_module" && GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" \
        GOCACHE="$cache" GOFLAGS= go vet ./... && GO111MODULE=off \
        GOPATH="$gopath:/usr/share/gocode" GOCACHE="$cache" GOFLAGS= \
        go build -o "$out" ./examples/bot)
    rm -rf "$gopath"
    echo "built $out"
}

case "${1:-}" in
    install) install ;;
    lint)
        "$buf" lint && echo "buf lint: proto/ is clean"
        unformatted=$(gofmt -l clients/go)
        if [ -n "$unformatted" ]; then
            echo "scripts/clients.sh: gofmt -w these files: $unformatted" >&2
            exit 1
        fi
        echo "gofmt: clients/go is formatted" ;;
    generate) generate ;;
    check) check ;;
    build-go) build_go "${2:?usage: scripts/clients.sh build-go OUT}" ;;
    *) echo "usage: scripts/clients.sh install|lint|generate|check|build-go OUT" >&2; exit 2 ;;
esac
