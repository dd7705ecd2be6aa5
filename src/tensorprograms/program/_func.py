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
    """

    name: str
    fn: Callable
    n_vectors: int
    n_scalars: int = 0
    smooth: bool = True
    nonlinearity: object = None

    def __call__(self, *args):
        return self.fn(*args)


def _mul(x, y):
    return x * y


def _div(x, y):
    return x / y


MUL = Func("mul", _mul, 2)
DIV = Func("div", _div, 2)


def _as_func(fn, n_vectors: int, n_scalars: int, name: str | None) -> Func:
    if isinstance(fn, Func):
        return fn
    if hasattr(fn, "fn") and hasattr(fn, "smooth") and hasattr(fn, "name"):
        if n_vectors != 1 or n_scalars != 0:
            raise ProgramError(
                f"nonlinearity {fn.name!r} takes one vector argument, "
                f"got {n_vectors} vectors and {n_scalars} scalars"
            )
        return Func(fn.name, fn.fn, 1, 0, bool(fn.smooth), fn)
    if not callable(fn):
        raise TypeError(f"expected a callable nonlinearity, got {type(fn).__name__}")
    return Func(name or getattr(fn, "__name__", "fn"), fn, n_vectors, n_scalars)


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
