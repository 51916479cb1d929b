#!/usr/bin/env python3
"""PyTorch reference for Winnow's ML-100K accuracy protocol (SASRec and GRU4Rec).

Implements the experiment protocol of the project's contracts, independently of the Swift code:

  data     RecBole atomic .inter file (columns found by name: user_id, item_id, timestamp);
           all ratings kept; iterative 5-core on users and items to a fixed point.
  ids      users 0..U-1 in order of first appearance in the filtered file; each user's
           interactions sorted by timestamp (stable: ties keep file order); items 1..N in order
           of first appearance walking users 0..U-1 through their sorted sequences; 0 = padding.
  split    leave-one-out: last item = test, second-to-last = validation, the rest = train.
           training targets: every t >= 1 of the train sequence s[t], from the context s[0..<t]
           (its last 50 items). Two schemes present them (--scheme):
             all     (the default) windows: a window of up to 51 items s[lo..e] feeds s[lo..<e]
                     and predicts the next item at every position (position p -> s[lo+p+1]);
                     window ends e = n-1, n-1-50, n-1-100, ... (n = train length) while e >= 1,
                     lo = max(0, e-50): each target once per epoch, the newest windows full;
             prefix  one row per target, s[max(0,t-50)..<t] -> s[t].
           validation: train (last 50) -> validation item; test: train + validation (last 50)
           -> test item.
  batches  item ids right-padded to L = 50 (the sequence starts at position 0, as RecBole);
           the user vector is read at position length - 1.
  ranking  full ranking over items 1..N (padding excluded), history NOT masked.
           rank = number of items scoring higher than the target, plus those scoring the same
           with a lower item id (a stable sort by descending score);
           HR@k = [rank < k], NDCG@k = 1/log2(rank + 2), MRR@k = 1/(rank + 1)
           (0 when rank >= k); means over users.
  loss     full softmax cross-entropy over items 1..N, the mean over every target of the batch
           (all positions of the windows, or the prefix rows). Adam lr 1e-3 (--lr), betas
           (0.9, 0.999), no weight decay, batch 256 rows (--batch), seeded shuffle every epoch, at most 200 epochs, validation
           every epoch, early stopping on validation NDCG@10 with patience 10, test metrics from
           the best-validation weights.

Usage:
  seqrec_torch.py --model sasrec|gru4rec --seed N --threads T --json FILE [--epochs N]
                  [--scheme all|prefix] [--batch N] [--lr X]
                  [--data FILE.inter] [--patience N] [--checkpoint FILE]

With --checkpoint, the run's whole state (weights, optimiser, both generators, early-stopping
counters, the epoch log) is written to FILE after every epoch, and a run started with an
existing FILE continues from it, giving the same figures as a run that never stopped.
"""
import argparse
import copy
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_LEN = 50
KS = (5, 10, 20)


# ----------------------------------------------------------------------------------- data

def read_inter(path):
    """Returns (users, items, timestamps) as lists of strings/floats in file order."""
    with open(path, "r", encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        names = [h.split(":")[0] for h in header]
        try:
            ui, ii, ti = names.index("user_id"), names.index("item_id"), names.index("timestamp")
        except ValueError:
            sys.exit(f"{path}: line 1: header {header} lacks user_id, item_id or timestamp")
        users, items, times = [], [], []
        for lineno, line in enumerate(f, start=2):
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) != len(header):
                sys.exit(f"{path}: line {lineno}: {len(fields)} fields, header has {len(header)}")
            users.append(fields[ui])
            items.append(fields[ii])
            try:
                times.append(float(fields[ti]))
            except ValueError:
                sys.exit(f"{path}: line {lineno}: column timestamp: not a number: {fields[ti]!r}")
    return users, items, times


def data_path(given):
    """The .inter file to read: `given`, or ML-100K from the cache of scripts/fetch-ml100k."""
    if given is not None:
        return given
    here = os.path.dirname(os.path.abspath(__file__))
    return subprocess.run([os.path.join(here, "..", "fetch-ml100k")], check=True,
                          capture_output=True, text=True).stdout.strip()


def k_core(users, items, k):
    """Indices (file order) of the rows that survive iterative k-core on users and items."""
    keep = list(range(len(users)))
    while True:
        uc, ic = {}, {}
        for r in keep:
            uc[users[r]] = uc.get(users[r], 0) + 1
            ic[items[r]] = ic.get(items[r], 0) + 1
        nxt = [r for r in keep if uc[users[r]] >= k and ic[items[r]] >= k]
        if len(nxt) == len(keep):
            return keep
        keep = nxt


