"""An example bot against csai-sidecar: health and reflection, appends and reads, the
NOT_FOUND and ABORTED cases, a streamed chat turn with one tool, and a change feed.

    pip install ./clients/python
    python clients/python/examples/bot.py 127.0.0.1:50051 customer-42

The address is host:port or unix:///path; with only the session id it comes from
CSAI_SIDECAR_ADDRESS (as in the Kubernetes example), else 127.0.0.1:50051.
"""

import sys

from csai_client import Aborted, Sidecar, assistant, tool, user


def lookup_order(order_id):
    """The bot's own function; the model decides when to call it."""
    return {"order_id": order_id, "status": "shipped", "eta": "tomorrow"}


ORDER_TOOL = tool(
    "lookup_order",
    "Status of an order",
    {"type": "object", "properties": {"order_id": {"type": "integer"}}, "required": ["order_id"]},
    lookup_order,
)


def main(target, session_id):
    with Sidecar(target) as sidecar:
        print("health", sidecar.health(), sidecar.health("csai.v1.SessionStore"))
        print("services", " ".join(sidecar.services()))

        appended = sidecar.append(session_id, user("Hi"), assistant("Hello! How can I help?"))
        print(f"appended seqs {appended.seqs[0]}..{appended.seqs[-1]} version {appended.version}")
        session = sidecar.get(session_id, last_n=1)
        print(f"read {session.message_count} messages, last: {session.messages[-1].content}")

        if sidecar.get(session_id + "-absent") is None:
            print("not found", session_id + "-absent")

        # Optimistic concurrency: an append that expects an old version is refused with
        # ABORTED; re-read and try again.
        try:
            sidecar.append(session_id, user("stale write"), expected_version=0)
        except Aborted:
            current = sidecar.get(session_id).version
            retried = sidecar.append(session_id, user("Thanks"), expected_version=current)
            print(f"aborted, retried at version {current} -> {retried.version}")

        pieces = []
        done = sidecar.stream_turn(
            session_id,
            "Where is order 7?",
            tools=[ORDER_TOOL],
            on_delta=pieces.append,
            on_tool_call=lambda name, args: print("tool", name, args),
        )
        print("answer", "".join(pieces))
        print(f"done finish={done.finish_reason} rounds={done.tool_rounds} "
              f"seqs {done.first_seq}..{done.last_seq} tokens {done.usage.total_tokens}")

        # A change feed, as a human agent's console would follow the conversation: from
        # what the bot has (nothing is sent again), then each change as it happens.
        feed = sidecar.watch(session_id, after_seq=done.last_seq, version=done.version)
        assert next(feed).HasField("caught_up")
        sidecar.append(session_id, user("Is anyone watching?"))
        appended = next(feed).appended.messages[0]
        print(f"watched seq {appended.seq}: {appended.content}")
        feed.close()


if __name__ == "__main__":
    if len(sys.argv) == 2:
        main(None, sys.argv[1])
    elif len(sys.argv) == 3:
        main(sys.argv[1], sys.argv[2])
    else:
        sys.exit("usage: bot.py [HOST:PORT|unix:///PATH] SESSION_ID")
