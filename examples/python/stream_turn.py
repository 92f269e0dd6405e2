"""A bot's chat turn over ExecStream: the answer's text as it arrives, the bot's own
functions as tools. Generate the stubs first (see the README), then:

    python stream_turn.py 127.0.0.1:50051 customer-42 "Where is order 7?"
"""

import json
import queue
import sys

import grpc
from google.protobuf import struct_pb2

from csai.v1 import chat_pb2, chat_pb2_grpc


def lookup_order(order_id):
    """The bot's own function; the model decides when to call it."""
    return {"order_id": order_id, "status": "shipped", "eta": "tomorrow"}


TOOLS = {"lookup_order": lookup_order}


def order_tool():
    schema = struct_pb2.Struct()
    schema.update({
        "type": "object",
        "properties": {"order_id": {"type": "integer"}},
        "required": ["order_id"],
    })
    return chat_pb2.Tool(
        name="lookup_order", description="Status of an order", parameters=schema
    )


def run_turn(stub, session_id, text):
    outbox = queue.Queue()
    outbox.put(chat_pb2.ExecStreamRequest(start=chat_pb2.ExecRequest(
        session_id=session_id,
        user_message=chat_pb2.UserMessage(content=text, participant_name="Budi"),
        tools=[order_tool()],
    )))
    # The request stream stays open until the turn is done: tool results go through it.
    for response in stub.ExecStream(iter(outbox.get, None)):
        kind = response.WhichOneof("kind")
        if kind == "delta":
            print(response.delta.content, end="", flush=True)
        elif kind == "tool_call":
            call = response.tool_call
            result = TOOLS[call.function.name](**json.loads(call.function.arguments))
            outbox.put(chat_pb2.ExecStreamRequest(tool_result=chat_pb2.ToolResult(
                tool_call_id=call.id, content=json.dumps(result),
            )))
        elif kind == "done":
            outbox.put(None)
            print()
            return response.done


if __name__ == "__main__":
    address, session_id, text = sys.argv[1:4]
    with grpc.insecure_channel(address) as channel:
        done = run_turn(chat_pb2_grpc.ChatStub(channel), session_id, text)
        print(f"stored as seqs {done.first_seq}..{done.last_seq}, "
              f"{done.tool_rounds} tool round(s), {done.usage.total_tokens} tokens")
