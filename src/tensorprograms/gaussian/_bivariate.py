"""E[phi(u) psi(u')] for pairs of nonlinearities: closed forms, Mehler series,
two-dimensional quadrature."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .. import nonlinearities as _nl
from ._expect import expect
from ._rules import Estimate

Tensor = torch.Tensor


def bivariate(phi: Any, psi: Any, q1: Any, q2: Any, c: Any, **options) -> Estimate:
    """E[phi(u) psi(u')], (u, u') ~ N(0, [[q1, c], [c, q2]]), elementwise.

    The building block of NNGP/NTK recursions (THEORY.md section 3): a closed form
    from :func:`tensorprograms.nonlinearities.pair_expectation` when one is known
    (method "closed form", error 0), otherwise vectorised 2-D quadrature.

    Args:
        phi, psi: nonlinearities (or names, or functions).
        q1, q2, c: float64 tensors (or numbers) that broadcast together.
        options: passed to :func:`expect`.

    Returns:
        Estimate of the broadcast shape.

    >>> from tensorprograms import nonlinearities as nl
    >>> bivariate(nl.relu, nl.relu, 1.0, 1.0, 1.0).value.item()
    0.5
    >>> est = bivariate(nl.tanh, nl.tanh, 1.0, 1.0, 0.3)
    >>> est.method, bool(est.error < 1e-10)
    ('quadrature', True)
    """
    phi, psi = _nl.get(phi), _nl.get(psi)
    q1 = torch.as_tensor(q1, dtype=torch.float64)
    q2 = torch.as_tensor(q2, dtype=torch.float64)
    c = torch.as_tensor(c, dtype=torch.float64)
    q1, q2, c = torch.broadcast_tensors(q1, q2, c)
    closed = _nl.pair_expectation(phi, psi, q1, q2, c)
    if closed is not None:
        return Estimate(closed, torch.zeros_like(closed), "closed form")
    for a, b, qa, qb in ((phi, psi, q1, q2), (psi, phi, q2, q1)):
        w = _nl._delta_weight(a)
        if w is not None:  # w E[delta(u) b(u')] = w p_u(0) E[b(u') | u = 0]
            v = (qb - c * c / torch.where(qa > 0, qa, 1.0)).clamp(min=0.0)
            inner = expect(lambda g, b=b: b(g[..., 0]), v.reshape(-1, 1, 1), **options)
            scale = w / torch.sqrt(2 * math.pi * qa)
            return Estimate(
                scale * inner.value.reshape(v.shape),
                scale.abs() * inner.error.reshape(v.shape),
                inner.method,
            )
    shape = q1.shape
    q1f, q2f, cf = q1.reshape(-1), q2.reshape(-1), c.reshape(-1)
    bound = (q1f.clamp(min=0) * q2f.clamp(min=0)).sqrt()
    cf = torch.minimum(torch.maximum(cf, -bound), bound)
    value = torch.zeros_like(q1f)
    error = torch.zeros_like(q1f)
    todo = torch.ones_like(q1f, dtype=torch.bool)
    if phi.smooth and psi.smooth and q1f.numel():
        atol = options.get("atol", 1e-10)
        v, e, ok = _mehler(phi, psi, q1f, q2f, cf, atol)
        value[ok], error[ok], todo = v[ok], e[ok], ~ok
    method = "quadrature"
    if bool(todo.any()):
        qa, qb, cc = q1f[todo], q2f[todo], cf[todo]
        cov = torch.stack([torch.stack([qa, cc], -1), torch.stack([cc, qb], -1)], -2)

        def f(points: Tensor) -> Tensor:
            return phi(points[..., 0]) * psi(points[..., 1])

        est = expect(f, cov, **options)
        value[todo], error[todo], method = est.value, est.error, est.method
    return Estimate(value.reshape(shape), error.reshape(shape), method)


_MEHLER_TERMS = 320  # most Hermite terms of the Mehler series
_MEHLER_NODES = (
    1600,
    2400,
)  # two composite Gauss-Legendre rules: their gap is the error
_MEHLER_HALF_WIDTH = 48.0  # Hermite functions of degree <= 320 vanish beyond |z| ~ 37


def _legendre_rule(n: int) -> tuple[Tensor, Tensor]:
    """Composite Gauss-Legendre nodes and weights on [-H, H] (16 nodes a panel)."""

    x, w = np.polynomial.legendre.leggauss(16)
    panels = n // 16
    edges = np.linspace(-_MEHLER_HALF_WIDTH, _MEHLER_HALF_WIDTH, panels + 1)
    half = (edges[1:] - edges[:-1])[:, None] / 2
    mid = (edges[1:] + edges[:-1])[:, None] / 2
    nodes = (mid + half * x[None, :]).reshape(-1)
    weights = (half * w[None, :]).reshape(-1)
    return torch.from_numpy(nodes), torch.from_numpy(weights)


def _hermite_functions(z: Tensor, K: int) -> Tensor:
    """psi_k(z) = He_k(z) / sqrt(k!) * sqrt(N(z; 0, 1)), k <= K: (K+1, M), bounded."""
    h = [torch.exp(-(z**2) / 4) / (2 * math.pi) ** 0.25]
    h.append(z * h[0])
    for k in range(1, K):
        h.append((z * h[k] - math.sqrt(k) * h[k - 1]) / math.sqrt(k + 1))
    return torch.stack(h[: K + 1])


def _mehler(phi, psi, q1: Tensor, q2: Tensor, c: Tensor, atol: float):
    """E[phi(u) psi(u')] by Mehler's formula for smooth phi, psi (TP1 appendix).

    With u = sqrt(q1) z, u' = sqrt(q2) z', corr(z, z') = rho,
    E[phi psi] = sum_k a_k b_k rho^k, a_k = E[phi(sqrt(q1) z) He_k(z)] / sqrt(k!).
    The coefficients depend on q alone, so they are computed once per distinct
    variance by 1-D quadrature (two orders; their gap bounds the coefficients'
    error). The tail after K terms is bounded by Cauchy-Schwarz and Parseval:
    |sum_{k>K}| <= sqrt(A_K B_K) |rho|^(K+1), A_K = E[phi^2] - sum_{k<=K} a_k^2.
    Pairs with |rho| = 1 are 1-D integrals. The 1-D integrals use composite
    Gauss-Legendre rules over Hermite functions (bounded, unlike He_k itself).
    Returns value, error bound and the
    mask of pairs whose bound is within ``atol``; the rest need 2-D quadrature.
    """
    K = _MEHLER_TERMS
    uq1, i1 = torch.unique(q1.clamp(min=0), return_inverse=True)
    uq2, i2 = torch.unique(q2.clamp(min=0), return_inverse=True)
    coefs = []
    for f, uq in ((phi, uq1), (psi, uq2)):
        runs = []
        for m in _MEHLER_NODES:
            # a_k = int f(sqrt(q) z) psi_k(z) sqrt(N(z)) dz: bounded integrands, so
            # a composite rule stays accurate for steep f and high degrees.
            z, w = _legendre_rule(m)
            root = torch.exp(-(z**2) / 4) / (2 * math.pi) ** 0.25
            vals = f(uq.sqrt()[:, None] * z[None, :])  # (U, M)
            a = (vals * (w * root)) @ _hermite_functions(z, K).T  # (U, K+1)
            norm = (vals**2 * (w * root**2)).sum(-1, keepdim=True)  # E[f^2]
            runs.append((a, (norm - (a**2).cumsum(-1)).clamp(0)))
        (a0, _), (a, tails) = runs
        coefs.append((a, tails, (a - a0).abs().sum(-1)))
    (a, ta, ea), (b, tb, eb) = coefs
    denom = (q1 * q2).sqrt()
    rho = torch.where(denom > 0, c / torch.where(denom > 0, denom, 1.0), 0.0)
    rho = rho.clamp(-1.0, 1.0)

    # The fewest terms that serve every pair the full series can serve: with the
    # worst tails over the batch, |rho| <= reach[k] needs at most k terms.
    worst = (ta.max(0).values * tb.max(0).values).sqrt()  # (K+1,)
    ks = torch.arange(K + 1, dtype=torch.float64)
    reach = torch.where(worst > 0, (0.5 * atol / worst).pow(1 / (ks + 1)), 1.0)
    inner = rho.abs()[rho.abs() <= reach.max()]
    top = float(inner.max()) if inner.numel() else 0.0
    k_eff = int((reach >= top).nonzero()[0]) if bool((reach >= top).any()) else K

    A, B = a[i1], b[i2]
    value = torch.zeros_like(rho)
    for k in range(k_eff, -1, -1):  # Horner in rho
        value = value * rho + A[:, k] * B[:, k]
    scale_a = (a**2).sum(-1).sqrt()[i1]
    scale_b = (b**2).sum(-1).sqrt()[i2]
    error = (ta[i1, k_eff] * tb[i2, k_eff]).sqrt() * rho.abs() ** (k_eff + 1)
    error = error + ea[i1] * scale_b + eb[i2] * scale_a
    ok = error <= atol

    edge = (rho.abs() > 1 - 1e-12) & (denom > 0)  # u' = sign * sqrt(q2 / q1) u
    if bool(edge.any()):
        s1, s2 = q1[edge].sqrt()[:, None], (q2[edge].sqrt() * rho[edge].sign())[:, None]
        runs = []
        for m in _MEHLER_NODES:
            z, w = _legendre_rule(m)
            dens = torch.exp(-(z**2) / 2) / math.sqrt(2 * math.pi)
            runs.append((phi(s1 * z) * psi(s2 * z) * (w * dens)).sum(-1))
        value[edge] = runs[1]
        error[edge] = (runs[1] - runs[0]).abs()
        ok[edge] = error[edge] <= atol
    return value, error, ok
