"""The learner's roofline at the canonical config: FLOPs of one learner step, this CPU's GEMM
throughput at exactly those shapes (fp32 and bf16), and the env-steps-per-second ceiling they
imply, next to what the fused learner step and the training loop reach.

One learner step of the flat MLP (fastdqn/learners/flat.py, the fused CPU route) is eleven GEMMs with
double DQN: the online net forward on [s; s'] (2B rows), the target net forward on s' (B rows),
and the backward's weight gradients (one per layer) and input gradients (one per layer but the
first). Everything else (gather, TD gradient, ReLU backward, clipping + Adam + target update) is
O(parameters + batch) and runs in Numba kernels. The GEMMs are the floor: a step cannot take
less than their time at this CPU's throughput, so the loop cannot exceed

    SPS ceiling = transitions per learner step / GEMM time per step
                = (train_every / gradient_steps) / t_gemm,

whatever happens around them; env stepping on the other core overlaps the learner, so it
bounds the loop separately (env-only SPS, `bench/throughput.py`).

    python bench/roofline.py                   # canonical: LunarLander MLP 128x128, batch 128
    python bench/roofline.py --json roofline.json --loop-sps 9000
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--in-dim", type=int, default=8, help="observation size (LunarLander: 8)")
    p.add_argument("--n-actions", type=int, default=4)
    p.add_argument("--hidden", default="128,128")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--no-double", action="store_true", help="no double DQN (one forward fewer)")
    p.add_argument("--train-every", type=int, default=4)
    p.add_argument("--gradient-steps", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--min-time", type=float, default=1.0,
                   help="seconds each GEMM shape is timed for (default: 1)")
    p.add_argument("--loop-sps", type=float, default=None,
                   help="the training loop's measured SPS (bench/throughput.py), for the fraction")
    p.add_argument("--json", default=None, metavar="FILE")
    return p.parse_args(argv)


def step_gemms(in_dim: int, hidden: list[int], n_actions: int, b: int,
               double: bool) -> list[tuple[str, int, int, int]]:
    """(name, m, k, n) of every GEMM one learner step makes: C[m, n] = A[m, k] @ B[k, n]."""
    sizes = [in_dim, *hidden, n_actions]
    rows = 2 * b if double else b
    gemms = []
    for i in range(len(sizes) - 1):
        gemms.append((f"online forward {i}", rows, sizes[i], sizes[i + 1]))
    for i in range(len(sizes) - 1):
        gemms.append((f"target forward {i}", b, sizes[i], sizes[i + 1]))
    for i in range(len(sizes) - 2, -1, -1):
        gemms.append((f"weight grad {i}", sizes[i + 1], b, sizes[i]))
        if i > 0:
            gemms.append((f"input grad {i}", b, sizes[i + 1], sizes[i]))
    return gemms


def time_mm(m: int, k: int, n: int, dtype: torch.dtype, min_time: float) -> float:
    """Seconds of one torch.mm of these sizes into a preallocated output (median of blocks)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(dtype)
    b = torch.randn(k, n, generator=gen).to(dtype)
    out = torch.empty(m, n, dtype=dtype)
    for _ in range(20):
        torch.mm(a, b, out=out)
    reps = 50
    blocks = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_time or len(blocks) < 5:
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        blocks.append((time.perf_counter() - t) / reps)
    return float(np.median(blocks))


