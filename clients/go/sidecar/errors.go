package sidecar

import (
	"context"
	"errors"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The failures a bot handles on purpose; test with errors.Is.
var (
	// ErrNotFound: the session does not exist (or has expired).
	ErrNotFound = errors.New("csai: not found")
	// ErrAborted: expected_version was not the session's version; re-read and retry.
	ErrAborted = errors.New("csai: aborted by a version conflict")
	// ErrResourceExhausted: a rate limit, the sidecar's load limit or a size limit.
	ErrResourceExhausted = errors.New("csai: resource exhausted")
)

var sentinels = map[codes.Code]error{
	codes.NotFound:          ErrNotFound,
	codes.Aborted:           ErrAborted,
	codes.ResourceExhausted: ErrResourceExhausted,
}

// Error is a failed call: its gRPC status, which status.Code and status.FromError still
// read, and errors.Is(err, ErrNotFound) and the like.
type Error struct {
	Status *status.Status
}

func (e *Error) Error() string {
	return "csai: " + e.Status.Code().String() + ": " + e.Status.Message()
}

// GRPCStatus lets status.Code(err) and status.FromError(err) see the status.
func (e *Error) GRPCStatus() *status.Status { return e.Status }

// Is matches the sentinel of the status code.
func (e *Error) Is(target error) bool {
	sentinel, ok := sentinels[e.Status.Code()]
	return ok && sentinel == target
}

// typed turns a failed call's error into *Error (io.EOF, the end of a stream, stays).
func typed(err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	if s, ok := status.FromError(err); ok {
		return &Error{Status: s}
	}
	return err
}

func typedUnary(ctx context.Context, method string, request, reply interface{},
	conn *grpc.ClientConn, invoke grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return typed(invoke(ctx, method, request, reply, conn, opts...))
}

func typedStream(ctx context.Context, desc *grpc.StreamDesc, conn *grpc.ClientConn,
	method string, open grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	stream, err := open(ctx, desc, conn, method, opts...)
	if err != nil {
		return nil, typed(err)
	}
	return typedClientStream{stream}, nil
}

type typedClientStream struct{ grpc.ClientStream }

func (s typedClientStream) SendMsg(m interface{}) error { return typed(s.ClientStream.SendMsg(m)) }
func (s typedClientStream) RecvMsg(m interface{}) error { return typed(s.ClientStream.RecvMsg(m)) }
