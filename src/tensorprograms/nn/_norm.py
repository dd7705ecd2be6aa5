"""Normalisation layers: layer norm over channels (a Nonlin+ with a Moment, TP3)."""

from __future__ import annotations

import torch

from ._kernel import _State, pair_shapes, self_pair_shapes
from ._layer import Layer
from ._sample import Function

__all__ = ["LayerNorm"]


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
