"""Expectations of functions of jointly Gaussian variables.

The Master Theorem (TP1 section 5, TP3/TP4) turns every scalar of a Tensor Program
into E[f(g)] for a centred Gaussian vector g. This module computes such
expectations with a stated error:

* closed forms (:func:`bivariate`, through :mod:`tensorprograms.nonlinearities`),
  error 0;
* product Gauss rules when the rank r of the covariance is at most
  ``max_quadrature_dim`` (default 3), refined (m = 8, 12, 16, 24, ... nodes)
  until two successive orders agree; the error is their difference;
* seeded Monte Carlo with antithetic pairs beyond, the error its standard error.

A covariance of rank r < k (the same input twice, a vector and a multiple of
it) is integrated in r dimensions: g = L eps with L = V sqrt(Lambda) from the
eigendecomposition and eps ~ N(0, I_r).

The integrands of Tensor Programs are rarely smooth: relu, step, abs and sign
put kinks and jumps on the planes g_i = 0, where tensor Gauss-Hermite grids
converge slowly and their successive differences understate the error. For
r <= 3 the rules here work in spherical coordinates eps = rho * theta: rho by
an m-point Gauss rule for the chi_r law (a function with kinks only on planes
through 0 is smooth along every ray), theta by Gauss-Legendre on the pieces
that the kink planes cut from the circle (r = 2) or the sphere (r = 3; each
meridian is split where it crosses a plane, the azimuths where planes
intersect). Kinks on the coordinate planes g_i = 0 are always resolved, others
when declared (``kinks=``), and smooth integrands converge just as fast.
Ranks above 3 (if ``max_quadrature_dim`` allows) use a Gauss-Hermite grid.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import scipy.special
import torch

from . import nonlinearities as _nl

__all__ = ["Estimate", "bivariate", "expect", "expect_grad", "gauss_hermite"]

Tensor = torch.Tensor

_METHOD_ORDER = ("exact", "closed form", "quadrature", "monte carlo")
_CHUNK_ELEMENTS = 2**22  # float64 entries per chunk of points (32 MB)
_PSD_TOL = 1e-9  # relative to the largest eigenvalue
_RANK_TOL = 1e-12  # eigenvalues below this (relative) span no integration direction
_MAX_RADIAL = 512  # largest radial rule (ranks 1 and 2)


@dataclass(frozen=True)
class Estimate:
    """A numerical value with an error bound and the method that produced it.

    Attributes:
        value: float64 tensor.
        error: float64 tensor of the same shape; 0 for exact and closed-form values,
            the difference of the last two quadrature orders for quadrature, the
            standard error for Monte Carlo.
        method: ``"exact"``, ``"closed form"``, ``"quadrature"`` or
            ``"monte carlo"`` (for a batch, the least exact method used).
    """

    value: Tensor
    error: Tensor
    method: str

    def __float__(self) -> float:
        return float(self.value)


@functools.lru_cache(maxsize=64)
def _gauss_hermite_cached(m: int) -> tuple[Tensor, Tensor]:
    x, w = scipy.special.roots_hermitenorm(m)
    w = w / w.sum()
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(w)


def gauss_hermite(m: int) -> tuple[Tensor, Tensor]:
    """Probabilists' Gauss-Hermite rule: sum_i w_i f(x_i) ~ E[f(z)], z ~ N(0, 1).

    Exact for polynomials of degree <= 2m - 1. Weights sum to 1; float64; cached.

    Args:
        m: number of nodes, >= 1.

    Returns:
        (nodes, weights), each of shape (m,).

    >>> x, w = gauss_hermite(3)
    >>> round(float((w * x**4).sum()), 12)  # E[z^4] = 3
    3.0
    """
    if not isinstance(m, int | np.integer) or m < 1:
        raise ValueError(f"gauss_hermite needs a positive integer m, got {m!r}")
    x, w = _gauss_hermite_cached(int(m))
    return x.clone(), w.clone()


def _factor(cov: Any, what: str = "cov") -> tuple[Tensor, Tensor, Tensor, bool]:
    """Check cov and return (evals, evecs, ranks, batched)."""
    cov = torch.as_tensor(cov, dtype=torch.float64)
    batched = cov.dim() == 3
    if cov.dim() == 2:
        cov = cov.unsqueeze(0)
    if cov.dim() != 3 or cov.shape[-1] != cov.shape[-2] or cov.shape[-1] == 0:
        raise ValueError(
            f"{what} must have shape (k, k) or (P, k, k) with k >= 1, "
            f"got {tuple(cov.shape)}"
        )
    if not bool(torch.isfinite(cov).all()):
        raise ValueError(f"{what} contains NaN or inf")
    scale = cov.abs().amax(dim=(-1, -2)).clamp(min=1e-300)
    asym = (cov - cov.transpose(-1, -2)).abs().amax(dim=(-1, -2))
    if bool((asym > 1e-9 * scale).any()):
        p = int((asym / scale).argmax())
        raise ValueError(
            f"{what} must be symmetric; problem {p} differs from its transpose by "
            f"{float(asym[p]):.3g}"
        )
    cov = (cov + cov.transpose(-1, -2)) / 2
    evals, evecs = torch.linalg.eigh(cov)
    top = evals.amax(dim=-1).clamp(min=0.0)
    lowest = evals.amin(dim=-1)
    bad = lowest < -_PSD_TOL * torch.maximum(top, scale)
    if bool(bad.any()):
        p = int(bad.nonzero()[0, 0])
        where = f" (problem {p})" if batched else ""
        raise ValueError(
            f"covariance is not positive semi-definite{where}: smallest eigenvalue "
            f"{float(lowest[p]):.3g}, largest {float(top[p]):.3g}"
        )
    keep = evals > _RANK_TOL * scale.unsqueeze(-1) * cov.shape[-1]
    evals = torch.where(keep, evals, torch.zeros_like(evals))
    return evals, evecs, keep.sum(dim=-1), batched


def _loading(evals: Tensor, evecs: Tensor, r: int) -> Tensor:
    """L of shape (P, k, r) with L L^T = cov, from the r largest eigenpairs."""
    return evecs[..., -r:] * evals[..., None, -r:].sqrt()


def _call(f: Callable, points: Tensor, index: Tensor, info: dict) -> Tensor:
    """Evaluate f on (P, Q, k) points; return (P, Q, m), checked."""
    out = f(points, index) if info["indexed"] else f(points)
    if not isinstance(out, Tensor):
        raise ValueError(
            f"f must return a torch.Tensor of shape (P, Q) or (P, Q, m), got "
            f"{type(out).__name__}"
        )
    P, Q = points.shape[:2]
    if out.shape[:2] != (P, Q) or out.dim() not in (2, 3):
        raise ValueError(
            f"f must return shape (P, Q) = {(P, Q)} or (P, Q, m) for points of shape "
            f"{tuple(points.shape)}, got {tuple(out.shape)}"
        )
    out = out.to(torch.float64)
    if not bool(torch.isfinite(out).all()):
        bad = (~torch.isfinite(out)).reshape(P, Q, -1).any(-1).nonzero()[0]
        raise ValueError(
            "f returned NaN or inf at the Gaussian point "
            f"{points[bad[0], bad[1]].tolist()} (problem {int(index[bad[0]])})"
        )
    info["scalar"] = out.dim() == 2
    return out if out.dim() == 3 else out.unsqueeze(-1)


def _grid(m: int, r: int, device) -> tuple[Tensor, Tensor]:
    """Gauss-Hermite tensor grid: nodes (1, m^r, r), weights (1, m^r)."""
    x, w = gauss_hermite(m)
    if r > 1:
        x = torch.cartesian_prod(*([x] * r)).reshape(-1, r)
        w = torch.cartesian_prod(*([w] * r)).reshape(-1, r).prod(-1)
    else:
        x = x.reshape(-1, 1)
    keep = w > 0  # drop nodes whose weight underflowed
    return x[keep].to(device)[None], w[keep].to(device)[None]


@functools.lru_cache(maxsize=32)
def _radial_cached(m: int, r: int) -> tuple[Tensor, Tensor]:
    # Gauss rule for the chi_r density ~ rho^(r-1) exp(-rho^2 / 2) on [0, inf):
    # recurrence coefficients by the Stieltjes procedure on a composite
    # Gauss-Legendre discretisation of the weight (unit panels on [0, R], exact to
    # rounding for the polynomials involved), nodes and weights by Golub-Welsch.
    R = math.ceil(math.sqrt(4 * m)) + 16
    t, wt = scipy.special.roots_legendre(40 + m // 8)
    x = ((t[None] + 1) / 2 + np.arange(R)[:, None]).ravel()
    w = np.tile(wt / 2, R) * x ** (r - 1) * np.exp(-x * x / 2)
    keep = w > 1e-280
    x, w = x[keep], w[keep] / w[keep].sum()
    a, b = np.zeros(m), np.zeros(m)
    q_prev, q = np.zeros_like(x), np.ones_like(x)
    for j in range(m):
        a[j] = np.sum(w * x * q * q)
        v = (x - a[j]) * q - b[j] * q_prev
        if j + 1 < m:
            b[j + 1] = math.sqrt(np.sum(w * v * v))
            q_prev, q = q, v / b[j + 1]
    nodes, vecs = scipy.linalg.eigh_tridiagonal(a, b[1:])
    return torch.from_numpy(nodes.copy()), torch.from_numpy(vecs[0] ** 2)


def _radial(m: int, r: int) -> tuple[Tensor, Tensor]:
    """m-point Gauss rule (weights sum to 1) for |eps|, eps ~ N(0, I_r)."""
    x, w = _radial_cached(m, r)
    return x.clone(), w.clone()


def _breakpoints(D: Tensor) -> Tensor:
    """Angles in [0, 2 pi) where d . (cos a, sin a) = 0 for each row d of D (P, j, 2).

    Returns (P, 2j) sorted angles; a zero row d contributes duplicates of the first
    angle (arcs of length zero).
    """
    base = torch.atan2(D[..., 1], D[..., 0]) + math.pi / 2
    angles = torch.cat([base, base + math.pi], dim=-1) % (2 * math.pi)
    nonzero = (D.abs().amax(-1) > 0).repeat(1, 2)
    first = angles.gather(-1, nonzero.to(torch.int64).argmax(-1, keepdim=True))
    angles = torch.where(nonzero, angles, first)
    return angles.sort(dim=-1).values


def _polar_rule(m: int, L: Tensor, kinks: Tensor) -> tuple[Tensor, Tensor]:
    """Rule for rank 1 and 2 that resolves kinks on the hyperplanes a . g = 0.

    eps = rho * theta: rho by the radial Gauss rule (any function that is smooth
    away from hyperplanes through 0 is smooth along rays), theta = +-1 (rank 1) or
    an angle (rank 2) integrated by m-point Gauss-Legendre on every arc between
    the angles where a row of ``kinks @ L`` vanishes. Returns eps (P|1, Q, r) and
    weights (P|1, Q).
    """
    P, k, r = L.shape
    rho, w_rho = _radial(m, r)
    rho, w_rho = rho.to(L.device), w_rho.to(L.device)
    if r == 1:
        eps = torch.cat([rho, -rho]).reshape(1, -1, 1)
        return eps, torch.cat([w_rho, w_rho]).reshape(1, -1) / 2
    D = torch.einsum("pjk,pkr->pjr", kinks.expand(P, -1, -1), L)  # (P, j, 2)
    cuts = _breakpoints(D)  # (P, B)
    lo = cuts
    hi = torch.cat([cuts[:, 1:], cuts[:, :1] + 2 * math.pi], dim=-1)
    t, wt = scipy.special.roots_legendre(m)
    t = torch.from_numpy(t).to(L.device)
    wt = torch.from_numpy(wt).to(L.device)
    half = (hi - lo)[..., None] / 2  # (P, B, 1)
    alpha = (lo[..., None] + half * (t + 1)).reshape(P, -1)  # (P, B m)
    w_alpha = (half * wt / (2 * math.pi)).reshape(P, -1)
    theta = torch.stack([torch.cos(alpha), torch.sin(alpha)], dim=-1)
    eps = rho[None, :, None, None] * theta[:, None]  # (P, m, B m, 2)
    weights = w_rho[None, :, None] * w_alpha[:, None]  # (P, m, B m)
    return eps.reshape(P, -1, 2), weights.reshape(P, -1)


def _unit_rows(D: Tensor) -> Tensor:
    norm = D.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, D / norm.clamp(min=1e-300), torch.zeros_like(D))


def _axes(device) -> Tensor:
    """64 fixed, well spread unit vectors (a Fibonacci lattice on a hemisphere)."""
    i = torch.arange(64, dtype=torch.float64, device=device) + 0.5
    z = i / 64
    phi = i * math.pi * (3 - math.sqrt(5))
    s = torch.sqrt(1 - z * z)
    return torch.stack([s * torch.cos(phi), s * torch.sin(phi), z], dim=-1)


def _sphere_angles(m: int) -> int:
    return max(4, m // 2)


def _sphere_rule(m: int, L: Tensor, kinks: Tensor) -> tuple[Tensor, Tensor]:
    """Rank-3 rule that resolves kinks on the planes a . g = 0.

    eps = rho * theta, theta = sin(v) (cos(p) e1 + sin(p) e2) + cos(v) e3 on the
    unit sphere (surface element sin(v) dv dp). Each kink plane cuts every
    meridian (fixed p) once, at a polar angle v known in closed form: the inner
    integral over v is split there; the outer integral over p is split at the
    azimuths of the pairwise intersections of the kink circles, where the order
    of the cuts changes. The axis e3 is chosen among fixed directions to stay
    away from all kink planes. Gauss-Legendre on every piece, the radial Gauss
    rule for rho. Returns eps (P, Q, 3), weights (P, Q).
    """
    P = L.shape[0]
    dev = L.device
    n = _sphere_angles(m)
    rho, w_rho = (x.to(dev) for x in _radial(m, 3))
    t, wt = (torch.from_numpy(x).to(dev) for x in scipy.special.roots_legendre(n))
    D = _unit_rows(torch.einsum("pjk,pkr->pjr", kinks.expand(P, -1, -1), L))
    J = D.shape[1]
    live = D.abs().amax(-1) > 0  # (P, J)

    score = torch.einsum("pjr,cr->pjc", D, _axes(dev)).abs()
    score = torch.where(live[..., None], score, torch.ones_like(score))
    e3 = _axes(dev)[score.amin(1).argmax(-1)]  # (P, 3)
    helper = torch.eye(3, dtype=L.dtype, device=dev)[e3.abs().argmin(-1)]
    e1 = _unit_rows(helper - (helper * e3).sum(-1, keepdim=True) * e3)
    e2 = torch.cross(e3, e1, dim=-1)

    ii, jj = torch.triu_indices(J, J, offset=1, device=dev)
    cross = torch.cross(D[:, ii], D[:, jj], dim=-1)  # (P, pairs, 3)
    az = torch.atan2((cross * e2[:, None]).sum(-1), (cross * e1[:, None]).sum(-1))
    az = torch.cat([az, az + math.pi], dim=-1) % (2 * math.pi)
    valid = (cross.norm(dim=-1) > 1e-12).repeat(1, 2)
    az = torch.where(valid, az, torch.zeros_like(az))
    zero = torch.zeros(P, 1, dtype=L.dtype, device=dev)
    lo = torch.cat([zero, az], dim=-1).sort(dim=-1).values
    hi = torch.cat([lo[:, 1:], lo[:, :1] + 2 * math.pi], dim=-1)
    half = (hi - lo)[..., None] / 2
    p_ang = (lo[..., None] + half * (t + 1)).reshape(P, -1)  # (P, Np)
    w_p = (half * wt).reshape(P, -1)

    u = (
        torch.cos(p_ang)[..., None] * e1[:, None]
        + torch.sin(p_ang)[..., None] * e2[:, None]
    )  # (P, Np, 3)
    a = torch.einsum("pqr,pjr->pqj", u, D)
    b = (D * e3[:, None]).sum(-1)[:, None]  # (P, 1, J)
    z = -a * torch.sign(b) / torch.sqrt(a * a + b * b).clamp(min=1e-300)
    v_cut = torch.where(live[:, None], torch.arccos(z.clamp(-1, 1)), 0.0 * z)
    ends = torch.zeros_like(v_cut[..., :1])
    cuts = torch.cat([ends, v_cut.sort(dim=-1).values, ends + math.pi], dim=-1)
    half_v = (cuts[..., 1:] - cuts[..., :-1])[..., None] / 2  # (P, Np, J+1, 1)
    v = (cuts[..., :-1, None] + half_v * (t + 1)).flatten(2)  # (P, Np, Nv)
    w_v = (half_v * wt).flatten(2) * torch.sin(v)

    theta = (
        torch.sin(v)[..., None] * u[:, :, None]
        + torch.cos(v)[..., None] * e3[:, None, None]
    )  # (P, Np, Nv, 3)
    w_ang = w_p[..., None] * w_v / (4 * math.pi)
    eps = rho[None, :, None, None, None] * theta[:, None]
    weights = w_rho[None, :, None, None] * w_ang[:, None]
    return eps.reshape(P, -1, 3), weights.reshape(P, -1)


def _rule(m: int, L: Tensor, kinks: Tensor | None) -> tuple[Tensor, Tensor]:
    """Nodes eps (P|1, Q, r) and weights (P|1, Q); kinks None: Gauss-Hermite grid."""
    r = L.shape[-1]
    if kinks is None:
        return _grid(m, r, L.device)
    if isinstance(kinks, _Line):
        return _line_rule(m, kinks.t)
    if r <= 2:
        return _polar_rule(m, L, kinks)
    if r == 3:
        return _sphere_rule(m, L, kinks)
    return _grid(m, r, L.device)


def _rule_size(m: int, r: int, n_kinks: int | None) -> int:
    if n_kinks is None:
        return m**r
    if r == 1:
        return (n_kinks + 2) * m
    if r == 2:
        return m * m * 2 * n_kinks
    if r == 3:
        n = _sphere_angles(m)
        return m * n * (n_kinks * (n_kinks - 1) + 1) * n * (n_kinks + 1)
    return m**r


def _quadrature_sum(f, L, kinks, index, m, info):
    """sum_q w_q f(L eps_q) for each problem: (P, m_out)."""
    n_kinks = None if kinks is None else kinks.shape[-2]
    size = _chunks_size(L.shape[0], _rule_size(m, L.shape[-1], n_kinks), L.shape[1])
    out = []
    for s in range(0, L.shape[0], size):
        Lc = L[s : s + size]
        kc = kinks if kinks is None or kinks.shape[0] == 1 else kinks[s : s + size]
        eps, w = _rule(m, Lc, kc)
        points = torch.einsum("pqr,pkr->pqk", eps.expand(Lc.shape[0], -1, -1), Lc)
        vals = _call(f, points, index[s : s + size], info)
        out.append(torch.einsum("pq,pqm->pm", w.expand(Lc.shape[0], -1), vals))
    return torch.cat(out)


def _chunks_size(n_problems: int, points_per_problem: int, k: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, points_per_problem * (k + 1)))


def _next_order(m: int) -> int:
    """8, 12, 16, 24, 32, 48, ...: steps of 1.5 and 4/3, so that the difference of
    successive orders (the reported error) is close to the error of the last one."""
    return m * 3 // 2 if m & (m - 1) == 0 else m * 4 // 3


def _quadrature(f, L, kinks, index, atol, rtol, max_points, info):
    """Refine the rule (m = 8, 12, 16, 24, ...) until successive results agree."""
    r = L.shape[-1]
    n_kinks = kinks.shape[-2]
    m = 8
    if r >= 3 and (r > 3 or _rule_size(m, r, n_kinks) > max_points):
        kinks, n_kinks = None, None  # too many kink planes: Gauss-Hermite grid
    prev = _quadrature_sum(f, L, kinks, index, m, info)
    value = prev.clone()
    error = torch.full_like(prev, float("inf"))
    todo = torch.arange(L.shape[0], device=L.device)
    while (
        todo.numel()
        and _rule_size(_next_order(m), r, n_kinks) <= max_points
        and _next_order(m) <= _MAX_RADIAL
    ):
        m = _next_order(m)
        sub = kinks if kinks is None or kinks.shape[0] == 1 else kinks[todo]
        new = _quadrature_sum(f, L[todo], sub, index[todo], m, info)
        diff = (new - prev[todo]).abs()
        value[todo] = new
        error[todo] = diff
        done = (diff <= atol + rtol * new.abs()).all(-1)
        prev[todo] = new
        todo = todo[~done]
    return value, error


def _monte_carlo(f, L, index, samples, seed, info):
    """Antithetic Monte Carlo: mean over pairs (f(L e) + f(-L e))/2, standard error."""
    P, k, r = L.shape
    n_pairs = max(2, samples // 2)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    total = None
    total_sq = None
    block = max(1, min(n_pairs, _CHUNK_ELEMENTS // (2 * (k + 1) * max(1, P))))
    done = 0
    while done < n_pairs:
        nb = min(block, n_pairs - done)
        eps = torch.randn(nb, r, generator=gen, dtype=torch.float64).to(L.device)
        eps = torch.cat([eps, -eps])
        parts = []
        size = _chunks_size(P, 2 * nb, k)
        for s in range(0, P, size):
            points = torch.einsum("qr,pkr->pqk", eps, L[s : s + size])
            vals = _call(f, points, index[s : s + size], info)
            parts.append((vals[:, :nb] + vals[:, nb:]) / 2)
        pairs = torch.cat(parts)  # (P, nb, m)
        s1, s2 = pairs.sum(1), (pairs * pairs).sum(1)
        total = s1 if total is None else total + s1
        total_sq = s2 if total_sq is None else total_sq + s2
        done += nb
    mean = total / n_pairs
    var = (total_sq / n_pairs - mean * mean).clamp(min=0.0) * n_pairs / (n_pairs - 1)
    return mean, (var / n_pairs).sqrt()


def expect(
    f: Callable[..., Tensor],
    cov: Any,
    *,
    atol: float = 1e-10,
    rtol: float = 1e-12,
    max_quadrature_dim: int = 3,
    max_points: int = 2**16,
    mc_samples: int = 2**17,
    seed: int = 0,
    indexed: bool = False,
    kinks: Any = None,
    offsets: Any = None,
) -> Estimate:
    """E[f(g)] for g ~ N(0, cov), with an error bound (TP1 section 5).

    The covariance is factored as cov = L L^T with L of rank r (eigenvalues below
    1e-12 of the largest are dropped). For r <= ``max_quadrature_dim`` a product
    Gauss rule (spherical coordinates split at the kink planes for r <= 3, see
    the module notes; a Gauss-Hermite grid above) with m = 8, 12, 16, 24, ...
    nodes per coordinate (at most ``max_points`` per problem) is refined until
    two successive orders agree to ``atol + rtol |value|``; the error is the
    last difference (reported, not raised, when the limit is reached first).
    Beyond, seeded Monte Carlo with ``mc_samples`` antithetic samples; the error
    is the standard error. Rank 0 gives f(0) exactly.

    Args:
        f: function of points of shape (P, Q, k) returning (P, Q) or (P, Q, m);
            it must act point by point. P is a subset of the problems (chunks,
            problems of equal rank): with ``indexed=True`` f is called as
            ``f(points, index)`` where ``index`` (P,) lists the problems.
        cov: covariance, (k, k) or batched (P, k, k), positive semi-definite
            (tiny negative eigenvalues from rounding are clipped).
        atol, rtol: quadrature convergence tolerance.
        max_quadrature_dim: largest rank integrated by quadrature.
        max_points: largest grid per problem.
        mc_samples: Monte Carlo sample count; seed: its seed.
        indexed: call f with the problem indices as well (see f).
        kinks: linear functionals a, shape (j, k) or (P, j, k), such that f may be
            non-smooth on a . g = 0 (besides the coordinate planes g_i = 0, which
            are always assumed), e.g. ``[[1, -1]]`` for relu(g0 - g1).
        offsets: with ``kinks``, shape (j,) or (P, j): f is smooth except on the
            affine planes a . g + b = 0 listed (the coordinate planes are then not
            assumed), e.g. ``kinks=[[1]], offsets=[-0.3]`` for relu(g0 - 0.3).
            Planes beyond 8.5 standard deviations are ignored; when the others
            meet in a point g0 the integral is moved there (E[f(g)] =
            E[f(g0 + h) N(g0 + h) / N(h)], the planes then pass through 0 and
            the rules resolve them); when they do not, Monte Carlo is used.

    Returns:
        Estimate with value and error of shape (), (m,), (P,) or (P, m).

    Raises:
        ValueError: cov not PSD or not symmetric, f returned NaN/inf or a wrong
            shape.

    >>> f = lambda g: g[..., 0] ** 2 * g[..., 1] ** 2
    >>> est = expect(f, [[1.0, 0.5], [0.5, 2.0]])
    >>> round(float(est.value), 12), est.method  # q1 q2 + 2 c^2 = 2.5
    (2.5, 'quadrature')
    """
    evals, evecs, ranks, batched = _factor(cov)
    P, k = evals.shape
    if P == 0:
        raise ValueError("cov is an empty batch (P = 0); nothing to integrate")
    if offsets is None:
        kinks = _kink_functionals(kinks, P, k, evals.device)
    else:
        planes = _affine_planes(kinks, offsets, P, k, evals.device)
    if not indexed:
        f = functools.partial(_unindexed, f)
    value = None
    error = None
    methods = set()
    info = {"indexed": True, "scalar": True}
    for r in sorted(set(ranks.tolist())):
        index = (ranks == r).nonzero().squeeze(-1)
        if r == 0:
            points = torch.zeros(index.numel(), 1, k, dtype=torch.float64)
            v = _call(f, points.to(evals.device), index, info)[:, 0]
            e = torch.zeros_like(v)
            methods.add("exact")
            parts = []
        elif r > max_quadrature_dim:
            L = _loading(evals[index], evecs[index], r)
            parts = [("monte carlo", index, L, None)]
        elif offsets is None:
            L = _loading(evals[index], evecs[index], r)
            sub = kinks if kinks.shape[0] == 1 else kinks[index]
            parts = [("quadrature", index, L, sub)]
        else:
            L = _loading(evals[index], evecs[index], r)
            parts = _shifted_parts(planes, index, L)
        if parts:
            v = torch.zeros(index.numel(), 1, dtype=torch.float64, device=L.device)
            e = torch.zeros_like(v)
        for method, sub_index, L_sub, sub_kinks in parts:
            where = torch.isin(index, sub_index)
            if method == "monte carlo":
                vs, es = _monte_carlo(f, L_sub, sub_index, mc_samples, seed, info)
            else:
                if isinstance(sub_kinks, _Shift):
                    g = functools.partial(_shifted_call, f, sub_kinks)
                    sub_kinks = sub_kinks.planes
                else:
                    g = f
                vs, es = _quadrature(
                    g, L_sub, sub_kinks, sub_index, atol, rtol, max_points, info
                )
            if vs.shape[-1] != v.shape[-1]:
                v = v.expand(-1, vs.shape[-1]).clone()
                e = e.expand(-1, vs.shape[-1]).clone()
            v[where], e[where] = vs, es
            methods.add(method)
        if value is None:
            value = torch.zeros(P, v.shape[-1], dtype=torch.float64, device=v.device)
            error = torch.zeros_like(value)
        value[index] = v
        error[index] = e
    if info["scalar"]:
        value, error = value[..., 0], error[..., 0]
    if not batched:
        value, error = value[0], error[0]
    method = max(methods, key=_METHOD_ORDER.index)
    return Estimate(value, error, method)


def _unindexed(f: Callable, points: Tensor, index: Tensor) -> Tensor:
    return f(points)


_FAR_PLANE = 8.5  # planes farther than this many standard deviations are ignored
_MAX_SHIFT = 5.0  # farthest move of the Gaussian (ranks >= 2) before Monte Carlo


class _Line:
    """Kink points t (p, j) of rank-1 problems g = L t (0 marks an unused slot)."""

    def __init__(self, t: Tensor):
        self.t = t
        self.shape = (t.shape[0], t.shape[1], 1)

    def __getitem__(self, item) -> _Line:
        return _Line(self.t[item])


def _line_rule(m: int, t: Tensor) -> tuple[Tensor, Tensor]:
    """Rank-1 rule split at 0 and at the kink points t (p, j).

    Between consecutive breakpoints: m-point Gauss-Legendre against the N(0, 1)
    density; beyond the outermost ones (b_hi >= 0 >= b_lo): the half-normal rule
    moved there, x -> b_hi + x with weight N(b_hi + x) / N(x), which decays.
    Returns eps (p, Q, 1) and weights (p, Q).
    """
    dev = t.device
    cuts = torch.cat([torch.zeros_like(t[:, :1]), t], dim=-1).sort(dim=-1).values
    x, wx = (torch.from_numpy(a).to(dev) for a in scipy.special.roots_legendre(m))
    lo, hi = cuts[:, :-1, None], cuts[:, 1:, None]
    nodes = lo + (hi - lo) * (x + 1) / 2  # (p, j, m)
    dens = torch.exp(-nodes * nodes / 2) / math.sqrt(2 * math.pi)
    w_mid = (hi - lo) / 2 * wx * dens
    rho, w_rho = (a.to(dev) for a in _radial(m, 1))
    top, bottom = cuts[:, -1:], cuts[:, :1]
    right = top + rho
    w_right = w_rho / 2 * torch.exp(-top * rho - top * top / 2)
    left = bottom - rho
    w_left = w_rho / 2 * torch.exp(bottom * rho - bottom * bottom / 2)
    eps = torch.cat([nodes.flatten(1), right, left], dim=-1)
    weights = torch.cat([w_mid.flatten(1), w_right, w_left], dim=-1)
    return eps[..., None], weights


@dataclass(frozen=True)
class _Shift:
    """Where the Gaussian is moved (g0, u, c: E[f] = E[f(g0 + h) exp(-u.h - c)])."""

    g0: Tensor  # (P, k), indexed by problem
    u: Tensor  # (P, k)
    c: Tensor  # (P,)
    planes: Tensor  # (p, j, k): the planes through 0 after the move


def _affine_planes(kinks: Any, offsets: Any, P: int, k: int, device):
    """Rows a (P|1, j, k) and offsets b (P|1, j) of planes a . g + b = 0."""
    if kinks is None:
        raise ValueError("offsets need kinks: the planes a . g + b = 0 have rows a")
    a = torch.as_tensor(kinks, dtype=torch.float64).to(device)
    b = torch.as_tensor(offsets, dtype=torch.float64).to(device)
    a = a[None] if a.dim() == 2 else a
    b = b[None] if b.dim() == 1 else b
    ok = a.dim() == 3 and a.shape[-1] == k and a.shape[0] in (1, P)
    if not ok or b.dim() != 2 or b.shape[-1] != a.shape[1] or b.shape[0] not in (1, P):
        raise ValueError(
            f"kinks and offsets must have shapes (j, {k}) and (j,) (or with a "
            f"leading {P}), got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        raise ValueError("kinks and offsets must be finite")
    return a.expand(P, -1, -1), b.expand(P, -1)


def _shifted_parts(planes, index: Tensor, L: Tensor) -> list:
    """Split problems of one rank by whether their planes meet in one point.

    In eps coordinates (g = L eps) a plane is D . eps + b = 0 with D = a L. Planes
    farther than ``_FAR_PLANE`` from 0 carry no mass and are dropped; the least
    norm point eps0 of the others is where the integral moves when it lies on all
    of them (and within ``_FAR_PLANE``); otherwise the problem goes to Monte Carlo.
    """
    a, b = planes[0][index], planes[1][index]
    D = torch.einsum("pjk,pkr->pjr", a, L)
    norm = D.norm(dim=-1)
    live = (b.abs() < _FAR_PLANE * norm) & (norm > 1e-12 * a.norm(dim=-1))
    Dl, bl = D * live[..., None], b * live
    eps0 = -(torch.linalg.pinv(Dl) @ bl[..., None])[..., 0]  # (p, r)
    resid = (Dl @ eps0[..., None])[..., 0] + bl
    tol = 1e-9 * (1 + bl.abs().amax(-1, keepdim=True))
    if L.shape[-1] == 1:  # a line: split it at the kink points, no move needed
        t = torch.where(live, -b / torch.where(live, D[..., 0], 1.0), 0.0)
        return [("quadrature", index, L, _Line(t))]
    meets = (resid.abs() <= tol).all(-1) & (eps0.norm(dim=-1) <= _MAX_SHIFT)
    gram_inv = torch.linalg.inv(L.transpose(-1, -2) @ L)
    P, k = planes[0].shape[0], L.shape[1]
    g0 = torch.zeros(P, k, dtype=torch.float64, device=L.device)
    u = torch.zeros_like(g0)
    c = torch.zeros(P, dtype=torch.float64, device=L.device)
    g0[index] = (L @ eps0[..., None])[..., 0]
    u[index] = (L @ gram_inv @ eps0[..., None])[..., 0]
    c[index] = (eps0 * eps0).sum(-1) / 2
    parts = []
    if bool(meets.any()):
        shift = _Shift(g0, u, c, a[meets] * live[meets][..., None])
        parts.append(("quadrature", index[meets], L[meets], shift))
    if bool((~meets).any()):
        parts.append(("monte carlo", index[~meets], L[~meets], None))
    return parts


def _shifted_call(f: Callable, shift: _Shift, points: Tensor, index: Tensor):
    """f(g0 + h) N(g0 + h) / N(h) at the points h (P, Q, k)."""
    out = f(points + shift.g0[index][:, None], index)
    log_w = -(points * shift.u[index][:, None]).sum(-1) - shift.c[index][:, None]
    w = torch.exp(log_w)
    return out * (w if out.dim() == 2 else w[..., None])


def _kink_functionals(kinks: Any, P: int, k: int, device) -> Tensor:
    """Rows a with f possibly non-smooth on a . g = 0: coordinates plus ``kinks``."""
    eye = torch.eye(k, dtype=torch.float64, device=device)[None]
    if kinks is None:
        return eye
    kinks = torch.as_tensor(kinks, dtype=torch.float64).to(device)
    if kinks.dim() == 2:
        kinks = kinks[None]
    if kinks.dim() != 3 or kinks.shape[-1] != k or kinks.shape[0] not in (1, P):
        raise ValueError(
            f"kinks must have shape (j, {k}) or ({P}, j, {k}), got {tuple(kinks.shape)}"
        )
    return torch.cat([eye.expand(kinks.shape[0], -1, -1), kinks], dim=1)


def expect_grad(
    f: Callable[..., Tensor], cov: Any, *, smooth: bool = True, **options
) -> Estimate:
    """E[grad f(g)], g ~ N(0, cov): the expected partial derivatives E[df/dg_i].

    This is what ZDot needs (TP2 section 4, TP3): E[dZ^x / dZHat]. Smooth f (or
    a degenerate cov, where the partial derivatives define the value) uses
    autograd at the integration points. Non-smooth f (``smooth=False``, e.g.
    with jumps) and a non-degenerate cov use Stein's lemma instead,
    E[grad f(g)] = cov^{-1} E[g f(g)], valid for f with jumps.

    Args:
        f: as in :func:`expect` (point by point, differentiable by autograd for
            the smooth path), returning (P, Q) or (P, Q, m).
        cov: (k, k) or (P, k, k).
        smooth: whether f is smooth enough for autograd to give its derivative.
        options: as in :func:`expect`.

    Returns:
        Estimate of shape (k,), (m, k), (P, k) or (P, m, k).

    >>> step = lambda g: (g[..., 0] > 0).double()
    >>> est = expect_grad(step, [[1.0]], smooth=False)  # N(0, 1) density at 0
    >>> round(float(est.value[0]), 6), est.method
    (0.398942, 'quadrature')
    """
    evals, _, ranks, batched = _factor(cov)
    P, k = evals.shape
    cov_t = torch.as_tensor(cov, dtype=torch.float64).to(evals.device).reshape(P, k, k)
    stein = (ranks == k) & (not smooth)
    seen = {"scalar": True}

    def call(points, *index):
        out = f(points, *index)
        seen["scalar"] = out.dim() == 2
        return out.unsqueeze(-1) if out.dim() == 2 else out

    def g_times_f(points, *index):
        out = call(points, *index)
        return (out.unsqueeze(-1) * points.unsqueeze(-2)).flatten(2)

    def grad(points, *index):
        with torch.enable_grad():
            x = points.detach().requires_grad_(True)
            out = call(x, *index)
            grads = []
            for j in range(out.shape[-1]):
                g = None
                if out.requires_grad:
                    (g,) = torch.autograd.grad(
                        out[..., j].sum(), x, retain_graph=True, allow_unused=True
                    )
                grads.append(torch.zeros_like(x) if g is None else g)
        return torch.stack(grads, dim=-2).flatten(2).detach()

    value = error = None
    methods = []
    for use_stein in (True, False):
        subset = (stein == use_stein).nonzero().squeeze(-1)
        if subset.numel() == 0:
            continue
        est = _expect_subset(g_times_f if use_stein else grad, cov_t, subset, options)
        v = est.value.reshape(subset.numel(), -1, k)
        e = est.error.reshape(subset.numel(), -1, k)
        if use_stein:  # E[grad f] = C^{-1} E[g f]
            inv = torch.linalg.inv(cov_t[subset])
            v, e = v @ inv.transpose(-1, -2), e @ inv.abs().transpose(-1, -2)
        if value is None:
            value = torch.zeros(P, v.shape[1], k, dtype=torch.float64, device=v.device)
            error = torch.zeros_like(value)
        value[subset], error[subset] = v, e
        methods.append(est.method)
    if seen["scalar"]:
        value, error = value[:, 0], error[:, 0]
    if not batched:
        value, error = value[0], error[0]
    return Estimate(value, error, max(methods, key=_METHOD_ORDER.index))


def _expect_subset(f, cov: Tensor, subset: Tensor, options: dict) -> Estimate:
    """expect over cov[subset], with problem indices and kinks mapped back."""
    options = dict(options)
    if options.get("indexed"):
        inner = f
        f = lambda points, index: inner(points, subset[index])  # noqa: E731
    kinks = options.get("kinks")
    if kinks is not None:
        kinks = torch.as_tensor(kinks, dtype=torch.float64)
        if kinks.dim() == 3 and kinks.shape[0] == cov.shape[0] and kinks.shape[0] > 1:
            options["kinks"] = kinks[subset.cpu()]
    offsets = options.get("offsets")
    if offsets is not None:
        offsets = torch.as_tensor(offsets, dtype=torch.float64)
        if offsets.dim() == 2 and offsets.shape[0] == cov.shape[0] > 1:
            options["offsets"] = offsets[subset.cpu()]
    return expect(f, cov[subset], **options)


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
    import numpy as np

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
