"""A tour of example programs: their limits beside finite-width runs.

Each example is a small program with one scalar of interest whose limit is known
from the papers; :func:`convergence` runs it at growing widths over several seeds
and fits the slope of ``log E|finite - limit|`` against ``log n`` (the Master
Theorem's fluctuations make it about ``-1/2``).

Example:
    >>> from tensorprograms import tour
    >>> ex = tour.EXAMPLES["semicircle"]()
    >>> ex.title
    'Semicircle law: (1/n) x^T A^4 x -> Catalan C_2 = 2'
    >>> round(float(ex.limit().value), 12)
    2.0
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from . import nonlinearities as nl
from .finite import run
from .gaussian import Estimate
from .limit import limit
from .program import Program, Scalar

__all__ = ["Example", "EXAMPLES", "Convergence", "convergence", "main"]


@dataclass(frozen=True)
class Example:
    """A program, the scalar to watch, and what the theory says about it."""

    name: str
    title: str
    program: Program
    scalar: Scalar

    def limit(self) -> Estimate:
        return limit(self.program).estimate(self.scalar)


def _semicircle() -> Example:
    p = Program()
    x = p.vector("x")
    W = p.matrix("W")
    y = x
    for _ in range(2):
        y = (W @ y + W.T @ y) * 2**-0.5
    s = p.moment(y * y, name="m4")
    title = "Semicircle law: (1/n) x^T A^4 x -> Catalan C_2 = 2"
    return Example("semicircle", title, p, s)


def _marchenko_pastur() -> Example:
    p = Program()
    x = p.vector("x")
    W = p.matrix("W", shape=(0.5, 1.0))
    y = W.T @ (W @ x)
    y = W.T @ (W @ y)
    s = p.moment(x * y, name="m2")
    title = "Marchenko-Pastur, ratio 1/2: (1/n) x^T (W^T W)^2 x -> 3/4"
    return Example("marchenko-pastur", title, p, s)


def _zdot() -> Example:
    p = Program()
    v = p.vector("v")
    W = p.matrix("W")
    z = W @ nl.tanh(W.T @ v)
    s = p.moment(z * v, name="s")
    title = "ZDot: (1/n) v^T W tanh(W^T v) -> E[tanh'(Z)] = 0.6057"
    return Example("zdot", title, p, s)


def _mlp_kernel() -> Example:
    p = Program()
    h1 = p.vector("h1", cov=[[1.0, 0.6], [0.6, 1.5]])
    W2 = p.matrix("W2", var=2.0)
    W3 = p.matrix("W3", var=2.0)
    h3 = W3 @ nl.relu(W2 @ nl.relu(h1))
    s = p.moment(nl.erf(h3) * nl.erf(h3), name="s")
    title = "3-layer relu MLP, then erf: limits per input from arc-cosine kernels"
    return Example("mlp-kernel", title, p, s)


def _backprop() -> Example:
    p = Program()
    h1, v = p.vector("h1"), p.vector("v")
    W = p.matrix("W", var=2.0)
    h2 = W @ nl.tanh(h1)
    dx1 = W.T @ (v * nl.tanh.derivative()(h2))
    s = p.moment(dx1 * dx1, name="s")
    title = "Backward pass (gradient independence): (1/n) |W^T (v * tanh'(h))|^2"
    return Example("backprop", title, p, s)


EXAMPLES: dict[str, Callable[[], Example]] = {
    "semicircle": _semicircle,
    "marchenko-pastur": _marchenko_pastur,
    "zdot": _zdot,
    "mlp-kernel": _mlp_kernel,
    "backprop": _backprop,
}


@dataclass(frozen=True)
class Convergence:
    """Mean absolute error of finite runs against the limit, per width.

    Attributes:
        widths: ``(W,)`` widths.
        errors: ``(W,)`` mean over seeds (and lanes) of ``|finite - limit|``.
        sem: ``(W,)`` standard error of those means.
        slope: fitted slope of ``log errors`` against ``log widths``.
        limit: the limit value(s).
        seconds: time of the finite runs per width.
    """

    widths: torch.Tensor
    errors: torch.Tensor
    sem: torch.Tensor
    slope: float
    limit: torch.Tensor
    seconds: torch.Tensor


def convergence(
    program: Program,
    scalar: Scalar,
    widths: Sequence[int] = (128, 256, 512, 1024, 2048, 4096),
    seeds: int = 16,
    *,
    dtype=torch.float64,
) -> Convergence:
    """Finite-width error against the Master Theorem limit across widths.

    Args:
        program: the program; scalar: the scalar to compare.
        widths: the widths ``n``; seeds: seeds per width.

    Returns:
        A :class:`Convergence` with the fitted log-log slope.
    """
    lim = limit(program).estimate(scalar).value
    errs, sems, secs = [], [], []
    for n in widths:
        t0 = time.perf_counter()
        vals = run(program, width=n, seeds=range(seeds), dtype=dtype)[scalar]
        secs.append(time.perf_counter() - t0)
        e = (vals.double() - lim).abs().reshape(seeds, -1).mean(-1)
        errs.append(e.mean())
        sems.append(e.std() / math.sqrt(seeds))
    widths_t = torch.tensor([float(n) for n in widths], dtype=torch.float64)
    errors = torch.stack(errs)
    lx, ly = widths_t.log(), errors.log()
    slope = float(
        ((lx - lx.mean()) * (ly - ly.mean())).sum() / ((lx - lx.mean()) ** 2).sum()
    )
    return Convergence(
        widths_t, errors, torch.stack(sems), slope, lim, torch.tensor(secs)
    )


def main(
    out: str | None = "figures",
    widths=None,
    seeds: int = 8,
    echo=print,
    kernel_options: dict | None = None,
) -> dict:
    """Run the tour: print each example's limit beside finite widths; plot.

    Returns the :class:`Convergence` of every example by name.
    """
    widths = tuple(widths or (128, 256, 512, 1024, 2048))
    results = {}
    for name, make in EXAMPLES.items():
        ex = make()
        est = ex.limit()
        conv = convergence(ex.program, ex.scalar, widths, seeds)
        results[name] = conv
        echo(f"\n{ex.title}")
        echo(f"  limit   {_fmt(est.value)}  ({est.method}, error <= {_fmt(est.error)})")
        for n, e, s in zip(conv.widths, conv.errors, conv.sem):
            err = f"{float(e):.3e} +- {float(s):.1e}"
            echo(f"  n={int(n):<6d} mean |finite - limit| = {err}")
        echo(f"  fitted slope of log error vs log n: {conv.slope:+.3f} (theory -0.5)")
    if out:
        from .plots import convergence_plot

        path = convergence_plot(results, out)
        echo(f"\nconvergence plot written to {path}")
    _kernels(out, echo, kernel_options or {})
    return results


def _kernels(out, echo, options):
    """NNGP/NTK of a relu MLP and the empirical NTK of sampled networks."""
    from . import tour_kernels

    echo(
        "\nNNGP and NTK of a 3-hidden-layer relu MLP (tensorprograms.nn) on the circle"
    )
    if out:
        path, res = tour_kernels.kernel_figure(out, **options)
    else:
        path, res = None, tour_kernels.kernel_convergence(**options)
    ntk, nngp = float(res["ntk"][0]), float(res["nngp"][0])
    echo(f"  NTK(x, x) = {ntk:.5f}, NNGP(x, x) = {nngp:.5f}")
    for n, e in zip(res["widths"], res["errors"]):
        echo(f"  n={int(n):<6d} mean |empirical NTK - NTK| = {float(e):.3e}")
    if path:
        echo(f"kernel figure written to {path}")


def _fmt(v: torch.Tensor) -> str:
    v = v.reshape(-1)
    return ", ".join(f"{float(a):.6g}" for a in v)