def build_dataset(path, k=5):
    users, items, times = read_inter(path)
    rows = k_core(users, items, k)
    user_ids, per_user = {}, []
    for r in rows:
        u = user_ids.setdefault(users[r], len(user_ids))
        if u == len(per_user):
            per_user.append([])
        per_user[u].append(r)
    item_ids = {}
    sequences = []
    for rs in per_user:
        rs = sorted(rs, key=lambda r: times[r])  # Python's sort is stable: ties keep file order
        seq = []
        for r in rs:
            seq.append(item_ids.setdefault(items[r], len(item_ids) + 1))
        sequences.append(seq)
    return sequences, len(item_ids), len(rows)


def dump_sequences(path, out):
    """Sequences with original tokens, to compare with the Swift pipeline line by line."""
    users, items, times = read_inter(path)
    rows = k_core(users, items, 5)
    per_user = {}
    for r in rows:
        per_user.setdefault(users[r], []).append(r)   # dicts keep first-appearance order
    sequences, n_items, n_rows = build_dataset(path)
    lines = []
    for u, (token, rs) in enumerate(per_user.items()):
        rs = sorted(rs, key=lambda r: times[r])
        lines.append(token + "\t" + " ".join(f"{items[r]}={i}" for r, i in zip(rs, sequences[u])))
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")


def right_padded(prefixes):
    """(n, MAX_LEN) int64 matrix of right-padded prefixes and their lengths."""
    mat = np.zeros((len(prefixes), MAX_LEN), dtype=np.int64)
    lens = np.zeros(len(prefixes), dtype=np.int64)
    for i, p in enumerate(prefixes):
        p = p[-MAX_LEN:]
        mat[i, :len(p)] = p
        lens[i] = len(p)
    return mat, lens


def windows(tr):
    """(inputs, targets) per window of a train sequence, newest first (see the docstring)."""
    out, e = [], len(tr) - 1
    while e >= 1:
        lo = max(0, e - MAX_LEN)
        out.append((tr[lo:e], tr[lo + 1:e + 1]))
        e -= MAX_LEN
    return out


def leave_one_out(sequences, scheme="all"):
    train_p, train_t, valid_p, valid_t, test_p, test_t = [], [], [], [], [], []
    for seq in sequences:
        tr = seq[:-2]
        if scheme == "all":
            for inputs, targets in windows(tr):
                train_p.append(inputs)
                train_t.append(targets)
        else:
            for t in range(1, len(tr)):
                train_p.append(tr[max(0, t - MAX_LEN):t])
                train_t.append(tr[t])
        valid_p.append(tr)
        valid_t.append(seq[-2])
        test_p.append(seq[:-1])
        test_t.append(seq[-1])
    out = {}
    for name, p, t in (("train", train_p, train_t), ("valid", valid_p, valid_t),
                       ("test", test_p, test_t)):
        mat, lens = right_padded(p)
        if name == "train" and scheme == "all":
            targets, _ = right_padded(t)      # (n, MAX_LEN), 0 past each window's length
            target = torch.from_numpy(targets)
        else:
            target = torch.tensor(t, dtype=torch.int64)
        out[name] = (torch.from_numpy(mat), torch.from_numpy(lens), target)
    return out


# --------------------------------------------------------------------------------- models

class SASRec(nn.Module):
    """SASRec as RecBole implements it (post-LN blocks), with the contract's hyper-parameters."""

    def __init__(self, n_items, d=64, n_layers=2, n_heads=2, inner=256, hidden_dropout=0.5,
                 attn_dropout=0.5, eps=1e-12):
        super().__init__()
        self.d, self.n_heads = d, n_heads
        self.item_embedding = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.position_embedding = nn.Embedding(MAX_LEN, d)
        self.ln_in = nn.LayerNorm(d, eps=eps)
        self.drop_in = nn.Dropout(hidden_dropout)
        self.layers = nn.ModuleList()
        for _ in range(n_layers):
            self.layers.append(nn.ModuleDict(dict(
                q=nn.Linear(d, d), k=nn.Linear(d, d), v=nn.Linear(d, d), o=nn.Linear(d, d),
                attn_drop=nn.Dropout(attn_dropout), out_drop=nn.Dropout(hidden_dropout),
                ln1=nn.LayerNorm(d, eps=eps),
                fc1=nn.Linear(d, inner), fc2=nn.Linear(inner, d),
                ff_drop=nn.Dropout(hidden_dropout), ln2=nn.LayerNorm(d, eps=eps))))
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            m.weight.data.normal_(mean=0.0, std=0.02)
        if isinstance(m, nn.LayerNorm):
            m.bias.data.zero_()
            m.weight.data.fill_(1.0)
        if isinstance(m, nn.Linear) and m.bias is not None:
            m.bias.data.zero_()

    def user_vectors(self, seq, lens):
        return self.every_position(seq)[torch.arange(seq.shape[0]), lens - 1]

    def every_position(self, seq):
        """(B, L, d): the last block's output at every position (causal: position p sees 0..p)."""
        B, L = seq.shape
        H, dh = self.n_heads, self.d // self.n_heads
        pos = torch.arange(L, device=seq.device).unsqueeze(0).expand(B, L)
        x = self.drop_in(self.ln_in(self.item_embedding(seq) + self.position_embedding(pos)))
        keep = (seq != 0).unsqueeze(1).unsqueeze(2)                      # B,1,1,L keys
        causal = torch.tril(torch.ones(L, L, dtype=torch.bool, device=seq.device))
        mask = torch.where(keep & causal, 0.0, -10000.0)                 # B,1,L,L
        for blk in self.layers:
            q = blk["q"](x).view(B, L, H, dh).transpose(1, 2)
            k = blk["k"](x).view(B, L, H, dh).transpose(1, 2)
            v = blk["v"](x).view(B, L, H, dh).transpose(1, 2)
            att = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(dh) + mask
            att = blk["attn_drop"](torch.softmax(att, dim=-1))
            ctx = torch.matmul(att, v).transpose(1, 2).reshape(B, L, self.d)
            x = blk["ln1"](blk["out_drop"](blk["o"](ctx)) + x)
            h = blk["fc2"](F.gelu(blk["fc1"](x)))
            x = blk["ln2"](blk["ff_drop"](h) + x)
        return x

    def item_table(self):
        return self.item_embedding.weight[1:]


