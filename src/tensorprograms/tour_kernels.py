"""The kernel part of the tour: NNGP/NTK of an MLP and finite widths approaching them.

Inputs on the unit circle, ``x(theta) = (cos theta, sin theta)``, make the
kernels functions of one angle: the figure shows ``K(x(0), x(theta))`` for the
NNGP and NTK of a relu MLP (NTK parametrization), the empirical NTK of sampled
networks of growing width around it, and the mean error against width, which
falls like ``n^(-1/2)``.

Example:
    >>> from tensorprograms import tour_kernels
    >>> res = tour_kernels.kernel_convergence(widths=(32, 128), seeds=2, points=5)
    >>> res["errors"].shape
    torch.Size([2])
"""

from __future__ import annotations

import math
import os

import torch

from . import nn
from .empirical import empirical_ntk

__all__ = ["circle", "default_model", "kernel_convergence", "kernel_figure"]


def circle(points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Angles in ``[0, pi]`` and the points ``(points, 2)`` on the unit circle."""
    theta = torch.linspace(0, math.pi, points, dtype=torch.float64)
    return theta, torch.stack([theta.cos(), theta.sin()], -1) * math.sqrt(2)


def default_model(depth: int = 3):
    """A relu MLP, ``W_std = sqrt(2)``, ``b_std = 0.1``, NTK parametrization."""
    layers = []
    for _ in range(depth):
        layers += [nn.Dense(512, W_std=math.sqrt(2), b_std=0.1), nn.Relu()]
    return nn.serial(*layers, nn.Dense(1, W_std=math.sqrt(2), b_std=0.1))


def kernel_convergence(
    widths=(64, 128, 256, 512, 1024, 2048), seeds=8, points=25, depth=3
):
    """Infinite-width kernels on the circle and empirical NTKs at finite widths.

    Returns a dict with ``theta``, ``nngp`` and ``ntk`` (``(points,)``: row 0 of
    the kernels), ``empirical`` (``(W, seeds, points)``), ``errors`` (``(W,)``,
    mean absolute error of the empirical NTK) and the ``widths``.
    """
    theta, x = circle(points)
    model = default_model(depth)
    k = model.kernel(x)
    emp = torch.stack(
        [
            torch.stack(
                [
                    empirical_ntk(model.sample(n, seed=s, input_shape=(2,)), x)[0]
                    for s in range(seeds)
                ]
            )
            for n in widths
        ]
    )
    errors = (emp - k.ntk[0]).abs().mean(dim=(1, 2))
    return {
        "theta": theta,
        "nngp": k.nngp[0],
        "ntk": k.ntk[0],
        "empirical": emp,
        "errors": errors,
        "widths": torch.tensor([float(n) for n in widths], dtype=torch.float64),
    }


def kernel_figure(out: str, **options) -> tuple[str, dict]:
    """Save ``kernels.png`` (kernels and empirical NTKs; error against width)."""
    from .plots import require_matplotlib

    plt = require_matplotlib()
    res = kernel_convergence(**options)
    os.makedirs(out, exist_ok=True)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    th = res["theta"].numpy()
    for i, n in enumerate(res["widths"]):
        mean = res["empirical"][i].mean(0).numpy()
        a.plot(th, mean, lw=1, alpha=0.8, label=f"empirical NTK, n={int(n)}")
    a.plot(th, res["ntk"].numpy(), "k-", lw=2, label="NTK (infinite width)")
    a.plot(th, res["nngp"].numpy(), "k--", lw=2, label="NNGP (infinite width)")
    a.set_xlabel("angle between inputs")
    a.set_ylabel("K(x(0), x(angle))")
    a.set_title("relu MLP kernels on the circle")
    a.legend(fontsize=7)
    w, e = res["widths"].numpy(), res["errors"].numpy()
    b.loglog(w, e, "o-", label="mean |empirical - limit|")
    b.loglog(w, e[0] * (w / w[0]) ** -0.5, "k--", lw=1, label="slope -1/2")
    b.set_xlabel("width n")
    b.set_title("empirical NTK approaches the limit")
    b.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out, "kernels.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path, res
