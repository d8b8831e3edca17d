"""Why the engine computes decode-step projections as `W @ x^T` on the CPU.

Run by hand (not in CI):

    .venv/bin/python bench/gemm.py                 # MusicGen-small shapes, 2 threads
    .venv/bin/python bench/gemm.py --dim 2048      # MusicGen-large shapes

For every projection shape of one transformer layer (self-attention in-projection, output
projections, feed-forward up and down) and every row count a decode step sees (2 rows per job:
conditional + unconditional), it times `F.linear(x, W)` against `torch.mm(W, x.t()).t()`
(what `models.instruct_musicgen.linear` does for 2-128 rows), and mkldnn's linear where the
build has it. The two variants run interleaved, round after round, and the fastest round of each
is kept, so drift of a shared machine's speed hits both alike. Prints one row per shape and
row count: milliseconds per call and the speed-up of `W @ x^T`.
"""
from __future__ import annotations

import argparse
import os
import time
from functools import partial

import torch
import torch.nn.functional as F


def _time(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def _transposed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The decode step's form of a projection: `W @ x^T`, transposed back."""
    return torch.mm(weight, x.t()).t() + bias


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=1024,
                        help="model width (small 1024, large 2048)")
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32, 64, 128, 256])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    d = args.dim
    shapes = {"in_proj (3D x D)": (3 * d, d), "out_proj (D x D)": (d, d),
              "ff up (4D x D)": (4 * d, d), "ff down (D x 4D)": (d, 4 * d)}
    print(f"torch {torch.__version__}, {args.threads} threads, float32, "
          f"fastest of {args.rounds} rounds")
    print(f"{'projection':<18} {'rows':>5} | {'F.linear ms':>11} {'W@x^T ms':>9} {'speed-up':>8}")
    with torch.no_grad():
        for name, (out_f, in_f) in shapes.items():
            weight = torch.randn(out_f, in_f)
            bias = torch.randn(out_f)
            for rows in args.rows:
                x = torch.randn(rows, in_f)
                linear = partial(F.linear, x, weight, bias)
                transposed = partial(_transposed, x, weight, bias)
                torch.testing.assert_close(linear(), transposed(), rtol=1e-4, atol=1e-3)
                calls = max(3, int(2e9 // (out_f * in_f * max(rows, 8) * 2 * 50)))
                best_linear = best_transposed = float("inf")
                for _ in range(args.rounds):
                    best_linear = min(best_linear, _time(linear, calls))
                    best_transposed = min(best_transposed, _time(transposed, calls))
                print(f"{name:<18} {rows:>5} | {best_linear * 1e3:>11.3f} "
                      f"{best_transposed * 1e3:>9.3f} {best_linear / best_transposed:>7.2f}x",
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
