"""Training-step time of a muP model vs. the same plain PyTorch model (and ``mup``).

The three variants share architecture, data and optimizer (Adam): plain PyTorch
(``nn.Linear`` readout, ``torch.optim.Adam``), ``tensorprograms.mup``
(``MuReadout`` + ``MuAdam``) and, when installed, Microsoft's ``mup``. Repeats are
interleaved (in alternating order) so that machine noise hits all variants alike;
the ratio uses the fastest repeat of each variant (noise only adds time), the median
is printed beside it. Target: ratio <= 1.02.

    python benchmarks/mup_overhead.py [--width 1024] [--device cuda] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import tensorprograms.mup as tpm


def mlp(width, readout, depth=4, d_in=128, d_out=10):
    layers = [nn.Linear(d_in, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(readout(width, d_out))
    return nn.Sequential(*layers)


def variants(width, device):
    torch.manual_seed(0)
    out = {}
    plain = mlp(width, nn.Linear).to(device)
    out["plain"] = (plain, torch.optim.Adam(plain.parameters(), lr=1e-3))
    ours = mlp(width, tpm.MuReadout)
    tpm.set_base_shapes(ours, mlp(width // 4, tpm.MuReadout))
    ours.to(device)
    out["tensorprograms.mup"] = (ours, tpm.MuAdam(ours.parameters(), lr=1e-3))
    try:
        import mup
    except ImportError:
        return out
    ref = mlp(width, mup.MuReadout)
    mup.set_base_shapes(ref, mlp(width // 4, mup.MuReadout))
    ref.to(device)
    out["mup"] = (ref, mup.MuAdam(ref.parameters(), lr=1e-3))
    return out


def step_fn(model, opt, compile_model):
    fwd = torch.compile(model) if compile_model else model

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(fwd(x), y)
        loss.backward()
        opt.step()

    return step


def time_steps(step, x, y, steps, device):
    """Seconds per step: wall time on CUDA, this process's CPU time on CPU (less
    sensitive to other processes sharing the cores)."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = clock()
    for _ in range(steps):
        step(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (clock() - t) / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile models")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 128, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    steps = {
        k: step_fn(m, o, args.compile)
        for k, (m, o) in variants(args.width, device).items()
    }
    for step in steps.values():  # warm-up (and compilation)
        time_steps(step, x, y, 3, device)
    times = {k: [] for k in steps}
    order = list(steps)
    for r in range(args.repeats):
        for k in order if r % 2 == 0 else order[::-1]:
            times[k].append(time_steps(steps[k], x, y, args.steps, device))

    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"width {args.width}, batch {args.batch}, device {device}, "
        f"compile {args.compile}: step time over {args.repeats} x {args.steps} steps"
    )
    for k in steps:
        rb, rm = best[k] / best["plain"], med[k] / med["plain"]
        print(
            f"  {k:<20} best {1e3 * best[k]:8.3f} ms (ratio {rb:.3f})"
            f"   median {1e3 * med[k]:8.3f} ms (ratio {rm:.3f})"
        )
    ratio = best["tensorprograms.mup"] / best["plain"]
    verdict = "meets" if ratio <= 1.02 else "misses"
    print(f"overhead tensorprograms.mup / plain = {ratio:.3f} ({verdict} target 1.02)")
    if "mup" in best:
        vs_mup = best["tensorprograms.mup"] / best["mup"]
        print(f"tensorprograms.mup / mup = {vs_mup:.3f}")
    return ratio


if __name__ == "__main__":
    main()