class GRU4Rec(nn.Module):
    """GRU4Rec as RecBole implements it, with the contract's hyper-parameters and init."""

    def __init__(self, n_items, d=64, hidden=128, emb_dropout=0.3):
        super().__init__()
        self.item_embedding = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.emb_drop = nn.Dropout(emb_dropout)
        self.gru = nn.GRU(d, hidden, num_layers=1, bias=True, batch_first=True)
        self.dense = nn.Linear(hidden, d)
        nn.init.xavier_normal_(self.item_embedding.weight)
        for name, p in self.gru.named_parameters():
            if name.startswith("weight"):
                nn.init.xavier_uniform_(p)
            else:
                nn.init.zeros_(p)
        nn.init.xavier_uniform_(self.dense.weight)
        nn.init.zeros_(self.dense.bias)

    def user_vectors(self, seq, lens):
        out, _ = self.gru(self.emb_drop(self.item_embedding(seq)))
        return self.dense(out[torch.arange(seq.shape[0]), lens - 1])

    def every_position(self, seq):
        out, _ = self.gru(self.emb_drop(self.item_embedding(seq)))
        return self.dense(out)

    def item_table(self):
        return self.item_embedding.weight[1:]


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate(model, split, batch=1024):
    seq, lens, target = split
    model.eval()
    table = model.item_table()
    sums = {f"{m}@{k}": 0.0 for k in KS for m in ("ndcg", "hr", "mrr")}
    for s in range(0, seq.shape[0], batch):
        scores = model.user_vectors(seq[s:s + batch], lens[s:s + batch]) @ table.T  # B, N
        t = target[s:s + batch] - 1
        ts = scores.gather(1, t.unsqueeze(1))
        # Ties go to the lower item id (as a stable sort by descending score would order them).
        before = torch.arange(scores.shape[1]).unsqueeze(0) < t.unsqueeze(1)
        rank = ((scores > ts) | ((scores == ts) & before)).sum(dim=1).double()
        for k in KS:
            hit = (rank < k).double()
            sums[f"hr@{k}"] += hit.sum().item()
            sums[f"ndcg@{k}"] += (hit / torch.log2(rank + 2.0)).sum().item()
            sums[f"mrr@{k}"] += (hit / (rank + 1.0)).sum().item()
    model.train()
    n = seq.shape[0]
    return {key: v / n for key, v in sums.items()}


