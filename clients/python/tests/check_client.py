"""Exercises the Python client against a real sidecar; run by tests/e2e/clients.rs, which
starts the sidecar and the scripted model and checks the lines printed here.

    check_client.py retry TARGET      one health call, started before the sidecar listens
    check_client.py behaviour TARGET  typed errors, tool errors, stream deadlines, asyncio
    check_client.py watch TARGET DIR  a change feed that resumes across a sidecar restart
                                      (handshake files in DIR: ready, restarted)
"""

import asyncio
import os
import sys
import time

from csai_client import (Aborted, AsyncSidecar, NotFound, ResourceExhausted, Sidecar,
                         SidecarError, assistant, tool, user)


def refund(order_id):
    raise ValueError(f"order {order_id} cannot be refunded")


async def async_lookup(order_id):
    await asyncio.sleep(0.01)
    return {"order_id": order_id, "status": "shipped"}


SCHEMA = {"type": "object", "properties": {"order_id": {"type": "integer"}}}


def retry(target):
    with Sidecar(target, timeout=30, retries=30) as sidecar:
        print("health", sidecar.health(), "retried", sidecar.retried)


def watch(target, folder):
    with Sidecar(target, timeout=30, retries=30) as sidecar:
        feed = sidecar.watch("py-feed")
        assert next(feed).HasField("caught_up")
        sidecar.append("py-feed", user("one"), user("two"), request_id="py-feed-1")
        seqs = []
        while len(seqs) < 2:
            seqs += [m.seq for m in next(feed).appended.messages]
        # The test restarts the sidecar now; the feed's stream breaks under it.
        open(os.path.join(folder, "ready"), "w").close()
        while not os.path.exists(os.path.join(folder, "restarted")):
            time.sleep(0.05)
        sidecar.append("py-feed", user("three"), request_id="py-feed-2")
        while len(seqs) < 3:
            seqs += [m.seq for m in next(feed).appended.messages]
        feed.close()
        print("seqs", *seqs, "resumed", sidecar.retried > 0)


def behaviour(target):
    with Sidecar(target) as sidecar:
        sidecar.append("py-a", user("Hi"), request_id="py-a-1")
        try:
            sidecar.append("py-a", assistant("stale"), expected_version=0)
        except Aborted as error:
            print("aborted", error.code().name)
        try:
            sidecar.get("py-absent", missing_ok=False)
        except NotFound as error:
            print("not found", error.code().name)
        print("absent is None", sidecar.get("py-absent") is None)

        # The model asks for `refund`, which raises: the turn goes on with an error result.
        done = sidecar.stream_turn("py-a", "refund order 7",
                                   tools=[tool("refund", "Refund an order", SCHEMA, refund)])
        print("turn after a raising tool", done.finish_reason)
        try:
            sidecar.stream_turn("py-a", "again")
        except ResourceExhausted as error:
            print("rate limited", error.code().name)

    # The model takes 5 s: the turn's 1 s deadline ends it with DEADLINE_EXCEEDED.
    with Sidecar(target, turn_timeout=1.0) as sidecar:
        started = time.monotonic()
        try:
            sidecar.stream_turn("py-b", "where is order 8")
        except SidecarError as error:
            print("deadline", error.code().name, f"within {time.monotonic() - started < 2.5}")

    asyncio.run(behaviour_async(target))


async def behaviour_async(target):
    async with AsyncSidecar(target) as sidecar:
        print("async health", await sidecar.health("csai.v1.SessionStore"))
        appended = await sidecar.append("py-c", user("Hi"), request_id="py-c-1")
        again = await sidecar.append("py-c", user("Hi"), request_id="py-c-1")
        print("async append once", list(appended.seqs) == list(again.seqs))
        try:
            await sidecar.append("py-c", user("stale"), expected_version=0)
        except Aborted:
            print("async aborted")
        try:
            await sidecar.get("py-absent", missing_ok=False)
        except NotFound:
            print("async not found")
        pieces = []
        done = await sidecar.stream_turn(
            "py-c", "where is order 9", on_delta=pieces.append,
            tools=[tool("lookup_order", "Status", SCHEMA, async_lookup)])
        print("async answer", "".join(pieces), done.finish_reason)
        session = await sidecar.get("py-c")
        print("async stored", session.message_count)


if __name__ == "__main__":
    {"retry": retry, "behaviour": behaviour, "watch": watch}[sys.argv[1]](*sys.argv[2:])
