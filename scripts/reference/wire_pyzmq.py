#!/usr/bin/env python3
"""pyzmq REQ/REP reference for `winnow bench wire`.

An echo REP server runs in its own process; a REQ client in this process sends PAYLOAD-byte
messages one at a time (REQ/REP is lockstep) over tcp loopback and times each round trip.
Zero-copy sends and receives (copy=False) on both sides: pyzmq at its best.

The same client also goes through a relay: libzmq's own `zmq_proxy` (ROUTER front, DEALER back,
the loop in C with the GIL released) in a third process, with a second REP echo server connected
to its back. That is the least any relaying broker can add on this machine: two more trips over
loopback and one more process woken per direction, with no routing decisions at all.

Prints one JSON object: {"pyzmq": ..., "libzmq": ..., "results": [...], "relay_results": [...]},
each result {"size", "count", "p50_us", "p99_us", "mean_us", "msgs_per_s", "bytes_per_s"}, where
bytes_per_s counts the payload both ways (request and echoed reply), as the Winnow side does.
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


def serve(endpoint, bind, ready):
    context = zmq.Context()
    rep = context.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    if bind:
        rep.bind(endpoint)
    else:
        rep.connect(endpoint)
    ready.set()
    while True:
        message = rep.recv(copy=False)
        if len(message) == 4 and message.bytes == b"STOP":
            rep.send(b"")
            break
        rep.send(message, copy=False)
    rep.close()
    context.term()


def relay(front, back, ready):
    context = zmq.Context()
    frontend = context.socket(zmq.ROUTER)
    frontend.setsockopt(zmq.LINGER, 0)
    frontend.bind(front)
    backend = context.socket(zmq.DEALER)
    backend.setsockopt(zmq.LINGER, 0)
    backend.bind(back)
    ready.set()
    zmq.proxy(frontend, backend)  # runs until the process is terminated


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

    def start(target, *arguments):
        ready = multiprocessing.Event()
        process = multiprocessing.Process(target=target, args=arguments + (ready,), daemon=True)
        process.start()
        if not ready.wait(10):
            raise SystemExit("wire_pyzmq.py: %s did not start" % target.__name__)
        return process

    def run(endpoint):
        context = zmq.Context()
        req = context.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(endpoint)
        results = [measure(req, size, count, args.warmup) for size, count in zip(sizes, counts)]
        req.send(b"STOP")
        req.recv()
        req.close()
        context.term()
        return results

    endpoint = "tcp://127.0.0.1:%d" % free_port()
    server = start(serve, endpoint, True)
    results = run(endpoint)
    server.join(5)

    front, back = ("tcp://127.0.0.1:%d" % free_port() for _ in range(2))
    proxy = start(relay, front, back)
    relayed_server = start(serve, back, False)  # connects to the proxy's back
    relay_results = run(front)
    relayed_server.join(5)
    # SIGKILL: zmq_proxy never returns, and a parent that ignores SIGTERM (as a process handling
    # it through a dispatch source does) passes that on, so terminate() would not end it.
    proxy.kill()
    proxy.join(5)
    print(json.dumps({"pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(), "results": results,
                      "relay_results": relay_results}))


if __name__ == "__main__":
    main()
