"""A gRPC test app (grpcio's generic handlers: bytes in, bytes out, no generated code).

Served like any mesh app: `python grpc_app.py $(PORT)` (h2c on 127.0.0.1). Also a client, run
as a mesh app would run it (`HTTP_PROXY` set by the mesh): `python grpc_app.py call TARGET
KIND [N] [EVERY] [DEADLINE]` prints one JSON line of what came back (and the status it
ended with, if not OK).

    /test.Streams/Unary       answers the policy header the call carried (or "-")
    /test.Streams/Ticks       N messages `i@policy`, one every EVERY seconds (server streaming)
    /test.Streams/Echo        echoes each message (bidirectional)
    /test.Streams/Flaky       fails UNAVAILABLE on every other call it gets, else "ok"
    /test.Streams/Deadline    answers the seconds left before the call's deadline (grpc-timeout)
    /test.Streams/Broken      always fails UNAVAILABLE
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

SERVICE = "test.Streams"


def policy(context: grpc.ServicerContext) -> str:
    return dict(context.invocation_metadata()).get("x-policy-ctx", "-")


def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    return policy(context).encode()


def ticks(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    count, every = (float(x) for x in request.decode().split())
    for i in range(int(count)):
        if i:
            time.sleep(every)
        yield f"{i}@{policy(context)}".encode()


def echo(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    yield from requests


def deadline(request: bytes, context: grpc.ServicerContext) -> bytes:
    left = context.time_remaining()
    return b"none" if left is None else f"{left:.3f}".encode()


def broken(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.UNAVAILABLE, "broken: always")


calls = [0]


def flaky(request: bytes, context: grpc.ServicerContext) -> bytes:
    calls[0] += 1
    if calls[0] % 2:
        context.abort(grpc.StatusCode.UNAVAILABLE, f"flaky: call {calls[0]} fails")
    return b"ok"


def serve(port: int) -> None:
    same = {"request_deserializer": None, "response_serializer": None}
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, **same),
        "Ticks": grpc.unary_stream_rpc_method_handler(ticks, **same),
        "Echo": grpc.stream_stream_rpc_method_handler(echo, **same),
        "Flaky": grpc.unary_unary_rpc_method_handler(flaky, **same),
        "Deadline": grpc.unary_unary_rpc_method_handler(deadline, **same),
        "Broken": grpc.unary_unary_rpc_method_handler(broken, **same),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def call(target: str, kind: str, count: int = 100, every: float = 0.0, deadline: float = 0.0) -> dict[str, Any]:
    """Default client settings: grpcio takes `http_proxy` from the environment by itself.
    `deadline` (seconds, sent as `grpc-timeout`) replaces the generous default."""
    with grpc.insecure_channel(target) as channel:
        method = f"/{SERVICE}/{kind}"
        if kind in ("Unary", "Flaky", "Deadline", "Broken"):
            try:
                return {"answer": channel.unary_unary(method)(b"", timeout=deadline or 30).decode()}
            except grpc.RpcError as exc:
                return {"code": exc.code().name, "details": exc.details()}
        started = time.monotonic()
        got: list[tuple[float, str]] = []
        try:
            if kind == "Ticks":
                request = f"{count} {every}".encode()
                replies = channel.unary_stream(method)(request, timeout=deadline or count * every + 30)
            else:
                requests = (f"m{i}".encode() for i in range(count))
                replies = channel.stream_stream(method)(requests, timeout=deadline or 60)
            got.extend((round(time.monotonic() - started, 3), r.decode()) for r in replies)
        except grpc.RpcError as exc:
            return {"messages": got, "code": exc.code().name, "after": round(time.monotonic() - started, 3)}
        return {"messages": got}


if __name__ == "__main__":
    if sys.argv[1] == "call":
        target, kind, *rest = sys.argv[2:]
        count, every = (int(rest[0]) if rest else 100), (float(rest[1]) if len(rest) > 1 else 0.0)
        print(json.dumps(call(target, kind, count, every, float(rest[2]) if len(rest) > 2 else 0.0)))
    else:
        serve(int(sys.argv[1]))
