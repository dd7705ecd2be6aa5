"""Time of the limit evaluator vs finite-width Monte Carlo reaching the same accuracy.

For each example program of ``tensorprograms.tour`` the Master Theorem gives the
limit ``L`` (with its own error bound). Finite-width Monte Carlo estimates ``L`` by
averaging ``S`` seeds at a width ``n``: its standard error is ``sd(n)/sqrt(S)``
and its bias is ``O(1/n)``. To reach a relative accuracy ``target`` it needs
``S(n) = (sd(n) / (target * |L|))^2`` seeds at a width whose bias is below the
target. We measure ``sd(n)``, the mean and the time per seed at a few widths in
this run (as many seeds as fit in ``--budget`` seconds per width, at least
``--seeds``), fit the bias ``c / n`` to the measured means (weighted least
squares) and take its upper bound ``|c| + 2 se(c)``: a width is usable when that
bound over ``n`` is below the target. We report the cheapest usable width's total
time (time per seed times the seeds needed) against the limit evaluator's time.
When no measured width is usable, the smallest usable one is extrapolated
(marked ``*``: time per seed ~ n^2 for the matrix products, sd ~ n^(-1/2)).

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


def _measure(ex, n, min_seeds, budget):
    """Values at width n over seeds (at least min_seeds, more within budget s)."""
    t0 = time.perf_counter()
    vals = [run(ex.program, width=n, seeds=range(min_seeds))[ex.scalar]]
    count = min_seeds
    per_seed = (time.perf_counter() - t0) / min_seeds
    extra = min(int(budget / max(per_seed, 1e-9)) - min_seeds, 4096)
    if extra > 0:
        t0 = time.perf_counter()
        seeds = range(count, count + extra)
        vals.append(run(ex.program, width=n, seeds=seeds)[ex.scalar])
        per_seed = (time.perf_counter() - t0) / extra
        count += extra
    return torch.cat(vals).double().reshape(count, -1), per_seed


def _bias_bound(ns, means, ses):
    """Upper bound |c| + 2 se(c) of the bias c / n fitted to the means (per lane)."""
    x = torch.tensor([1.0 / n for n in ns], dtype=torch.float64)[:, None]
    w = 1.0 / torch.stack(ses).clamp(min=1e-300) ** 2  # (W, lanes)
    y = torch.stack(means)
    c = (w * x * y).sum(0) / (w * x * x).sum(0)
    se_c = 1.0 / (w * x * x).sum(0).sqrt()
    return float((c.abs() + 2 * se_c).max())


def _cheapest(stats, c, tol):
    """(width, seeds needed, seconds) at the cheapest width whose bias fits."""
    best = None
    for n, sd, per_seed in stats:
        if c / n > tol:
            continue
        needed = math.ceil((sd / tol) ** 2)
        if best is None or needed * per_seed < best[2]:
            best = (f"{n}", needed, needed * per_seed)
    if best is None:  # extrapolate from the widest measured width
        n0, sd0, t0 = stats[-1]
        n = math.ceil(c / tol)
        needed = math.ceil((sd0 * math.sqrt(n0 / n) / tol) ** 2)
        best = (f"{n}*", needed, needed * t0 * (n / n0) ** 2)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=float, default=1e-3, help="relative accuracy")
    ap.add_argument("--seeds", type=int, default=8, help="fewest seeds per width")
    ap.add_argument("--budget", type=float, default=2.0, help="seconds per width")
    ap.add_argument("--widths", type=int, nargs="+", default=[256, 1024, 4096])
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"target relative accuracy {args.target:g}; widths {args.widths}")
    header = (
        f"{'program':<18}{'limit':>10}{'method':>13}{'t_limit s':>11}"
        f"{'bias c':>9}{'best n':>9}{'seeds':>10}{'t_finite s':>12}{'ratio':>10}"
    )
    print(header)
    print("-" * len(header))
    for name, make in tour.EXAMPLES.items():
        ex = make()
        t_lim, est = _time_limit(ex)
        L = est.value.double().reshape(-1)
        scale = float(L.abs().max())
        stats, means, ses = [], [], []
        for n in args.widths:
            vals, per_seed = _measure(ex, n, args.seeds, args.budget)
            sd = vals.std(0)
            means.append(vals.mean(0) - L)
            ses.append(sd / math.sqrt(vals.shape[0]))
            stats.append((n, float(sd.max()), per_seed))
        c = _bias_bound(args.widths, means, ses)
        n, needed, cost = _cheapest(stats, c, args.target * scale)
        print(
            f"{name:<18}{scale:>10.5g}{est.method:>13}{t_lim:>11.4f}{c:>9.3g}"
            f"{n:>9}{needed:>10d}{cost:>12.2f}{cost / t_lim:>10.0f}"
        )
    print(
        "\nbias c: upper bound on n |finite mean - limit| (c / n fitted to the "
        "means); t_finite = time per seed x seeds needed for the target (one "
        "standard error) at the cheapest width whose bias bound is below the "
        "target (* extrapolated); ratio = t_finite / t_limit."
    )


if __name__ == "__main__":
    main()