# ------------------------------------------------------------------------------- training

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["sasrec", "gru4rec"], required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", required=True)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--scheme", choices=["all", "prefix"], default="all",
                    help="all-position windows (default) or one row per prefix")
    ap.add_argument("--batch", type=int, default=256, help="rows per batch (windows or prefixes)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--data", default=None, help="ml-100k.inter (default: scripts/fetch-ml100k)")
    ap.add_argument("--checkpoint", default=None, metavar="FILE",
                    help="save the run's state after every epoch; continue from FILE if it exists")
    ap.add_argument("--dump-sequences", default=None, metavar="FILE",
                    help="write the remapped sequences (one user per line: user token, then "
                         "item-token=id pairs in time order) and exit")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    path = data_path(args.data)

    if args.dump_sequences:
        dump_sequences(path, args.dump_sequences)
        return

    start = time.time()
    sequences, n_items, n_rows = build_dataset(path)
    data = leave_one_out(sequences, args.scheme)
    n_train = data["train"][0].shape[0]
    n_targets = int((data["train"][2] > 0).sum())
    print(f"data: {len(sequences)} users, {n_items} items, {n_rows} interactions, "
          f"{n_train} training rows ({args.scheme}), {n_targets} targets", flush=True)

    model = SASRec(n_items) if args.model == "sasrec" else GRU4Rec(n_items)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    seq, lens, target = data["train"]

    best, best_epoch, best_state, bad, log = -1.0, 0, None, 0, []
    epochs_run, stopped, spent = 0, False, 0.0
    # what must match for a checkpoint to continue this run
    fingerprint = {"model": args.model, "seed": args.seed, "threads": args.threads,
                   "patience": args.patience, "scheme": args.scheme, "batch": args.batch,
                   "lr": args.lr, "users": len(sequences), "items": n_items,
                   "interactions": n_rows, "train_instances": n_train}
    if args.checkpoint and os.path.exists(args.checkpoint):
        ck = torch.load(args.checkpoint, weights_only=False)
        for k, v in fingerprint.items():
            if ck["fingerprint"].get(k) != v:
                sys.exit(f"{args.checkpoint}: checkpoint has {k} = {ck['fingerprint'].get(k)!r}, "
                         f"this run {v!r}")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        gen.set_state(ck["shuffle_generator"])
        torch.set_rng_state(ck["torch_generator"])
        best, best_epoch, best_state, bad = ck["best"], ck["best_epoch"], ck["best_state"], ck["bad"]
        log, epochs_run, stopped, spent = ck["log"], ck["epoch"], ck["stopped"], ck["seconds"]
        start -= spent
        print(f"checkpoint: continuing after epoch {epochs_run} from {args.checkpoint}", flush=True)

    def save_checkpoint():
        if not args.checkpoint:
            return
        torch.save({"fingerprint": fingerprint, "epoch": epochs_run, "stopped": stopped,
                    "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "shuffle_generator": gen.get_state(), "torch_generator": torch.get_rng_state(),
                    "best": best, "best_epoch": best_epoch, "best_state": best_state, "bad": bad,
                    "log": log, "seconds": time.time() - start}, args.checkpoint + ".partial")
        os.replace(args.checkpoint + ".partial", args.checkpoint)

    for epoch in range(epochs_run + 1, args.epochs + 1):
        if stopped:
            break
        t0 = time.time()
        model.train()
        perm = torch.randperm(n_train, generator=gen)
        total, batches = 0.0, 0
        for s in range(0, n_train, args.batch):
            idx = perm[s:s + args.batch]
            if args.scheme == "all":
                # CE at every position that has a target, as one mean over the batch's targets
                t = target[idx]
                rows = model.every_position(seq[idx])[t > 0]
                loss = F.cross_entropy(rows @ model.item_table().T, t[t > 0] - 1)
            else:
                logits = model.user_vectors(seq[idx], lens[idx]) @ model.item_table().T
                loss = F.cross_entropy(logits, target[idx] - 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            batches += 1
        train_s = time.time() - t0
        valid = evaluate(model, data["valid"])
        epochs_run = epoch
        entry = {"epoch": epoch, "loss": total / batches, "valid_ndcg@10": valid["ndcg@10"],
                 "valid_hr@10": valid["hr@10"], "train_seconds": train_s,
                 "seconds": time.time() - t0}
        log.append(entry)
        print(json.dumps(entry), flush=True)
        if valid["ndcg@10"] > best:
            best, best_epoch, bad = valid["ndcg@10"], epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            stopped = bad >= args.patience
        save_checkpoint()
        if stopped:
            break

    model.load_state_dict(best_state)
    result = {
        "model": args.model, "seed": args.seed, "epochs": epochs_run, "best_epoch": best_epoch,
        "valid": evaluate(model, data["valid"]), "test": evaluate(model, data["test"]),
        "seconds": time.time() - start,
        "framework": f"pytorch {torch.__version__}", "threads": args.threads,
        "scheme": args.scheme, "batch": args.batch, "lr": args.lr,
        "history_masked": False, "max_len": MAX_LEN, "padding": "right",
        "data": {"path": path, "users": len(sequences), "items": n_items,
                 "interactions": n_rows, "train_instances": n_train, "train_targets": n_targets},
        "log": log,
    }
    with open(args.json + ".partial", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(args.json + ".partial", args.json)
    print(json.dumps({k: result[k] for k in ("model", "seed", "epochs", "best_epoch", "test",
                                             "seconds")}), flush=True)


if __name__ == "__main__":
    main()
