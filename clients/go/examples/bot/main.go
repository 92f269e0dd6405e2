// Command bot is an example bot against csai-sidecar: health and reflection, appends and
// reads, the NOT_FOUND and ABORTED cases, and a streamed chat turn with one tool. It dials
// with the sidecar package: an address from the arguments or CSAI_SIDECAR_ADDRESS
// (host:port or unix:///path), retries while the sidecar starts, typed errors.
//
//	go run ./examples/bot 127.0.0.1:50051 customer-42
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/protobuf/types/known/structpb"

	csaiv1 "github.com/csai-sidecar/csai-sidecar/clients/go/csai/v1"
	"github.com/csai-sidecar/csai-sidecar/clients/go/sidecar"
)

func user(text string) *csaiv1.Message {
	return &csaiv1.Message{Role: csaiv1.Role_ROLE_USER, Content: text}
}

func assistant(text string) *csaiv1.Message {
	return &csaiv1.Message{Role: csaiv1.Role_ROLE_ASSISTANT, Content: text}
}

// lookupOrder is the bot's own function; the model decides when to call it.
func lookupOrder(orderID float64) map[string]interface{} {
	return map[string]interface{}{"order_id": orderID, "status": "shipped", "eta": "tomorrow"}
}

func orderTool() *csaiv1.Tool {
	schema, err := structpb.NewStruct(map[string]interface{}{
		"type":       "object",
		"properties": map[string]interface{}{"order_id": map[string]interface{}{"type": "integer"}},
		"required":   []interface{}{"order_id"},
	})
	if err != nil {
		log.Fatal(err)
	}
	return &csaiv1.Tool{Name: "lookup_order", Description: "Status of an order", Parameters: schema}
}

func main() {
	// bot ADDRESS SESSION_ID, or bot SESSION_ID with the address in CSAI_SIDECAR_ADDRESS
	// (as the Kubernetes example sets it), else 127.0.0.1:50051.
	var target, sessionID string
	switch len(os.Args) {
	case 3:
		target, sessionID = os.Args[1], os.Args[2]
	case 2:
		sessionID = os.Args[1]
	default:
		log.Fatal("usage: bot [HOST:PORT|unix:///PATH] SESSION_ID")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := sidecar.Dial(ctx, target)
	if err != nil {
		log.Fatalf("connect to %s: %v", sidecar.Address(target), err)
	}
	defer conn.Close()

	health := healthpb.NewHealthClient(conn)
	server, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
	must(err)
	store, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: "csai.v1.SessionStore"})
	must(err)
	fmt.Println("health", server.Status, store.Status)
	fmt.Println("services", strings.Join(listServices(ctx, conn), " "))

	sessions := csaiv1.NewSessionStoreClient(conn)
	appended, err := sessions.AppendMessages(ctx, &csaiv1.AppendMessagesRequest{
		SessionId: sessionID,
		Messages:  []*csaiv1.Message{user("Hi"), assistant("Hello! How can I help?")},
	})
	must(err)
	fmt.Printf("appended seqs %d..%d version %d\n", appended.Seqs[0], appended.Seqs[len(appended.Seqs)-1], appended.Version)
	read, err := sessions.GetSession(ctx, &csaiv1.GetSessionRequest{
		SessionId: sessionID,
		Window:    &csaiv1.GetSessionRequest_LastN{LastN: 1},
	})
	must(err)
	session := read.Session
	fmt.Printf("read %d messages, last: %s\n", session.MessageCount, session.Messages[len(session.Messages)-1].Content)

	absent := sessionID + "-absent"
	_, err = sessions.GetSession(ctx, &csaiv1.GetSessionRequest{SessionId: absent})
	if errors.Is(err, sidecar.ErrNotFound) {
		fmt.Println("not found", absent)
	} else {
		log.Fatalf("expected NOT_FOUND for %s, got %v", absent, err)
	}

	// Optimistic concurrency: an append that expects an old version is refused with
	// ABORTED; re-read and try again.
	stale := uint64(0)
	_, err = sessions.AppendMessages(ctx, &csaiv1.AppendMessagesRequest{
		SessionId: sessionID, Messages: []*csaiv1.Message{user("stale write")}, ExpectedVersion: &stale,
	})
	if !errors.Is(err, sidecar.ErrAborted) {
		log.Fatalf("expected ABORTED, got %v", err)
	}
	reread, err := sessions.GetSession(ctx, &csaiv1.GetSessionRequest{SessionId: sessionID})
	must(err)
	current := reread.Session
	retried, err := sessions.AppendMessages(ctx, &csaiv1.AppendMessagesRequest{
		SessionId: sessionID, Messages: []*csaiv1.Message{user("Thanks")}, ExpectedVersion: &current.Version,
	})
	must(err)
	fmt.Printf("aborted, retried at version %d -> %d\n", current.Version, retried.Version)

	done := streamTurn(ctx, csaiv1.NewChatClient(conn), sessionID, "Where is order 7?")
	watchFeed(ctx, sessions, sessionID, done)
}