def fused_step_seconds(args: argparse.Namespace, native: bool = True) -> float:
    """The whole fused CPU learner step (gather to target update) at these sizes, per step:
    the native one (csrc/), or with `native` False the Numba one."""
    from fastdqn.learners.flat import Learner
    from fastdqn.nets.mlp import MLP
    from fastdqn.replay.rows import ReplayBuffer

    hidden = tuple(int(h) for h in args.hidden.split(","))
    net = MLP(args.in_dim, args.n_actions, hidden)
    learner = Learner(net, init=net.init(torch.Generator().manual_seed(0)), lr=6.3e-4,
                      gamma=0.99, tau=0.005, target_update_interval=1,
                      double_dqn=not args.no_double, cuda_graphs=False, native=native)
    buf = ReplayBuffer(10_000, (args.in_dim,), torch.float32, "cpu")
    g = torch.Generator().manual_seed(1)
    n = 10_000
    buf.add(torch.randn(n, args.in_dim, generator=g), torch.randint(0, args.n_actions, (n,)),
            torch.randn(n, generator=g), torch.randn(n, args.in_dim, generator=g),
            torch.zeros(n), torch.full((n,), 0.99))
    rng = np.random.default_rng(0)
    for _ in range(5):
        learner.learn_block(buf, rng.integers(0, n, (4, args.batch_size)))
    blocks, start = [], time.perf_counter()
    while time.perf_counter() - start < 2 * args.min_time or len(blocks) < 5:
        idx = rng.integers(0, n, (50, args.batch_size))
        t = time.perf_counter()
        learner.learn_block(buf, idx)
        blocks.append((time.perf_counter() - t) / 50)
    if native and learner.native_off:
        sys.exit(f"roofline.py: the native step did not run ({learner.native_off})")
    return float(np.median(blocks))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    hidden = [int(h) for h in args.hidden.split(",")]
    gemms = step_gemms(args.in_dim, hidden, args.n_actions, args.batch_size, not args.no_double)
    per_step = args.train_every / args.gradient_steps
    result: dict = {"gemms": [], "machine": f"{platform.processor() or platform.machine()}",
                    "threads": args.threads, "transitions_per_learner_step": per_step}
    totals = {}
    for dtype, name in [(torch.float32, "fp32"), (torch.bfloat16, "bf16")]:
        seconds = 0.0
        for label, m, k, n in gemms:
            t = time_mm(m, k, n, dtype, args.min_time / 4)
            seconds += t
            result["gemms"].append({"gemm": label, "m": m, "k": k, "n": n, "dtype": name,
                                    "us": t * 1e6, "gflops": 2 * m * k * n / t / 1e9})
        totals[name] = seconds
    flops = sum(2 * m * k * n for _, m, k, n in gemms)
    big = time_mm(1024, 1024, 1024, torch.float32, args.min_time)
    fused = fused_step_seconds(args)
    numba = fused_step_seconds(args, native=False)
    result.update({
        "flops_per_step": flops, "gemm_calls_per_step": len(gemms),
        "peak_fp32_gflops_1024": 2 * 1024**3 / big / 1e9,
        "gemm_us_per_step": {k: v * 1e6 for k, v in totals.items()},
        "gemm_gflops_per_step": {k: flops / v / 1e9 for k, v in totals.items()},
        "sps_ceiling_gemm": {k: per_step / v for k, v in totals.items()},
        "fused_step_us": fused * 1e6, "sps_ceiling_fused_step": per_step / fused,
        "gemm_share_of_fused_step": totals["fp32"] / fused,
        "numba_step_us": numba * 1e6, "sps_ceiling_numba_step": per_step / numba,
    })
    peak_s = flops / (2 * 1024**3 / big)  # the step's FLOPs at the CPU's 1024^3 rate
    result.update({"peak_rate_us_per_step": peak_s * 1e6, "sps_ceiling_peak": per_step / peak_s,
                   "native_step_fraction_of_peak": peak_s / fused})
    if args.loop_sps:
        result["loop_sps"] = args.loop_sps
        result["loop_fraction_of_gemm_ceiling"] = args.loop_sps / result["sps_ceiling_gemm"]["fp32"]
    print(f"one learner step: {len(gemms)} GEMMs, {flops / 1e6:.2f} MFLOP "
          f"(batch {args.batch_size}, MLP {args.in_dim}-{'-'.join(map(str, hidden))}-"
          f"{args.n_actions}, {'double' if not args.no_double else 'single'} DQN)")
    print(f"this CPU, {args.threads} thread: fp32 GEMM peak {result['peak_fp32_gflops_1024']:.1f} "
          f"GFLOP/s at 1024^3; at the step's shapes fp32 {result['gemm_gflops_per_step']['fp32']:.1f}"
          f" GFLOP/s ({totals['fp32'] * 1e6:.0f} us a step), bf16 "
          f"{result['gemm_gflops_per_step']['bf16']:.1f} GFLOP/s ({totals['bf16'] * 1e6:.0f} us)")
    print(f"SPS ceiling from the GEMMs alone ({per_step:g} transitions a step): fp32 "
          f"{result['sps_ceiling_gemm']['fp32']:,.0f}, bf16 {result['sps_ceiling_gemm']['bf16']:,.0f}")
    print(f"the native step: {fused * 1e6:.0f} us ({totals['fp32'] / fused:.0%} of it the GEMM "
          f"time above): ceiling {result['sps_ceiling_fused_step']:,.0f} SPS; the Numba step "
          f"{numba * 1e6:.0f} us: ceiling {result['sps_ceiling_numba_step']:,.0f} SPS")
    print(f"the step's FLOPs at the 1024^3 rate: {peak_s * 1e6:.0f} us, a ceiling of "
          f"{result['sps_ceiling_peak']:,.0f} SPS; the native step runs at "
          f"{result['native_step_fraction_of_peak']:.0%} of that rate")
    if args.loop_sps:
        print(f"the loop's {args.loop_sps:,.0f} SPS is "
              f"{result['loop_fraction_of_gemm_ceiling']:.0%} of the fp32 GEMM ceiling")
    for g in result["gemms"]:
        print(f"  {g['dtype']} {g['gemm']:<16} [{g['m']}x{g['k']}]@[{g['k']}x{g['n']}] "
              f"{g['us']:7.1f} us {g['gflops']:6.1f} GFLOP/s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
