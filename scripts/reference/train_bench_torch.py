#!/usr/bin/env python3
"""PyTorch side of `winnow bench train`: one row per process (so peak memory is per row).

Rows (the same synthetic batches as the Swift side: batch 256, L = 50, every position a real
item, items and targets uniform in 1..N from a seeded generator):
  sasrec-full-1683, sasrec-full-100000   SASRec (d 64, 2 blocks, 2 heads, inner 256, dropout 0.5,
                                          RecBole post-LN blocks), full softmax CE, Adam
  sasrec-sampled-100000                  same, sampled softmax: 100 uniform negatives shared by
                                          the batch, log-Q corrected, accidental hits masked
  gru4rec-full-1683                      GRU4Rec (emb 64, dropout 0.3, GRU 128, dense 128->64)
  sasrec-all-1683, gru4rec-all-1683      all-position training: the model's output at every one
                                         of the 50 positions, full softmax CE of 50 targets per
                                         sequence (the mean over the batch's 12,800 targets)
  eval-10000x100000                      rank of a target among 100,000 items for 10,000 users
                                          (d 64), batches of 1,024 users, best of 3

Prints one JSON object: {"row", "value", "unit", "peak_rss_mb", "threads"}.
Usage: train_bench_torch.py --row NAME [--threads 2] [--seconds 20]
"""
import argparse
import json
import math
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

B, L, D = 256, 50, 64


class SASRec(nn.Module):
    def __init__(self, n_items, d=D, n_layers=2, n_heads=2, inner=256, p=0.5, eps=1e-12):
        super().__init__()
        self.d, self.h = d, n_heads
        self.item_embedding = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.position_embedding = nn.Embedding(L, d)
        self.ln_in, self.drop_in = nn.LayerNorm(d, eps=eps), nn.Dropout(p)
        self.layers = nn.ModuleList(nn.ModuleDict(dict(
            q=nn.Linear(d, d), k=nn.Linear(d, d), v=nn.Linear(d, d), o=nn.Linear(d, d),
            attn_drop=nn.Dropout(p), out_drop=nn.Dropout(p), ln1=nn.LayerNorm(d, eps=eps),
            fc1=nn.Linear(d, inner), fc2=nn.Linear(inner, d), ff_drop=nn.Dropout(p),
            ln2=nn.LayerNorm(d, eps=eps))) for _ in range(n_layers))
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.data.normal_(0.0, 0.02)
            if isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def every_position(self, seq):
        b, l = seq.shape
        dh = self.d // self.h
        pos = torch.arange(l).unsqueeze(0).expand(b, l)
        x = self.drop_in(self.ln_in(self.item_embedding(seq) + self.position_embedding(pos)))
        keep = (seq != 0).unsqueeze(1).unsqueeze(2)
        causal = torch.tril(torch.ones(l, l, dtype=torch.bool))
        mask = torch.where(keep & causal, 0.0, -10000.0)
        for blk in self.layers:
            q = blk["q"](x).view(b, l, self.h, dh).transpose(1, 2)
            k = blk["k"](x).view(b, l, self.h, dh).transpose(1, 2)
            v = blk["v"](x).view(b, l, self.h, dh).transpose(1, 2)
            att = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(dh) + mask
            att = blk["attn_drop"](torch.softmax(att, dim=-1))
            ctx = torch.matmul(att, v).transpose(1, 2).reshape(b, l, self.d)
            x = blk["ln1"](blk["out_drop"](blk["o"](ctx)) + x)
            x = blk["ln2"](blk["ff_drop"](blk["fc2"](F.gelu(blk["fc1"](x)))) + x)
        return x

    def forward(self, seq, lens):
        return self.every_position(seq)[torch.arange(seq.shape[0]), lens - 1]

    def table(self):
        return self.item_embedding.weight[1:]


class GRU4Rec(nn.Module):
    def __init__(self, n_items, d=D, hidden=128, p=0.3):
        super().__init__()
        self.item_embedding = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.drop = nn.Dropout(p)
        self.gru = nn.GRU(d, hidden, num_layers=1, bias=True, batch_first=True)
        self.dense = nn.Linear(hidden, d)

    def forward(self, seq, lens):
        out, _ = self.gru(self.drop(self.item_embedding(seq)))
        return self.dense(out[torch.arange(seq.shape[0]), lens - 1])

    def every_position(self, seq):
        out, _ = self.gru(self.drop(self.item_embedding(seq)))
        return self.dense(out)

    def table(self):
        return self.item_embedding.weight[1:]


def train_rate(model_name, n_items, kind, seconds):
    g = torch.Generator().manual_seed(1)
    model = SASRec(n_items) if model_name == "sasrec" else GRU4Rec(n_items)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    seq = torch.randint(1, n_items + 1, (B, L), generator=g)
    lens = torch.full((B,), L, dtype=torch.int64)
    tgt = torch.randint(1, n_items + 1, (B, L) if kind == "all" else (B,), generator=g)
    S = 100
    log_q = math.log(S / n_items)   # uniform proposal: log(S * 1/N)

    def step():
        opt.zero_grad()
        if kind == "all":
            rows = model.every_position(seq).reshape(B * L, -1)
            loss = F.cross_entropy(rows @ model.table().T, tgt.reshape(-1) - 1)
            loss.backward()
            opt.step()
            return
        u = model(seq, lens)
        if kind == "sampled":
            neg = torch.randint(1, n_items + 1, (S,), generator=g)
            w = model.item_embedding.weight
            pos_logit = (u * w[tgt]).sum(-1, keepdim=True) - log_q
            neg_logit = u @ w[neg].T - log_q
            neg_logit = neg_logit.masked_fill(neg.unsqueeze(0) == tgt.unsqueeze(1), float("-inf"))
            logits = torch.cat([pos_logit, neg_logit], dim=1)
            loss = F.cross_entropy(logits, torch.zeros(B, dtype=torch.int64))
        else:
            loss = F.cross_entropy(u @ model.table().T, tgt - 1)
        loss.backward()
        opt.step()

    model.train()
    for _ in range(3):
        step()
    steps, t0 = 0, time.perf_counter()
    while True:
        step()
        steps += 1
        el = time.perf_counter() - t0
        if el >= seconds and steps >= 5:
            return steps * B / el


def eval_time(users=10_000, n_items=100_000, batch=1024):
    g = torch.Generator().manual_seed(1)
    U = torch.randn(users, D, generator=g)
    E = torch.randn(n_items, D, generator=g)
    tgt = torch.randint(0, n_items, (users,), generator=g)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        with torch.no_grad():
            ranks = []
            for s in range(0, users, batch):
                scores = U[s:s + batch] @ E.T
                ts = scores.gather(1, tgt[s:s + batch].unsqueeze(1))
                ranks.append((scores > ts).sum(1))
            torch.cat(ranks)
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--row", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    if a.row == "eval-10000x100000":
        value, unit = eval_time(), "s"
    else:
        model, kind, n = a.row.split("-")
        value, unit = train_rate(model, int(n), kind, a.seconds), "sequences/s"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"row": a.row, "value": value, "unit": unit, "peak_rss_mb": peak, "threads": a.threads}))


if __name__ == "__main__":
    main()
