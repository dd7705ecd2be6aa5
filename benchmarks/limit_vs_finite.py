"""Time of the limit evaluator vs finite-width Monte Carlo reaching the same accuracy.

For each example program of ``tensorprograms.tour`` the Master Theorem gives the
limit ``L`` (with its own error bound). Finite-width Monte Carlo estimates ``L`` by
averaging ``S`` seeds at a width ``n``: its standard error is ``sd(n)/sqrt(S)``
and its bias is ``O(1/n)``. To reach a relative accuracy ``target`` it needs
``S(n) = (sd(n) / (target * |L|))^2`` seeds at a width whose bias is below the
target. We measure ``sd(n)``, the bias and the time per seed at a few widths in
this run, and report the cheapest width's total time (measured time per seed
times the seeds needed) against the limit evaluator's time.

Usage: ``python benchmarks/limit_vs_finite.py [--target 1e-3] [--seeds 8]``
"""

from __future__ import annotations

import argparse
import math
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from tensorprograms import limit, run, tour  # noqa: E402


def _time_limit(ex, repeats=3):
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        est = limit(ex.program).estimate(ex.scalar)
        best = min(best, time.perf_counter() - t0)
    return best, est


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=float, default=1e-3, help="relative accuracy")
    ap.add_argument("--seeds", type=int, default=8, help="seeds measured per width")
    ap.add_argument("--widths", type=int, nargs="+", default=[256, 1024, 4096])
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"target relative accuracy {args.target:g}; widths {args.widths}")
    header = (
        f"{'program':<18}{'limit':>12}{'method':>13}{'t_limit s':>11}"
        f"{'best n':>8}{'seeds':>10}{'t_finite s':>12}{'ratio':>10}"
    )
    print(header)
    print("-" * len(header))
    for name, make in tour.EXAMPLES.items():
        ex = make()
        t_lim, est = _time_limit(ex)
        L = est.value.double()
        scale = float(L.abs().max())
        best = None
        for n in args.widths:
            t0 = time.perf_counter()
            vals = run(ex.program, width=n, seeds=range(args.seeds))[ex.scalar]
            per_seed = (time.perf_counter() - t0) / args.seeds
            vals = vals.double().reshape(args.seeds, -1)
            sd = float(vals.std(0).max())
            bias = float((vals.mean(0) - L).abs().max())
            bias_se = sd / math.sqrt(args.seeds)
            needed = math.ceil((sd / (args.target * scale)) ** 2)
            # A width is usable when its bias is not measurably above the target.
            if bias - 2 * bias_se > args.target * scale:
                continue
            cost = needed * per_seed
            if best is None or cost < best[2]:
                best = (n, needed, cost)
        if best is None:
            print(
                f"{name:<18}{scale:>12.5g}{est.method:>13}{t_lim:>11.4f}  bias-limited"
            )
            continue
        n, needed, cost = best
        print(
            f"{name:<18}{scale:>12.5g}{est.method:>13}{t_lim:>11.4f}"
            f"{n:>8d}{needed:>10d}{cost:>12.2f}{cost / t_lim:>10.0f}"
        )
    print(
        "\nt_finite = measured time per seed x seeds needed for the target (one "
        "standard error); ratio = t_finite / t_limit."
    )


if __name__ == "__main__":
    main()
