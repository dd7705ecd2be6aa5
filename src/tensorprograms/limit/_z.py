"""Limits of vectors as exact formulas of Gaussian atoms, and their estimates."""

from __future__ import annotations

import math

import torch

from ..gaussian import Estimate

_F64 = torch.float64
_ZERO1 = torch.zeros(1, dtype=_F64)
_METHODS = ("exact", "closed form", "quadrature", "monte carlo")


# ----------------------------------------------------------------------------
# Z expressions


class _Atom:
    """A block of Gaussian atoms (one per lane, or one shared)."""

    __slots__ = ("id", "lanes", "label")
    method, err = 0, 0.0

    def __init__(self, id_, lanes, label):
        self.id, self.lanes, self.label = id_, lanes, label

    @property
    def deps(self):
        return frozenset((self.id,))

    smooth = True


class _Apply:
    """``func(arg_1, ..., arg_k; scalars)`` of linear forms ``arg_i``."""

    __slots__ = ("func", "args", "scalars", "lanes", "deps", "smooth", "method", "err")

    def __init__(self, func, args, scalars, lanes, method=0, err=0.0):
        self.func, self.args, self.scalars, self.lanes = func, args, scalars, lanes
        self.deps = frozenset().union(*(a.deps for a in args))
        self.smooth = func.smooth and all(a.smooth for a in args)
        self.method = max([method] + [a.method for a in args])
        self.err = err

    def label(self, names):
        inner = ", ".join(a.label(names) for a in self.args)
        return f"{self.func.name}({inner})"


class _Lin:
    """``const + sum coef_k * term_k``; coefficients per lane (shape ``(L,)``)."""

    __slots__ = ("terms", "const", "lanes", "deps", "smooth", "method", "err")

    def __init__(self, terms, const, lanes, method=0, err=0.0):
        merged: dict = {}
        for node, c in terms:
            key = id(node)
            if key in merged:
                merged[key] = (node, merged[key][1] + c)
            else:
                merged[key] = (node, c)
        self.terms = tuple(v for v in merged.values() if bool((v[1] != 0).any()))
        self.const = const
        self.lanes = lanes
        self.deps = frozenset().union(*(t.deps for t, _ in self.terms))
        self.smooth = all(t.smooth for t, _ in self.terms)
        # Worst method behind the coefficients, and a bound on the L2 norm of the
        # error of this Z (from integrated ZDot coefficients and scalars).
        self.method = max([method] + [t.method for t, _ in self.terms])
        self.err = err + sum(
            float(c.abs().max()) * t.err for t, c in self.terms if t.err
        )

    @property
    def gaussian(self) -> bool:
        return all(isinstance(t, _Atom) for t, _ in self.terms)

    def scaled(self, c: torch.Tensor, lanes: int, method=0, err=0.0) -> _Lin:
        terms = [(t, c * a) for t, a in self.terms]
        return _Lin(terms, c * self.const, lanes, max(method, self.method), err)

    def label(self, names=None):
        parts = []
        for t, c in self.terms:
            lab = t.label if isinstance(t, _Atom) else t.label(names)
            parts.append(f"{_coef_str(c)}{lab}")
        if bool((self.const != 0).any()):
            parts.append(_coef_str(self.const).rstrip("*") or "1")
        return " + ".join(parts) if parts else "0"


def _coef_str(c: torch.Tensor) -> str:
    if c.numel() == 1 or bool((c == c[0]).all()):
        v = float(c.reshape(-1)[0])
        return "" if v == 1 else f"{v:.4g}*"
    return "c*"  # per-lane coefficients


def _lipschitz(func) -> float:
    """Largest slope of a one-argument function on [-20, 20] (inf if unknown)."""
    if func.n_vectors != 1 or func.n_scalars:
        return math.inf
    x = torch.linspace(-20, 20, 4001, dtype=_F64)
    slopes = (func.fn(x[1:]) - func.fn(x[:-1])).abs() / (x[1] - x[0])
    return float(slopes.max())


def _lane_sel(c: torch.Tensor, lanes: torch.Tensor) -> torch.Tensor:
    return c[lanes] if c.shape[0] > 1 else c.expand(lanes.shape[0])


# ----------------------------------------------------------------------------
# Estimates


def _scaled(coef: torch.Tensor, est: Estimate) -> Estimate:
    return Estimate(coef * est.value, coef.abs() * est.error, est.method)


def _as_lin(node) -> _Lin:
    if isinstance(node, _Lin):
        return node
    one = torch.ones(1, dtype=_F64)
    return _Lin([(node, one)], torch.zeros(1, dtype=_F64), node.lanes)


def _exact(value: torch.Tensor) -> Estimate:
    return Estimate(value, torch.zeros_like(value), "exact")


def _combine(parts) -> Estimate:
    """Sum of ``coef * estimate`` pairs: errors add, the weakest method wins."""
    value = error = None
    method = 0
    for coef, est in parts:
        v, e = coef * est.value, coef.abs() * est.error
        value = v if value is None else value + v
        error = e if error is None else error + e
        method = max(method, _METHODS.index(est.method))
    return Estimate(value, error, _METHODS[method])