// watchFeed follows the session's change feed, as a human agent's console would: from
// what the bot has (nothing is sent again), then each change as it happens. After a
// broken stream, WatchSession again with the last event's ResumeToken.
func watchFeed(ctx context.Context, sessions csaiv1.SessionStoreClient, sessionID string, done *csaiv1.ExecResponse) {
	feedCtx, stop := context.WithCancel(ctx)
	defer stop()
	feed, err := sessions.WatchSession(feedCtx, &csaiv1.WatchSessionRequest{
		SessionId: sessionID, AfterSeq: done.LastSeq, Version: done.Version,
	})
	must(err)
	first, err := feed.Recv()
	must(err)
	if !first.GetCaughtUp() {
		log.Fatalf("expected caught_up first, got %v", first)
	}
	_, err = sessions.AppendMessages(ctx, &csaiv1.AppendMessagesRequest{
		SessionId: sessionID, Messages: []*csaiv1.Message{user("Is anyone watching?")},
	})
	must(err)
	event, err := feed.Recv()
	must(err)
	message := event.GetAppended().GetMessages()[0]
	fmt.Printf("watched seq %d: %s\n", message.Seq, message.Content)
}

// streamTurn runs a whole chat turn over ExecStream, answering tool calls as they come.
func streamTurn(ctx context.Context, chat csaiv1.ChatClient, sessionID, text string) *csaiv1.ExecResponse {
	stream, err := chat.ExecStream(ctx)
	must(err)
	must(stream.Send(&csaiv1.ExecStreamRequest{Kind: &csaiv1.ExecStreamRequest_Start{Start: &csaiv1.ExecRequest{
		SessionId:   sessionID,
		UserMessage: &csaiv1.UserMessage{Content: text},
		Tools:       []*csaiv1.Tool{orderTool()},
	}}}))
	var answer strings.Builder
	for {
		response, err := stream.Recv()
		if err == io.EOF {
			log.Fatal("ExecStream ended without a result")
		}
		must(err)
		switch kind := response.Kind.(type) {
		case *csaiv1.ExecStreamResponse_Delta:
			answer.WriteString(kind.Delta.Content)
		case *csaiv1.ExecStreamResponse_ToolCall:
			call := kind.ToolCall
			var arguments struct {
				OrderID float64 `json:"order_id"`
			}
			must(json.Unmarshal([]byte(call.Function.Arguments), &arguments))
			fmt.Println("tool", call.Function.Name, call.Function.Arguments)
			result, err := json.Marshal(lookupOrder(arguments.OrderID))
			must(err)
			must(stream.Send(&csaiv1.ExecStreamRequest{Kind: &csaiv1.ExecStreamRequest_ToolResult{
				ToolResult: &csaiv1.ToolResult{ToolCallId: call.Id, Content: string(result)},
			}}))
		case *csaiv1.ExecStreamResponse_Done:
			done := kind.Done
			must(stream.CloseSend())
			fmt.Println("answer", answer.String())
			fmt.Printf("done finish=%s rounds=%d seqs %d..%d tokens %d\n", done.FinishReason,
				done.ToolRounds, done.FirstSeq, done.LastSeq, done.Usage.GetTotalTokens())
			return done
		}
	}
}

// listServices asks the server, by reflection, which services it offers.
func listServices(ctx context.Context, conn *grpc.ClientConn) []string {
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	must(err)
	must(stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: ""},
	}))
	response, err := stream.Recv()
	must(err)
	must(stream.CloseSend())
	var names []string
	for _, service := range response.GetListServicesResponse().Service {
		names = append(names, service.Name)
	}
	sort.Strings(names)
	return names
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
