"""Normalisation layers: layer norm over channels (a Nonlin+ with a Moment, TP3)."""

from __future__ import annotations

import torch

from ._kernel import _State, mixed_message, pair_shapes, self_pair_shapes
from ._layer import Layer
from ._sample import Function

__all__ = ["BatchNorm", "LayerNorm"]


class LayerNorm(Layer):
    """Layer normalisation over the channel axis, without affine parameters.

    Finite: ``y = (x - mean_c x) / sqrt(var_c x + eps)`` at every position. In the
    limit the mean over channels of a Gaussian layer vanishes and the variance is the
    Moment ||x||^2 / n -> q (TP3's Nonlin+), so each kernel is divided by the square
    roots of the two variances (neural-tangents' LayerNorm):

        nngp'[i, j] = nngp[i, j] / sqrt((q1_i + eps)(q2_j + eps)),  ntk' likewise.

    The gradient through the normalising Moment vanishes like 1/n (verified against
    finite networks in the tests). The input must have mean zero over channels in
    the limit (output of Dense, Conv or attention, possibly pooled): after a
    nonlinearity with nonzero mean the centring changes the kernel and this layer
    raises.

    Args:
        axis: -1 (channels); other axes are not supported.
        eps: added to the variance, as in the finite layer.

    Example:
        >>> import torch
        >>> from tensorprograms import nn
        >>> x = torch.tensor([[3.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
        >>> k = nn.serial(nn.Dense(4), nn.LayerNorm()).kernel(x)
        >>> [round(v, 9) for v in k.nngp.flatten().tolist()]  # the correlations
        [1.0, 0.707106781, 0.707106781, 1.0]
    """

    _variance_only_ok = True

    def __init__(self, axis: int = -1, eps: float = 1e-12):
        if axis != -1:
            raise ValueError(
                "LayerNorm: only normalisation over channels (axis=-1) has this "
                f"limit, got axis={axis!r}"
            )
        self.axis, self.eps = -1, float(eps)

    def out_shape(self, in_shape):
        if not in_shape:
            raise ValueError("LayerNorm: inputs need a channel axis")
        return tuple(in_shape)

    def _step(self, s: _State, out_full: bool) -> _State:
        if not s.gaussian:
            raise ValueError(
                "LayerNorm: its input has a nonzero mean over channels in the limit "
                "(it follows a nonlinearity or the network input); put LayerNorm after "
                "Dense/Conv/attention"
            )
        nd = len(s.spatial)
        q1, q2 = s.variances()
        qa, qb = pair_shapes(q1 + self.eps, q2 + self.eps, nd, s.full)
        norm = (qa * qb).sqrt()

        def self_norm(cov, _):
            q = _variances(cov, nd, s.full) + self.eps
            a, b = self_pair_shapes(q, nd, s.full)
            return cov / (a * b).sqrt()

        cov1, cov2 = s.map_covs(self_norm)
        return s.replace(nngp=s.nngp / norm, ntk=s.ntk / norm, cov1=cov1, cov2=cov2)

    def _build(self, in_shape, ctx):
        eps = self.eps

        def fn(x):
            centred = x - x.mean(dim=-1, keepdim=True)
            return centred / torch.sqrt(centred.pow(2).mean(dim=-1, keepdim=True) + eps)

        return Function(fn, "LayerNorm"), tuple(in_shape)

    def __repr__(self):
        return f"LayerNorm(eps={self.eps})"


def _variances(cov: torch.Tensor, nd: int, full: bool) -> torch.Tensor:
    if not (full and nd):
        return cov
    b, spatial = cov.shape[0], cov.shape[1 : 1 + nd]
    p = cov[0, ...].numel() ** 0.5
    flat = cov.reshape(b, int(round(p)), int(round(p)))
    return torch.diagonal(flat, dim1=1, dim2=2).reshape(b, *spatial)


