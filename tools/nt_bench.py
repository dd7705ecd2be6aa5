"""Time neural-tangents 0.6.5 on the kernel benchmarks of issue 3.

Run with the separate environment of tools/ntenv-requirements.txt:

    /work/ntenv/bin/python tools/nt_bench.py --configs "mlp_n1000_*,conv_flatten_*"
    /work/ntenv/bin/python tools/nt_bench.py --quick        # every config, small N

Each configuration runs in its own subprocess (so that float32 / float64, which
jax fixes per process, and the peak resident memory are per configuration) and
computes the infinite-width NNGP and NTK K(x, x) of N seeded Gaussian inputs with
``jax.jit(kernel_fn)``. Printed on stdout, one JSON list with per configuration:
``seconds_first`` (first call: trace, compile and run), ``seconds`` (a second call
of the compiled function, the steady-state cost; null when the first call took
longer than --max-repeat-s), ``seconds_per_entry`` (seconds / N^2), peak resident
memory ``peak_rss_mib`` (getrusage ru_maxrss of the subprocess) and
``baseline_rss_mib`` (after imports and inputs, before the kernel), so that
``peak_rss_mib - baseline_rss_mib`` is what the kernel computation added.

Configurations (issue 3's benchmark):
- ``mlp_n{1000,2000,4000}_{f32,f64}``: 10 hidden layers Dense(W_std=sqrt(2),
  b_std=0.05) + Relu, then a Dense readout, on N x 784 inputs;
- ``conv_flatten_n64_{f32,f64}``: Conv(3x3, SAME) + Relu twice on 32x32x3 inputs,
  Flatten, Dense readout (same W_std, b_std);
- ``conv_gap_n{16,64}_{f32,f64}``: the same with GlobalAvgPool instead of Flatten.
  The full spatial covariance is (N, N, 32, 32, 32, 32): 2 GiB per float32 copy at
  N = 16. With ``--batch-size B`` (default 4 for these) the kernel is computed in
  B x B blocks by ``neural_tangents.batch`` to bound memory.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import resource
import subprocess
import sys
import time

W_STD, B_STD = math.sqrt(2.0), 0.05


def _configs():
    configs = {}
    for n in (1000, 2000, 4000):
        for dt in ("f32", "f64"):
            configs[f"mlp_n{n}_{dt}"] = {"net": "mlp", "n": n, "dtype": dt, "batch": 0}
    for dt in ("f32", "f64"):
        configs[f"conv_flatten_n64_{dt}"] = {
            "net": "conv_flatten",
            "n": 64,
            "dtype": dt,
            "batch": 0,
        }
        for n in (16, 64):
            configs[f"conv_gap_n{n}_{dt}"] = {
                "net": "conv_gap",
                "n": n,
                "dtype": dt,
                "batch": 4,
            }
    return configs


CONFIGS = _configs()


def _rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _child(name, n, batch_size, max_repeat_s):
    """Run one configuration in this process and return its JSON record."""
    cfg = CONFIGS[name]
    import jax

    jax.config.update("jax_enable_x64", cfg["dtype"] == "f64")
    import jax.numpy as jnp
    import neural_tangents as nt
    import numpy as np
    from neural_tangents import stax

    dtype = np.float64 if cfg["dtype"] == "f64" else np.float32
    rng = np.random.default_rng(0)
    if cfg["net"] == "mlp":
        layers = []
        for _ in range(10):
            layers += [stax.Dense(512, W_std=W_STD, b_std=B_STD), stax.Relu()]
        x = rng.standard_normal((n, 784))
    else:
        layers = []
        for _ in range(2):
            conv = stax.Conv(64, (3, 3), padding="SAME", W_std=W_STD, b_std=B_STD)
            layers += [conv, stax.Relu()]
        readout = (
            stax.Flatten() if cfg["net"] == "conv_flatten" else stax.GlobalAvgPool()
        )
        layers.append(readout)
        x = rng.standard_normal((n, 32, 32, 3))
    layers.append(stax.Dense(1, W_std=W_STD, b_std=B_STD))
    _, _, kernel_fn = stax.serial(*layers)
    x = jnp.asarray(x.astype(dtype))

    if batch_size:
        fn = nt.batch(kernel_fn, batch_size=batch_size, store_on_device=False)
    else:
        fn = jax.jit(kernel_fn, static_argnames="get")

    def run():
        k = fn(x, None, ("nngp", "ntk"))
        k.nngp.block_until_ready()
        k.ntk.block_until_ready()
        return k

    baseline = _rss_mib()
    t0 = time.perf_counter()
    k = run()
    first = time.perf_counter() - t0
    second = None
    if first <= max_repeat_s:
        t0 = time.perf_counter()
        k = run()
        second = time.perf_counter() - t0
    nngp, ntk = np.asarray(k.nngp), np.asarray(k.ntk)
    steady = second if second is not None else first
    return {
        "config": name,
        "N": n,
        "dtype": str(nngp.dtype),
        "batch_size": batch_size,
        "seconds_first": round(first, 3),
        "seconds": None if second is None else round(second, 3),
        "seconds_per_entry": steady / n**2,
        "peak_rss_mib": round(_rss_mib(), 1),
        "baseline_rss_mib": round(baseline, 1),
        "finite": bool(np.all(np.isfinite(nngp)) and np.all(np.isfinite(ntk))),
        "ntk_trace_over_n": float(np.trace(ntk) / n),
        "neural_tangents": nt.__version__ if hasattr(nt, "__version__") else None,
        "jax": jax.__version__,
        "cpu_count": os.cpu_count(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs",
        default="*",
        help="comma-separated names or shell patterns (default: all); one of "
        + ", ".join(CONFIGS),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: N / 10 for MLPs, N = 16 for conv_flatten, 4 for conv_gap",
    )
    parser.add_argument("--n", type=int, help="override N for every config")
    parser.add_argument(
        "--batch-size",
        type=int,
        help="neural_tangents.batch block size (0: one jitted call); default: "
        "4 for conv_gap, 0 otherwise",
    )
    parser.add_argument(
        "--timeout", type=float, default=600, help="seconds per config (kill after)"
    )
    parser.add_argument(
        "--max-repeat-s",
        type=float,
        default=60,
        help="time a second (compiled) call only if the first took at most this",
    )
    parser.add_argument("--list", action="store_true", help="list configs and exit")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.list:
        print("\n".join(CONFIGS))
        return
    if args._child:
        rec = _child(args._child, args.n, args.batch_size, args.max_repeat_s)
        print("RESULT " + json.dumps(rec))
        return

    patterns = [p.strip() for p in args.configs.split(",") if p.strip()]
    names = [c for c in CONFIGS if any(fnmatch.fnmatch(c, p) for p in patterns)]
    if not names:
        parser.error(f"no config matches {args.configs!r}; see --list")
    results = []
    for name in names:
        cfg = CONFIGS[name]
        n = args.n or cfg["n"]
        if args.quick and not args.n:
            n = {"mlp": n // 10, "conv_flatten": 16, "conv_gap": 4}[cfg["net"]]
        batch = cfg["batch"] if args.batch_size is None else args.batch_size
        if batch and n % batch:
            batch = math.gcd(n, batch)
        cmd = [sys.executable, os.path.abspath(__file__), "--_child", name]
        cmd += ["--n", str(n), "--batch-size", str(batch)]
        cmd += ["--max-repeat-s", str(args.max_repeat_s)]
        print(f"[nt_bench] {name}: N={n} batch={batch} ...", file=sys.stderr)
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=args.timeout
            )
        except subprocess.TimeoutExpired:
            rec = {"config": name, "N": n, "error": f"timeout after {args.timeout} s"}
        else:
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode == 0 and lines:
                rec = json.loads(lines[-1][len("RESULT ") :])
            else:
                tail = (proc.stderr or "").strip().splitlines()[-3:]
                rec = {
                    "config": name,
                    "N": n,
                    "error": f"exit {proc.returncode}: " + " / ".join(tail),
                }
        print(f"[nt_bench] {json.dumps(rec)}", file=sys.stderr)
        results.append(rec)
    json.dump(results, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
