"""Independent reference integrals for Gaussian expectations (tests only).

Piecewise Gauss-Legendre quadrature on a truncated square, written without any
code of :mod:`tensorprograms.gaussian`: with u = sqrt(q1) x and
u' = sqrt(q2) (rho x + sqrt(1 - rho^2) y), x, y iid N(0, 1), the outer integral
over x is split at x = 0 and the inner one over y at the point where u' = 0,
so every integrand is smooth on each piece (all functions tested have their
kinks and jumps at 0) and Gauss-Legendre converges spectrally. The truncation
at |x|, |y| <= 12 drops a Gaussian mass below 1e-32.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.special
import torch

_HALF_WIDTH = 12.0
_NODES = 160


def _legendre(a, b, n=_NODES):
    """Nodes and weights of n-point Gauss-Legendre on [a, b] (arrays broadcast)."""
    t, w = scipy.special.roots_legendre(n)
    a, b = np.asarray(a, dtype=float)[..., None], np.asarray(b, dtype=float)[..., None]
    return (b - a) / 2 * t + (a + b) / 2, (b - a) / 2 * w


def _density(z):
    return np.exp(-z * z / 2) / math.sqrt(2 * math.pi)


def _apply(phi, values):
    return phi(torch.from_numpy(np.ascontiguousarray(values))).numpy()


def mean(phi, q):
    """E[phi(u)], u ~ N(0, q), for a float q >= 0."""
    total = 0.0
    for a, b in ((-_HALF_WIDTH, 0.0), (0.0, _HALF_WIDTH)):
        x, w = _legendre(a, b)
        total += np.sum(w * _density(x) * _apply(phi, math.sqrt(q) * x))
    return float(total)


def pair(phi, psi, q1, q2, rho):
    """E[phi(u) psi(u')], Var u = q1, Var u' = q2, corr rho (floats)."""
    s = math.sqrt(max(0.0, 1.0 - rho * rho))
    total = 0.0
    for a, b in ((-_HALF_WIDTH, 0.0), (0.0, _HALF_WIDTH)):
        x, wx = _legendre(a, b)  # (n,)
        fx = wx * _density(x) * _apply(phi, math.sqrt(q1) * x)
        if s == 0.0:
            total += np.sum(fx * _apply(psi, math.sqrt(q2) * rho * x))
            continue
        cut = np.clip(-rho * x / s, -_HALF_WIDTH, _HALF_WIDTH)  # u' = 0 there
        inner = 0.0
        for lo, hi in ((-_HALF_WIDTH, cut), (cut, _HALF_WIDTH)):
            y, wy = _legendre(lo * np.ones_like(x), hi * np.ones_like(x))  # (n, n)
            up = math.sqrt(q2) * (rho * x[:, None] + s * y)
            inner = inner + np.sum(wy * _density(y) * _apply(psi, up), axis=1)
        total += np.sum(fx * inner)
    return float(total)
