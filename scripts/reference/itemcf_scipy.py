#!/usr/bin/env python3
"""ItemCF reference for `winnow bench itemcf`: WSLRec Eq. 8-9 with scipy.sparse.

    W = diag(1 / log2(1 + n_u)) . C        C[u, v] = times user u has item v, n_u = sum_v C[u, v]
    S = W^T W                              (items x items, sparse)
    sim(v, w) = S[v, w] / (sqrt(S[v, v]) sqrt(S[w, w])),  w != v, kept where S[v, w] > 0
    top-K per row: by float32 score descending, then item id ascending (as Winnow).

Input: a RecBole atomic .inter file (columns user_id and item_id found by name; integer tokens).
Users and items are remapped densely in order of first appearance in the file (items 1..N,
0 = padding), every interaction counts. Output: PREFIX.offsets.i64 (N + 2 entries, indexed by
item id), PREFIX.items.i32, PREFIX.scores.f32 (little-endian), and one JSON line on stdout with
the timings. Timing of the computation starts from the remapped (user, item) arrays and ends
with the top-K arrays, the same span Winnow times.

Run with the private venv:  $(scripts/reference-venv scipy numpy) scripts/reference/itemcf_scipy.py ...
"""
import argparse
import json
import resource
import sys
import time

import numpy as np
import scipy
import scipy.sparse as sp


def read_inter(path):
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
    names = [h.split(":")[0] for h in header]
    ucol, icol = names.index("user_id"), names.index("item_id")
    table = np.loadtxt(path, delimiter="\t", skiprows=1, usecols=(ucol, icol), dtype=np.int64, ndmin=2)
    return table[:, 0], table[:, 1]


def dense_by_first_appearance(tokens):
    """0-based ids in order of first appearance."""
    _, first, inverse = np.unique(tokens, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[inverse.ravel()], len(order)


def itemcf(users, items, n_users, n_items, k):
    """users: 0-based, items: 1-based. Returns CSR (offsets, items, scores) indexed by item id."""
    counts = sp.csr_matrix((np.ones(len(users), dtype=np.float64), (users, items)),
                           shape=(n_users, n_items + 1))
    counts.sum_duplicates()
    n_u = np.asarray(counts.sum(axis=1)).ravel()
    scale = np.zeros_like(n_u)
    scale[n_u > 0] = 1.0 / np.log2(1.0 + n_u[n_u > 0])
    w = sp.diags(scale) @ counts                      # W, users x items
    wt = w.T.tocsr()                                 # items x users
    s = (wt @ w).tocsr()                             # S = W^T W, items x items
    del w, wt, counts
    norms = np.sqrt(s.diagonal())
    rows = np.repeat(np.arange(s.shape[0], dtype=np.int32), np.diff(s.indptr))
    data = s.data / (norms[rows] * norms[s.indices])
    data[rows == s.indices] = 0.0                    # no self-neighbour
    del rows
    scores = data.astype(np.float32)
    del data
    indptr, indices = s.indptr, s.indices

    offsets = np.zeros(n_items + 2, dtype=np.int64)
    out_items, out_scores = [], []
    for v in range(1, n_items + 1):
        lo, hi = indptr[v], indptr[v + 1]
        d, c = scores[lo:hi], indices[lo:hi]
        keep = d > 0
        d, c = d[keep], c[keep]
        m = len(d)
        if m > k:
            kth = np.partition(d, m - k)[m - k]      # k-th largest score
            sel = d >= kth
            d, c = d[sel], c[sel]
        order = np.lexsort((c, -d))[:k]              # score descending, then id ascending
        out_items.append(c[order].astype(np.int32))
        out_scores.append(d[order])
        offsets[v + 1] = offsets[v] + len(order)
    items_out = np.concatenate(out_items) if out_items else np.zeros(0, np.int32)
    scores_out = np.concatenate(out_scores) if out_scores else np.zeros(0, np.float32)
    return offsets, items_out, scores_out, s.nnz


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inter", required=True)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", required=True, help="output prefix")
    a = ap.parse_args()

    t0 = time.perf_counter()
    user_tokens, item_tokens = read_inter(a.inter)
    users, n_users = dense_by_first_appearance(user_tokens)
    items, n_items = dense_by_first_appearance(item_tokens)
    items = items + 1
    read_seconds = time.perf_counter() - t0

    times = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        offsets, nb_items, nb_scores, pairs = itemcf(users, items, n_users, n_items, a.k)
        times.append(time.perf_counter() - t)

    offsets.astype("<i8").tofile(a.out + ".offsets.i64")
    nb_items.astype("<i4").tofile(a.out + ".items.i32")
    nb_scores.astype("<f4").tofile(a.out + ".scores.f32")
    print(json.dumps({
        "compute_seconds": min(times), "all_compute_seconds": times, "read_seconds": read_seconds,
        "users": int(n_users), "items": int(n_items), "interactions": int(len(users)),
        "cooccurring_pairs": int(pairs), "neighbours": int(len(nb_items)),
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "numpy": np.__version__, "scipy": scipy.__version__, "python": sys.version.split()[0],
    }))


if __name__ == "__main__":
    main()
