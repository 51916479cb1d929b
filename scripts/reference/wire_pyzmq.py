#!/usr/bin/env python3
"""pyzmq REQ/REP reference for `winnow bench wire`.

An echo REP server runs in its own process; a REQ client in this process sends PAYLOAD-byte
messages one at a time (REQ/REP is lockstep) over tcp loopback and times each round trip.
Zero-copy sends and receives (copy=False) on both sides: pyzmq at its best.

Prints one JSON object: {"pyzmq": ..., "libzmq": ..., "results": [{"size", "count",
"p50_us", "p99_us", "mean_us", "msgs_per_s", "bytes_per_s"}]} where bytes_per_s counts the
payload both ways (request and echoed reply), as the Winnow side does.
"""
import argparse
import json
import multiprocessing
import socket
import statistics
import time

import zmq


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(endpoint, ready):
    context = zmq.Context()
    rep = context.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    rep.bind(endpoint)
    ready.set()
    while True:
        message = rep.recv(copy=False)
        if len(message) == 4 and message.bytes == b"STOP":
            rep.send(b"")
            break
        rep.send(message, copy=False)
    rep.close()
    context.term()


def percentile(sorted_values, q):
    index = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[index]


def measure(req, size, count, warmup):
    payload = bytes(size)
    for _ in range(warmup):
        req.send(payload, copy=False)
        req.recv(copy=False)
    samples = []
    clock = time.perf_counter_ns
    start = clock()
    for _ in range(count):
        t0 = clock()
        req.send(payload, copy=False)
        req.recv(copy=False)
        samples.append(clock() - t0)
    elapsed = (clock() - start) / 1e9
    samples.sort()
    return {
        "size": size,
        "count": count,
        "p50_us": percentile(samples, 0.50) / 1e3,
        "p99_us": percentile(samples, 0.99) / 1e3,
        "mean_us": statistics.fmean(samples) / 1e3,
        "msgs_per_s": count / elapsed,
        "bytes_per_s": 2 * size * count / elapsed,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="2048,204800", help="payload sizes in bytes, comma separated")
    parser.add_argument("--counts", default="5000,1000", help="round trips per size, comma separated")
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    counts = [int(c) for c in args.counts.split(",")]
    if len(counts) != len(sizes):
        parser.error("--counts needs one count per size")

    endpoint = "tcp://127.0.0.1:%d" % free_port()
    ready = multiprocessing.Event()
    server = multiprocessing.Process(target=serve, args=(endpoint, ready), daemon=True)
    server.start()
    ready.wait(10)

    context = zmq.Context()
    req = context.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(endpoint)
    results = [measure(req, size, count, args.warmup) for size, count in zip(sizes, counts)]
    req.send(b"STOP")
    req.recv()
    req.close()
    context.term()
    server.join(5)
    print(json.dumps({"pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(), "results": results}))


if __name__ == "__main__":
    main()
