package sidecar

import (
	"context"
	"math/rand"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	csaiv1 "github.com/csai-sidecar/csai-sidecar/clients/go/csai/v1"
)

// Retry retries unary calls that failed with UNAVAILABLE (the sidecar restarting or not
// listening yet) when a retry cannot store anything twice: reads, deletes, health checks,
// and appends that carry a request_id. Pauses are full-jitter exponential from First to
// Max, within the call's deadline. An interceptor rather than a retry service config:
// it can look at request_id, and grpc-go before 1.40 ignores retry policies unless
// GRPC_GO_RETRY=on.
type Retry struct {
	// Attempts after the first; 0 means 8.
	Retries int
	// The first pause's bound (0: 50 ms) and the largest (0: 2 s).
	First, Max time.Duration
}

// idempotent are the methods retried whatever their request.
var idempotent = map[string]bool{
	"/csai.v1.SessionStore/GetSession":    true,
	"/csai.v1.SessionStore/ListSessions":  true,
	"/csai.v1.SessionStore/GetStats":      true,
	"/csai.v1.SessionStore/DeleteSession": true,
	"/grpc.health.v1.Health/Check":        true,
}

func retryable(method string, request interface{}) bool {
	if idempotent[method] {
		return true
	}
	appended, ok := request.(*csaiv1.AppendMessagesRequest)
	return ok && appended.GetRequestId() != ""
}

// Unary is the grpc.UnaryClientInterceptor.
func (r Retry) Unary(ctx context.Context, method string, request, reply interface{},
	conn *grpc.ClientConn, invoke grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	retries, bound, max := r.Retries, r.First, r.Max
	if retries == 0 {
		retries = 8
	}
	if bound == 0 {
		bound = 50 * time.Millisecond
	}
	if max == 0 {
		max = 2 * time.Second
	}
	for attempt := 0; ; attempt++ {
		err := invoke(ctx, method, request, reply, conn, opts...)
		if err == nil || status.Code(err) != codes.Unavailable || attempt >= retries ||
			!retryable(method, request) {
			return err
		}
		if bound *= 2; bound > max {
			bound = max
		}
		pause := time.Duration(rand.Int63n(int64(bound)))
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) <= pause {
			return err
		}
		select {
		case <-time.After(pause):
		case <-ctx.Done():
			return err
		}
	}
}