class BatchNorm(Layer):
    """Batch normalisation over the inputs of one batch, per unit, without affine.

    Finite: ``y_a = (x_a - mean_b x_b) / sqrt(var_b x_b + eps)`` for every unit, the
    statistics taken over the B inputs of the batch. In the limit every unit's batch
    vector z ~ N(0, K) (K the B x B kernel of the Gaussian input), and with
    u = G z, G = I - 1 1^T / B, Sigma = G K G, c = B eps (TP1's batch-norm example;
    Yang et al. 2019, "A mean field theory of batch normalization"):

        nngp' = B E[u u^T / (|u|^2 + c)]
              = B int_0^inf det(I + 2 s Sigma)^(-1/2) e^(-s c) Sigma_s ds,

    with Sigma_s = Sigma (I + 2 s Sigma)^(-1),

    and with J = dy/dz = sqrt(B) (|u|^2 + c)^(-1/2) (G - u u^T / (|u|^2 + c)),
    ntk' = E[J ntk J^T], expanded into E[(|u|^2 + c)^-1], E[u u^T (|u|^2 + c)^-2] and
    E[u u^T ntk u u^T (|u|^2 + c)^-3], each a one-dimensional integral of the same
    kind (1/a^m = int s^(m-1) e^(-s a) ds / (m-1)!) with Gaussian moments under the
    tilted covariance Sigma_s. The integrals run in the eigenbasis
    of Sigma by the trapezoid rule in log s (exponentially convergent for these
    analytic integrands). With eps = 0 and a batch spanning at most 2 directions
    after centring, E[1 / |u|^2] diverges: the NTK has no limit and the layer raises.

    The kernel is a property of the whole batch: call ``kernel(x)`` (x2 None); the
    batch is never tiled. Inputs must be Gaussian (after Dense/Conv/attention) and
    flat (no spatial axes).

    Args:
        eps: added to the batch variance (torch's default 1e-5).

    Example:
        >>> import torch
        >>> from tensorprograms import nn
        >>> x = torch.eye(4, dtype=torch.float64)
        >>> k = nn.serial(nn.Dense(8), nn.BatchNorm(eps=0.0)).kernel(x)
        >>> [round(v, 9) for v in k.nngp[0].tolist()]  # the centred identity, x 4/3
        [1.0, -0.333333333, -0.333333333, -0.333333333]
    """

    def __init__(self, eps: float = 1e-5):
        self.eps = float(eps)
        if not self.eps >= 0:
            raise ValueError(f"BatchNorm: eps must be >= 0, got {eps!r}")

    def out_shape(self, in_shape):
        if len(in_shape) != 1:
            raise ValueError(
                f"BatchNorm: only flat inputs (N, C) are supported, got per-example "
                f"shape {tuple(in_shape)}"
            )
        return tuple(in_shape)

    def _whole_batch(self) -> bool:
        return True

    def _step(self, s: _State, out_full: bool) -> _State:
        if not s.symmetric:
            raise ValueError("BatchNorm: the kernel is defined over one batch x2=None")
        if not s.gaussian:
            raise ValueError(
                "BatchNorm: its input units are not Gaussian in the limit; put it "
                "after Dense/Conv/attention"
            )
        if s.mixed:
            raise ValueError(mixed_message("BatchNorm"))
        nngp, ntk = _batchnorm_kernel(s.nngp, s.ntk, self.eps)
        return s.replace(nngp=nngp, ntk=ntk, gaussian=False)

    def _build(self, in_shape, ctx):
        eps = self.eps

        def fn(x):
            centred = x - x.mean(dim=0, keepdim=True)
            return centred / torch.sqrt(centred.pow(2).mean(dim=0, keepdim=True) + eps)

        return Function(fn, "BatchNorm"), tuple(in_shape)

    def __repr__(self):
        return f"BatchNorm(eps={self.eps})"


def _batchnorm_kernel(k: torch.Tensor, ntk: torch.Tensor, eps: float):
    """(nngp', ntk') of batch norm for a batch kernel k and NTK ntk, both (B, B)."""
    b = k.shape[0]
    if b < 2:
        raise ValueError(f"BatchNorm: needs a batch of at least 2 inputs, got {b}")
    ones = torch.full((b, b), 1.0 / b, dtype=k.dtype, device=k.device)
    g = torch.eye(b, dtype=k.dtype, device=k.device) - ones
    sigma = g @ k @ g
    sigma = (sigma + sigma.T) / 2
    # The all-ones direction (killed by G) gets eigenvalue -1 to keep it separate.
    lam, vec = torch.linalg.eigh(sigma - ones)
    gdiag = torch.ones_like(lam)
    gdiag[0] = 0.0
    lam = lam.clone()
    lam[0] = 0.0
    scale = float(lam.max()) if b > 1 else 1.0
    if scale <= 0:
        raise ValueError("BatchNorm: all inputs of the batch have the same kernel row")
    lam = lam.clamp_min(0) / scale  # work with Sigma / scale; undo below
    c = b * eps / scale
    rank = int((lam > 1e-12).sum())
    if eps == 0 and rank <= 2:
        raise ValueError(
            f"BatchNorm: with eps=0 and a centred batch of rank {rank} <= 2, "
            "E[1/|u|^2] diverges and the NTK has no limit; use eps > 0 or a larger "
            "batch"
        )

    t = torch.arange(-40.0, 80.0, 0.05, dtype=k.dtype, device=k.device)
    s = torch.exp(t)
    w = 0.05 * s  # ds = s dt
    logd = -0.5 * torch.log1p(2 * s[:, None] * lam[None, :]).sum(1) - s * c
    wd = w * torch.exp(logd)  # (T,)
    sig = lam[None, :] / (1 + 2 * s[:, None] * lam[None, :])  # (T, B)
    nngp_eig = b * (wd[:, None] * sig).sum(0)
    f0 = wd.sum() / scale
    f1 = (wd[:, None] * s[:, None] * sig).sum(0) / scale
    h = torch.einsum("t,tk,tm->km", wd * s * s / 2, sig, sig) / scale

    nhat = vec.T @ ntk @ vec
    gg = gdiag[:, None] * gdiag[None, :]
    out = f0 * gg * nhat
    out = out - (f1[:, None] * gdiag[None, :] + gdiag[:, None] * f1[None, :]) * nhat
    out = out + torch.diag(h @ torch.diagonal(nhat)) + 2 * h * nhat
    ntk_new = b * (vec @ out @ vec.T)
    nngp_new = vec @ torch.diag(nngp_eig) @ vec.T
    return (nngp_new + nngp_new.T) / 2, (ntk_new + ntk_new.T) / 2
