#!/usr/bin/env python3
"""Summarises run JSONs (the contract's schema) into the Markdown rows of docs/RESULTS.md.

  summarize.py DIR [--prefix torch] [--models sasrec gru4rec] [--seeds 1 2 3] [--against PREFIX]

Prints one row per finished run and, per model, mean ± sample std over the finished seeds with
how many of the requested seeds that is. With --against, also the difference of means to the
runs of PREFIX in DIR and two standard errors of that difference (sqrt(s1²/n1 + s2²/n2)).
Standard library only.
"""
import argparse
import json
import os
import statistics

NAMES = {"sasrec": "SASRec", "gru4rec": "GRU4Rec"}
KEYS = ("ndcg@10", "hr@10", "mrr@10")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--prefix", default="torch")
    ap.add_argument("--models", nargs="+", default=["sasrec", "gru4rec"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--against", default=None, help="prefix of the runs to compare with")
    args = ap.parse_args()
    print("| model | seed | NDCG@10 | HR@10 | MRR@10 | best epoch / epochs | seconds | s/epoch |")
    print("|---|---|---|---|---|---|---|---|")
    runs = {}
    for model in args.models:
        for seed in args.seeds:
            path = os.path.join(args.dir, f"{args.prefix}-{model}-{seed}.json")
            if not os.path.exists(path):
                print(f"| {NAMES.get(model, model)} | {seed} | pending | | | | | |")
                continue
            with open(path) as f:
                r = json.load(f)
            runs.setdefault(model, []).append(r)
            t = r["test"]
            per_epoch = r["seconds"] / max(r["epochs"], 1)
            print(f"| {NAMES.get(model, model)} | {seed} | {t['ndcg@10']:.4f} | {t['hr@10']:.4f} | "
                  f"{t['mrr@10']:.4f} | {r['best_epoch']} / {r['epochs']} | {r['seconds']:.0f} | {per_epoch:.0f} |")
    print()
    print("| model | NDCG@10 | HR@10 | MRR@10 | epochs (best) | seeds |")
    print("|---|---|---|---|---|---|")
    for model in args.models:
        rs = runs.get(model, [])
        if not rs:
            print(f"| {NAMES.get(model, model)} | pending | pending | pending | pending | 0 of {len(args.seeds)} |")
            continue
        cells = []
        for key in KEYS:
            vals = [r["test"][key] for r in rs]
            std = statistics.stdev(vals) if len(vals) > 1 else float("nan")
            cells.append(f"{statistics.mean(vals):.4f} ± {std:.4f}" if len(vals) > 1 else f"{vals[0]:.4f}")
        ep = ", ".join(f"{r['epochs']} ({r['best_epoch']})" for r in rs)
        print(f"| {NAMES.get(model, model)} | {' | '.join(cells)} | {ep} | {len(rs)} of {len(args.seeds)} |")
    if args.against:
        print()
        print(f"| model | metric | {args.prefix} − {args.against} | 2 SE of the difference | within |")
        print("|---|---|---|---|---|")
        for model in args.models:
            mine = runs.get(model, [])
            theirs = []
            for seed in args.seeds:
                path = os.path.join(args.dir, f"{args.against}-{model}-{seed}.json")
                if os.path.exists(path):
                    with open(path) as f:
                        theirs.append(json.load(f))
            if len(mine) < 2 or len(theirs) < 2:
                continue
            for key in KEYS:
                a = [r["test"][key] for r in mine]
                b = [r["test"][key] for r in theirs]
                diff = statistics.mean(a) - statistics.mean(b)
                se2 = 2 * (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5
                print(f"| {NAMES.get(model, model)} | {key} | {diff:+.4f} | {se2:.4f} | {'yes' if abs(diff) <= se2 else 'no'} |")


if __name__ == "__main__":
    main()
