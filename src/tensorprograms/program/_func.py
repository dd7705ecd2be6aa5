"""Functions carried by instructions, and the error type of the language."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

VARIANTS = ("Netsor", "Netsor-T", "Netsor-T+")

_TEST_POINTS = torch.tensor(
    [-3.0, -1.0, -0.5, 0.0, 0.25, 1.0, 2.5], dtype=torch.float64
)


class ProgramError(ValueError):
    """An instruction breaks a rule of the language; the message names both."""


# ----------------------------------------------------------------------------
# Functions carried by Nonlin / Moment / ScalarFn instructions


@dataclass(frozen=True, eq=False)
class Func:
    """A coordinatewise function ``fn(x_1, ..., x_k, theta_1, ..., theta_l)``.

    Args:
        name: printed name.
        fn: callable on torch tensors (vector arguments first, then scalar ones).
        n_vectors: number of vector arguments ``k``.
        n_scalars: number of scalar arguments ``l`` (Netsor-T+ only).
        smooth: whether ``fn`` is infinitely differentiable (decides how the limit
            evaluator integrates and differentiates it).
        nonlinearity: the registered one-argument nonlinearity this function is,
            if any (its closed-form Gaussian expectations are then used).
        kinks: for a one-argument function that is not smooth, the points of its
            argument where it may be non-smooth (``(0.0,)`` for relu, step, abs,
            sign and their kin), if known; the limit evaluator then splits its
            integrals there.
    """

    name: str
    fn: Callable
    n_vectors: int
    n_scalars: int = 0
    smooth: bool = True
    nonlinearity: object = None
    kinks: tuple | None = None

    def __call__(self, *args):
        return self.fn(*args)


def _mul(x, y):
    return x * y


def _div(x, y):
    return x / y


MUL = Func("mul", _mul, 2)
DIV = Func("div", _div, 2)

# A grid on which user functions are checked for smoothness (spacing 1e-3).
_SMOOTH_GRID = torch.linspace(-12.0, 12.0, 24001, dtype=torch.float64)
_OTHER_ARGS = (0.37, -0.61, 1.3, -1.7, 0.05)


def func_of_nonlinearity(nl) -> Func:
    """The Func of a one-argument nonlinearity of the registry (or a user one).

    Registered non-smooth nonlinearities (relu, step, abs, sign, leaky and AB relu
    and their derivatives: those with closed forms) are smooth away from 0.
    """
    smooth = bool(nl.smooth)
    known = getattr(nl, "_terms", None) is not None
    kinks = (0.0,) if not smooth and known else None
    return Func(nl.name, nl.fn, 1, 0, smooth, nl, kinks)


def _as_func(fn, n_vectors: int, n_scalars: int, name: str | None) -> Func:
    if isinstance(fn, Func):
        return fn
    if hasattr(fn, "fn") and hasattr(fn, "smooth") and hasattr(fn, "name"):
        if n_vectors != 1 or n_scalars != 0:
            raise ProgramError(
                f"nonlinearity {fn.name!r} takes one vector argument, "
                f"got {n_vectors} vectors and {n_scalars} scalars"
            )
        return func_of_nonlinearity(fn)
    if not callable(fn):
        raise TypeError(f"expected a callable nonlinearity, got {type(fn).__name__}")
    name = name or getattr(fn, "__name__", "fn")
    smooth = _looks_smooth(fn, n_vectors, n_scalars)
    return Func(name, fn, n_vectors, n_scalars, smooth)


def _looks_smooth(fn, n_vectors: int, n_scalars: int) -> bool:
    """Whether autograd's derivative of ``fn`` integrates to its increments.

    Along each vector argument (the others held at fixed values) on a grid of
    spacing h = 1e-3 over [-12, 12], the trapezoid rule on autograd's derivative
    must reproduce every increment of ``fn`` to 1e-6 (relative); a smooth
    function misses by about h^3 |f'''| / 12, a kink by about h |jump of f'| / 4
    and a jump (whose autograd derivative is 0) by the jump. A function that
    fails this (or that autograd cannot differentiate) is treated as non-smooth:
    the limit evaluator then takes E[f'] by Stein's lemma, not by autograd.
    """
    t = _SMOOTH_GRID
    scalars = [torch.tensor(0.5, dtype=torch.float64)] * n_scalars
    for i in range(n_vectors):
        args = [torch.full_like(t, _OTHER_ARGS[j % 5]) for j in range(n_vectors)]
        try:
            with torch.enable_grad():
                x = t.clone().requires_grad_(True)
                args[i] = x
                y = fn(*args, *scalars)
                if not isinstance(y, torch.Tensor) or y.shape != t.shape:
                    return True  # _check_func reports the wrong shape
                if not y.requires_grad:
                    return False  # piecewise constant, or not differentiable
                (d,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
        except Exception:  # noqa: BLE001 - _check_func reports failing functions
            return False
        if d is None:
            return False
        y, d = y.detach(), d.detach()
        if not (bool(torch.isfinite(y).all()) and bool(torch.isfinite(d).all())):
            continue  # infinite somewhere on the grid: nothing to learn here
        h = t[1] - t[0]
        miss = (y[1:] - y[:-1] - (d[1:] + d[:-1]) * h / 2).abs()
        if bool((miss > 1e-6 * (1 + y[1:].abs() + y[:-1].abs())).any()):
            return False
    return True


def _check_func(func: Func, where: str) -> None:
    """Evaluate ``func`` on test points: finite values of the right shape."""
    args = [_TEST_POINTS.roll(i) for i in range(func.n_vectors)]
    args += [torch.tensor(0.5, dtype=torch.float64)] * func.n_scalars
    try:
        out = func.fn(*args)
    except Exception as exc:  # the user's function itself failed
        raise ProgramError(
            f"{where}: nonlinearity {func.name!r} fails on the test points "
            f"{_TEST_POINTS.tolist()}: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(out, torch.Tensor) or out.shape != _TEST_POINTS.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ProgramError(
            f"{where}: nonlinearity {func.name!r} must map a tensor of shape "
            f"{tuple(_TEST_POINTS.shape)} coordinatewise to the same shape, got {got}"
        )
    bad = ~torch.isfinite(out)
    if bad.any():
        i = int(bad.nonzero()[0])
        point = [float(a[i]) for a in args[: func.n_vectors]]
        raise ProgramError(
            f"{where}: nonlinearity {func.name!r} is not finite at the test point "
            f"{point} (value {float(out[i])})"
        )
