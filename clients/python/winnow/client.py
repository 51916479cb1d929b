"""A small client of Winnow's services for callers in Python: Recommend (and any other rpc) over
ZeroMQ with the framing of docs/WIRE.md, deadlines and retries.

    import sys; sys.path.insert(0, "clients/python")
    from winnow.client import Client
    with Client("tcp://127.0.0.1:5555") as c:          # the broker (or a service's direct endpoint)
        r = c.recommend(user="1", k=10)                  # or recent_items=[50, 172, 133]
        print(r.model_name, r.model_version, list(r.items), list(r.scores))

Needs pyzmq and protobuf 3.21 (Debian: python3-zmq, python3-protobuf; scripts/bootstrap
installs both). The message classes in winnow/v1 are protoc's output (scripts/gen-proto).
"""
import itertools
import time

import zmq

from winnow.v1 import common_pb2, retrieval_pb2

REQUEST_TAG = b"WRQ1"
REPLY_TAG = b"WRP1"
# Statuses a call is retried on when it is idempotent: the server or the path was not there.
RETRYABLE = {common_pb2.UNAVAILABLE}


class RPCError(Exception):
    """A call that ended with a status other than OK."""

    def __init__(self, code, message):
        super().__init__(f"{common_pb2.StatusCode.Name(code)}: {message}")
        self.code = code
        self.message = message


class Client:
    """One DEALER socket to the broker or to a service's direct endpoint. Not thread-safe."""

    def __init__(self, endpoint, timeout=5.0, attempts=3, backoff=0.05):
        self.endpoint = endpoint
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self._context = zmq.Context.instance()
        self._socket = None
        self._ids = itertools.count(1)
        self._connect()

    def _connect(self):
        if self._socket is not None:
            self._socket.close(linger=0)
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(self.endpoint)

    def close(self):
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def call(self, service, method, request, response_type, timeout=None, idempotent=True):
        """Sends `request` to `service.method` and returns the decoded `response_type`; raises
        RPCError (DEADLINE_EXCEEDED when no reply comes before the deadline)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.time() + timeout
        payload = request.SerializeToString()
        last = None
        for attempt in range(self.attempts if idempotent else 1):
            if attempt:
                time.sleep(min(self.backoff * (2 ** (attempt - 1)), max(0.0, deadline - time.time())))
            if time.time() >= deadline:
                break
            try:
                return self._once(service, method, payload, response_type, deadline, idempotent)
            except RPCError as e:
                last = e
                if e.code not in RETRYABLE:
                    raise
                self._connect()   # a fresh socket: the old one may hold a dead peer's queue
        raise last or RPCError(common_pb2.DEADLINE_EXCEEDED, f"{service}.{method}: no reply within {timeout} s")

    def _once(self, service, method, payload, response_type, deadline, idempotent):
        header = common_pb2.RequestHeader(service=service, method=method, request_id=next(self._ids),
                                          deadline_unix_micros=int(deadline * 1e6), idempotent=idempotent)
        self._socket.send_multipart([REQUEST_TAG + header.SerializeToString(), payload])
        while True:
            left = deadline - time.time()
            if left <= 0 or not self._socket.poll(int(left * 1000) + 1, zmq.POLLIN):
                raise RPCError(common_pb2.DEADLINE_EXCEEDED, f"{service}.{method}: no reply before the deadline")
            frames = self._socket.recv_multipart()
            if len(frames) != 2 or not frames[0].startswith(REPLY_TAG):
                continue   # not a reply of this protocol: dropped, as the servers do
            reply = common_pb2.ReplyHeader()
            reply.ParseFromString(frames[0][len(REPLY_TAG):])
            if reply.request_id != header.request_id:
                continue   # a late reply to an earlier call that timed out
            if reply.code != common_pb2.OK:
                raise RPCError(reply.code, reply.message)
            response = response_type()
            response.ParseFromString(frames[1])
            return response

    def recommend(self, user=None, recent_items=None, k=10, exclude_items=(), exclude_history=False, timeout=None):
        """The top-k items for a user of the feature store, or for the caller's recent items
        (oldest first); returns a RecommendResponse (items, scores, model_name, model_version,
        history)."""
        if (user is None) == (recent_items is None):
            raise ValueError("give user or recent_items")
        request = retrieval_pb2.RecommendRequest(k=k, exclude_items=list(exclude_items), exclude_history=exclude_history)
        if user is not None:
            request.user = str(user)
        else:
            request.recent_items.extend(int(i) for i in recent_items)
        return self.call("retrieval", "Recommend", request, retrieval_pb2.RecommendResponse, timeout=timeout)


if __name__ == "__main__":
    import argparse
    import json

    ap = argparse.ArgumentParser(description="Recommend from a running Winnow stack.")
    ap.add_argument("--endpoint", default="tcp://127.0.0.1:5555")
    ap.add_argument("--user")
    ap.add_argument("--items", help="comma-separated recent item ids")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=5.0)
    a = ap.parse_args()
    with Client(a.endpoint, timeout=a.timeout) as c:
        try:
            r = c.recommend(user=a.user, recent_items=[int(x) for x in a.items.split(",")] if a.items else None, k=a.k)
        except RPCError as e:
            raise SystemExit(f"recommend: {e}")
        print(json.dumps({"model": r.model_name, "version": r.model_version, "items": list(r.items),
                          "scores": [round(s, 6) for s in r.scores]}))
