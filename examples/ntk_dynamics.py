"""Finite relu networks trained by gradient descent vs the infinite-width prediction.

Relu MLPs in the NTK parametrization (``tensorprograms.nn``; THEORY.md section 3),
sampled at growing widths, are trained with full-batch gradient descent on
L = (1/2) sum (f(x_i) - y_i)^2 for a 1-D regression on the unit circle.
`tensorprograms.predict` gives, from the infinite-width NNGP and NTK of the same
description,

- for each network, the infinite-width trajectory started from that network's own
  initial outputs (``gradient_descent_mse``): the finite network should follow it
  ever more closely as the width n grows, with deviations ~ n^(-1/2);
- the mean and covariance over initialisations (``gradient_descent_mse_ensemble``).

Run:  PYTHONPATH=src python examples/ntk_dynamics.py --out figures
Saves ntk_dynamics.png under --out and prints the deviation per width.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from tensorprograms import nn
from tensorprograms.predict import gradient_descent_mse, gradient_descent_mse_ensemble

F64 = torch.float64


def circle(angles):
    return torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="figures", help="folder for the PNG")
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256, 1024, 2048])
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--w-std", type=float, default=2**0.5)
    parser.add_argument("--b-std", type=float, default=0.1)
    args = parser.parse_args(argv)

    train_angles = torch.linspace(0, 2 * math.pi, 9, dtype=F64)[:-1] + 0.3
    test_angles = torch.linspace(0, 2 * math.pi, 121, dtype=F64)
    x, xt = circle(train_angles), circle(test_angles)
    y = (torch.sin(2 * train_angles) + 0.5 * torch.cos(train_angles))[:, None]

    def dense(n):
        return nn.Dense(n, W_std=args.w_std, b_std=args.b_std)  # NTK parametrization

    model = nn.serial(*[dense(512), nn.Relu()] * args.depth, dense(1))
    kernel_fn = model.kernel  # (x1, x2=None) -> Kernel(nngp, ntk), infinite width
    k, kx = kernel_fn(x, None), kernel_fn(xt, x)
    eta = 1.0 / float(torch.linalg.eigvalsh(k.ntk).max())
    times = list(range(0, args.steps + 1, max(1, args.steps // 25)))
    own = gradient_descent_mse(k.ntk, y, eta, discrete=True)
    ensemble = gradient_descent_mse_ensemble(kernel_fn, x, y, eta, discrete=True)
    final = ensemble(args.steps, xt, "ntk", compute_cov=True)

    probe = 30  # test angle whose trajectory is drawn
    results = {}
    print(f"eta = {eta:.4g} (1 / lambda_max of the NTK), {args.steps} steps")
    print(f"{'width':>6} {'rms deviation':>14} {'seconds':>8}")
    for width in args.widths:
        start, sq, count = time.time(), 0.0, 0
        for seed in range(args.seeds):
            net = model.sample(width, seed, input_shape=(2,))
            with torch.no_grad():
                f0, ft0 = net(x), net(xt)
            want = own(times, f0, ft0, kx.ntk)[1]  # (T, M, 1)
            got = []
            opt = torch.optim.SGD(net.parameters(), lr=eta)
            for step in range(args.steps + 1):
                if step in times:
                    with torch.no_grad():
                        got.append(net(xt))
                opt.zero_grad()
                (0.5 * ((net(x) - y) ** 2).sum()).backward()
                opt.step()
            got = torch.stack(got)
            sq += float(((got - want) ** 2).mean())
            count += 1
            if seed == 0:
                results[width] = SimpleNamespace(got=got, want=want)
        results[width].rms = math.sqrt(sq / count)
        print(f"{width:>6} {results[width].rms:>14.4g} {time.time() - start:>8.1f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = plt.cm.viridis(torch.linspace(0, 0.9, len(args.widths)).tolist())
    ax = axes[0]
    mean, sd = final.mean[:, 0], final.covariance.diagonal().clamp_min(0).sqrt()
    ax.fill_between(
        test_angles,
        mean - 2 * sd,
        mean + 2 * sd,
        color="0.85",
        label="infinite width: mean +- 2 sd",
    )
    ax.plot(test_angles, mean, color="k", lw=2, label="infinite width: mean")
    for c, width in zip(colors, args.widths):
        ax.plot(
            test_angles,
            results[width].got[-1, :, 0],
            color=c,
            lw=1,
            label=f"n = {width}",
        )
    ax.plot(train_angles, y[:, 0], "ro", label="train")
    ax.set(
        xlabel="angle of x on the circle",
        ylabel=f"f after {args.steps} steps",
        title="trained networks vs the infinite ensemble",
    )
    ax.legend(fontsize=7)

    ax = axes[1]
    for c, width in zip(colors, args.widths):
        r = results[width]
        ax.plot(times, r.got[:, probe, 0], color=c, label=f"n = {width}")
        ax.plot(times, r.want[:, probe, 0], color=c, ls="--")
    ax.set(
        xlabel="step t",
        ylabel=f"f_t at angle {float(test_angles[probe]):.2f}",
        title="finite (solid) vs infinite width from the same f_0 (dashed)",
    )
    ax.legend(fontsize=7)

    ax = axes[2]
    widths = torch.tensor(args.widths, dtype=F64)
    rms = torch.tensor([results[w].rms for w in args.widths])
    ax.loglog(widths, rms, "o-", label="rms |f_t - f_t^inf| (test, all t)")
    ax.loglog(widths, rms[0] * (widths / widths[0]) ** -0.5, "k--", label="n^-1/2")
    ax.set(xlabel="width n", ylabel="deviation", title="convergence to the limit")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "ntk_dynamics.png"
    fig.savefig(path, dpi=120)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
