#!/usr/bin/env python3
"""Exact top-k inner-product search with FAISS's IndexFlatIP, the reference of `winnow bench
retrieval`: the same item matrix and queries (raw little-endian float32 files written by the
bench), the same k, batch size and threads. Prints one JSON object: seconds per batch (the best of
--repeats passes over all queries, divided by the number of batches) and the ids of the first
queries' results (to check that both sides find the same items).

  retrieval_faiss.py ITEMS QUERIES --dim D --k K --batch B --threads T [--repeats R]
"""
import argparse
import json
import time

import faiss
import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("items")
    ap.add_argument("queries")
    ap.add_argument("--dim", type=int, required=True)
    ap.add_argument("--k", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--check", type=int, default=8)
    a = ap.parse_args()
    faiss.omp_set_num_threads(a.threads)
    items = np.fromfile(a.items, dtype="<f4").reshape(-1, a.dim)
    queries = np.fromfile(a.queries, dtype="<f4").reshape(-1, a.dim)
    index = faiss.IndexFlatIP(a.dim)
    index.add(items)
    batches = [queries[i:i + a.batch] for i in range(0, len(queries), a.batch)]
    best = float("inf")
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        for q in batches:
            index.search(q, a.k)
        best = min(best, time.perf_counter() - t0)
    _, ids = index.search(queries[:a.check], a.k)
    print(json.dumps({"seconds_per_batch": best / len(batches), "batches": len(batches),
                      "faiss": faiss.__version__, "ids": (ids + 1).tolist()}))


if __name__ == "__main__":
    main()
