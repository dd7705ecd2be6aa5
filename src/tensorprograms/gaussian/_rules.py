"""Integration rules: the Estimate result, covariance factors, Gauss rules split at
kink planes (line, polar, spherical), the refinement loop and Monte Carlo."""

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
