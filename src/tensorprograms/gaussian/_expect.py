"""E[f(g)] and E[grad f(g)] for g ~ N(0, cov): split by rank, kinks on planes
through 0 or on affine planes (the Gaussian moved to where they meet)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ._rules import (
    _METHOD_ORDER,
    Estimate,
    _call,
    _factor,
    _Line,
    _loading,
    _monte_carlo,
    _quadrature,
)

Tensor = torch.Tensor


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
