module github.com/csai-sidecar/csai-sidecar/clients/go

// The oldest versions the generated code and the example build with: Debian 12's Go,
// grpc-go and protobuf-go (scripts/clients.sh builds the example with exactly those,
// offline). Newer versions work too: run `go mod tidy` after `go get -u`.
go 1.19

require (
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)
