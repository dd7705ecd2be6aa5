"""Empirical NTK: time and peak memory of the two implementations vs a naive loop.

The reference is measured in the same run: one ``torch.autograd.grad`` call per
(input, output) pair, then J J^T. Each measurement runs in its own process so that
the peak resident memory (ru_maxrss, above the process's size after a warm-up call
on two inputs) belongs to that implementation alone.

Run:  PYTHONPATH=src python benchmarks/empirical_ntk.py [--n 64]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch


def build(model: str):
    torch.manual_seed(0)
    if model == "mlp":
        layers, width, d = [], 512, 64
        sizes = [d, width, width, width]
        for i, o in zip(sizes, sizes[1:]):
            layers += [torch.nn.Linear(i, o), torch.nn.ReLU()]
        net = torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))
        return net.double(), (d,)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 10),
    )
    return net.double(), (3, 16, 16)


def naive(net, x):
    params = [p for p in net.parameters()]
    rows = []
    for i in range(x.shape[0]):
        f = net(x[i : i + 1]).reshape(-1)
        for o in range(f.shape[0]):
            g = torch.autograd.grad(f[o], params, retain_graph=True)
            rows.append(torch.cat([t.reshape(-1) for t in g]))
    j = torch.stack(rows).reshape(x.shape[0], -1, rows[0].shape[0])
    return torch.einsum("iop,jop->ij", j, j) / j.shape[1]


def measure(model: str, mode: str, n: int) -> dict:
    from tensorprograms.empirical import empirical_ntk

    net, shape = build(model)
    x = torch.randn(n, *shape, dtype=torch.float64, generator=torch.Generator())

    def run(inputs):
        if mode == "naive":
            return naive(net, inputs)
        return empirical_ntk(net, inputs, implementation=mode)

    run(x[:2])  # one-time set-up (kernels, vmap rules) is not timed
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    k = run(x)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    return {"seconds": seconds, "peak_mib": peak / 1024, "trace": float(k.trace())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--run", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(measure(args.run[0], args.run[1], args.n)))
        return
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    for model in ("mlp", "conv"):
        print(f"{model}, N = {args.n}, 10 outputs, float64")
        print(f"  {'mode':<9}{'seconds':>9}{'peak MiB':>10}{'x faster':>10}")
        ref = None
        for mode in ("naive", "jacobian", "ntvp"):
            out = subprocess.run(
                [sys.executable, __file__, "--n", str(args.n), "--run", model, mode],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            ref = ref or r
            if abs(r["trace"] - ref["trace"]) > 1e-8 * abs(ref["trace"]):
                raise RuntimeError(f"{mode} disagrees with the naive loop")
            speed = ref["seconds"] / r["seconds"]
            print(
                f"  {mode:<9}{r['seconds']:>9.2f}{r['peak_mib']:>10.0f}{speed:>10.1f}"
            )


if __name__ == "__main__":
    main()
