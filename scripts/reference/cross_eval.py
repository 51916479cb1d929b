#!/usr/bin/env python3
"""Evaluates the best weights of a Winnow GRU4Rec run with the PyTorch reference's own pipeline.

  cross_eval.py --checkpoint results/winnow-gru4rec-2.ckpt [--data FILE.inter]

Reads section 2 (best weights) of a `winnow train --local --checkpoint` file, loads it into
seqrec_torch.py's GRU4Rec and prints one JSON line with that reference's validation and test
metrics. When Winnow's own JSON for the run reports the same figures, the two evaluations
(data pipeline, split, forward pass, ranking, metrics) agree on the same weights, and any gap
between the two frameworks' results lies in training, not in measuring.

File layouts (little-endian), as Shared/Training/Checkpoint.swift and
Shared/Numerics/Parameters.swift write them:
  checkpoint  "WNWC" | u32 version | u32 sections | per section: u64 length, bytes | u32 CRC-32
  parameters  "WNWP" | u32 version | u32 tensors | per tensor: u32 name length, name,
              u32 rank, u64 per dimension | float32 values of all tensors in order | u32 CRC-32
"""
import argparse
import json
import os
import struct
import sys
import zlib

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seqrec_torch as ref  # noqa: E402


def entry_count(blob, magic, where):
    """The entry count of a Winnow file after checking its magic and trailing CRC-32."""
    if len(blob) < 16 or blob[:4] != magic:
        sys.exit(f"{where}: not a Winnow {magic.decode()} file (bad magic or too short)")
    stored, = struct.unpack_from("<I", blob, len(blob) - 4)
    if zlib.crc32(blob[:-4]) != stored:
        sys.exit(f"{where}: checksum mismatch: the data is corrupt")
    _, count = struct.unpack_from("<II", blob, 4)
    return count


def sections(path):
    blob = open(path, "rb").read()
    count = entry_count(blob, b"WNWC", path)
    offset, out = 12, []
    for _ in range(count):
        n, = struct.unpack_from("<Q", blob, offset)
        out.append(blob[offset + 8:offset + 8 + n])
        offset += 8 + n
    return out


def tensors(blob, where):
    count = entry_count(blob, b"WNWP", where)
    offset, specs = 12, []
    for _ in range(count):
        n, = struct.unpack_from("<I", blob, offset)
        name = blob[offset + 4:offset + 4 + n].decode()
        rank, = struct.unpack_from("<I", blob, offset + 4 + n)
        shape = struct.unpack_from(f"<{rank}Q", blob, offset + 8 + n)
        specs.append((name, shape))
        offset += 8 + n + 8 * rank
    values = np.frombuffer(blob, dtype="<f4", offset=offset, count=(len(blob) - 4 - offset) // 4)
    out, at = {}, 0
    for name, shape in specs:
        size = int(np.prod(shape))
        out[name] = torch.from_numpy(values[at:at + size].reshape(shape).copy())
        at += size
    if at != values.size:
        sys.exit(f"{where}: {values.size} values for tensors that hold {at}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a winnow train --local --checkpoint file of a GRU4Rec run")
    ap.add_argument("--data", default=None, help="ml-100k.inter (default: scripts/fetch-ml100k)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    weights = tensors(sections(args.checkpoint)[2], f"{args.checkpoint}: best weights")
    sequences, n_items, _ = ref.build_dataset(ref.data_path(args.data))
    data = ref.leave_one_out(sequences)
    model = ref.GRU4Rec(n_items)
    names = {"item_embedding.weight": "item_embedding",
             "gru.weight_ih_l0": "gru.0.weight_ih", "gru.weight_hh_l0": "gru.0.weight_hh",
             "gru.bias_ih_l0": "gru.0.bias_ih", "gru.bias_hh_l0": "gru.0.bias_hh",
             "dense.weight": "dense.weight", "dense.bias": "dense.bias"}
    state = model.state_dict()
    if set(state) != set(names) or set(weights) != set(names.values()):
        sys.exit(f"{args.checkpoint}: tensors {sorted(weights)} do not map onto the reference's "
                 f"{sorted(state)} (a 1-layer GRU4Rec with biases is expected)")
    for torch_name, winnow_name in names.items():
        if tuple(weights[winnow_name].shape) != tuple(state[torch_name].shape):
            sys.exit(f"{args.checkpoint}: {winnow_name} has shape {tuple(weights[winnow_name].shape)}, "
                     f"the reference's {torch_name} {tuple(state[torch_name].shape)}")
        state[torch_name] = weights[winnow_name]
    model.load_state_dict(state)
    model.eval()
    print(json.dumps({"checkpoint": args.checkpoint, "evaluated_by": f"pytorch {torch.__version__}",
                      "valid": ref.evaluate(model, data["valid"]), "test": ref.evaluate(model, data["test"])}))


if __name__ == "__main__":
    main()
