// Package sidecar dials csai-sidecar the way a bot should: the address from
// CSAI_SIDECAR_ADDRESS (host:port or unix:///path), the bearer token from
// CSAI_SIDECAR_TOKEN, retries of UNAVAILABLE with jittered exponential backoff where a
// retry is safe, and errors that errors.Is can tell apart.
//
// It builds with grpc-go 1.33 (Debian 12) and current releases: it uses grpc.DialContext
// and grpc.WithInsecure, which current grpc-go keeps (deprecated in favour of
// grpc.NewClient and insecure.NewCredentials, which 1.33 lacks).
package sidecar

import (
	"context"
	"net"
	"os"
	"strings"

	"google.golang.org/grpc"
)

// DefaultAddress is where the sidecar listens unless told otherwise.
const DefaultAddress = "127.0.0.1:50051"

// Address is target when not empty, else CSAI_SIDECAR_ADDRESS, else DefaultAddress.
func Address(target string) string {
	if target != "" {
		return target
	}
	if fromEnv := os.Getenv("CSAI_SIDECAR_ADDRESS"); fromEnv != "" {
		return fromEnv
	}
	return DefaultAddress
}

// Dial opens a connection to the sidecar at target (host:port or unix:///path; empty for
// Address's default). Calls carry CSAI_SIDECAR_TOKEN as a bearer token when it is set,
// unary calls are retried as Retry says, and failed calls return *Error. It does not
// wait for the sidecar: the first calls' retries do. More options (a deadline with
// grpc.WithBlock, say) go in opts.
func Dial(ctx context.Context, target string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	target = Address(target)
	options := []grpc.DialOption{
		grpc.WithInsecure(),
		grpc.WithChainUnaryInterceptor(typedUnary, Retry{}.Unary),
		grpc.WithChainStreamInterceptor(typedStream),
	}
	if path := unixPath(target); path != "" {
		// Dialled by hand: the "unix" scheme resolver only came with grpc-go 1.34.
		options = append(options, grpc.WithContextDialer(
			func(ctx context.Context, _ string) (net.Conn, error) {
				var dialer net.Dialer
				return dialer.DialContext(ctx, "unix", path)
			}))
		target = "passthrough:///localhost"
	}
	if token := os.Getenv("CSAI_SIDECAR_TOKEN"); token != "" {
		options = append(options, grpc.WithPerRPCCredentials(bearer(token)))
	}
	return grpc.DialContext(ctx, target, append(options, opts...)...)
}

// unixPath is the socket path of a unix:///path or unix:path target, else "".
func unixPath(target string) string {
	if rest := strings.TrimPrefix(target, "unix://"); rest != target {
		return rest
	}
	if rest := strings.TrimPrefix(target, "unix:"); rest != target {
		return rest
	}
	return ""
}

// bearer sends `authorization: Bearer <token>` on every call. The sidecar is on
// localhost or a Unix socket, so the token may go without TLS.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }
