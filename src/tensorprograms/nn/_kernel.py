"""Kernel state carried through the layers of an infinite-width network.

Two objects live here. `Kernel` is the public result: the NNGP and NTK of the network
outputs, per output unit. `_State` is what a layer receives and returns while the
kernel is computed on one tile of pairs of inputs: the cross covariances of the
current layer's units between the inputs of the tile, their NTK, and the self
covariances of each side (needed by nonlinearities, which read variances).

Spatial layout (inputs are channels-last, e.g. NHWC): for a layer with spatial shape S
a tile of B1 x B2 pairs holds

- full mode: ``nngp[a, b, *i, *j] = E[h_i(x_a) h_j(x_b)]``, shape (B1, B2, *S, *S);
  ``cov1[a, *i, *j]`` of shape (B1, *S, *S);
- diagonal mode: only ``i == j``, shape (B1, B2, *S) and (B1, *S).

Diagonal mode suffices when every later layer keeps spatial positions apart (stride-1
or strided convolutions, nonlinearities, Dense per position) up to a Flatten; pooling,
global pooling and attention mix positions and need the full mode. Without spatial
axes (an MLP) both modes coincide: nngp (B1, B2), cov1 (B1,).
"""

from __future__ import annotations

import dataclasses
import math

import torch

__all__ = ["Kernel"]


def mixed_message(layer: str) -> str:
    """Why a nonlinear per-unit layer refuses the output of `parallel`."""
    return (
        f"{layer}: its input concatenates parallel branches with different "
        "kernels, and a nonlinearity of the mean kernel is not the mean over the "
        "branches; apply it directly after parallel (it is then applied within "
        "each branch) or put a Dense/Conv in between"
    )


@dataclasses.dataclass(frozen=True)
class Kernel:
    """Infinite-width NNGP and NTK of a network between two batches of inputs.

    ``nngp[a, b] = lim E[f(x1_a) f(x2_b)]`` and ``ntk[a, b] = lim <df(x1_a)/dtheta,
    df(x2_b)/dtheta>`` for one output unit f (neural-tangents' convention, Jacot et
    al. 2018; TP1 section 3 and TP2 for the limit theorems).

    Attributes:
        nngp: float64 tensor of shape (N1, N2), or (N1, N2, S_1, S_1, ..., S_d,
            S_d) when the network output keeps spatial axes (S_1, ..., S_d): the
            two positions of each axis side by side, as in neural-tangents.
        ntk: float64 tensor of the same shape.

    Example:
        >>> import torch
        >>> k = Kernel(nngp=torch.eye(2, dtype=torch.float64),
        ...            ntk=2 * torch.eye(2, dtype=torch.float64))
        >>> k.ntk.diagonal().tolist()
        [2.0, 2.0]
    """

    nngp: torch.Tensor
    ntk: torch.Tensor


@dataclasses.dataclass(frozen=True)
class _State:
    """Kernel state of one tile of input pairs at one layer (see module docstring).

    Attributes:
        nngp: cross covariance, (B1, B2, *S, *S) in full mode, (B1, B2, *S) else.
        ntk: cross NTK, same shape as nngp.
        cov1: self covariance of the first block, (B1, *S, *S) or (B1, *S); None
            when both blocks are the same inputs (then it is nngp's diagonal).
        cov2: self covariance of the second block (None with cov1).
        spatial: spatial shape S of the layer.
        full: full (True) or diagonal (False) spatial mode; False when S is empty.
        channels: declared channel count of the layer (the width a finite network of
            the same declaration has; the standard parametrization's NTK needs it).
        gaussian: True when the units are jointly Gaussian with mean zero and
            independent of every earlier layer's units in the limit (outputs of a
            fresh weight matrix, and linear maps or normalisations of them); False
            for the inputs themselves and after nonlinearities.
        variance_only: cov1 and cov2 hold only the variances (B, *S), read from the
            diagonal tiles of the same kernel (cross tiles of K(x, x) skip the self
            covariances, which those tiles already computed).
        mixed: the units are not identically distributed: channels concatenated
            by `parallel` from branches with different kernels, nngp being their
            channel-weighted mean. Layers linear in the per-unit kernel (Dense,
            Conv, pooling, Flatten, attention, LayerNorm) are exact on it; a
            nonlinearity is not (E[phi phi'] of the mean kernel is not the mean of
            the branches' E[phi phi']), so those raise.
    """

    nngp: torch.Tensor
    ntk: torch.Tensor
    cov1: torch.Tensor | None
    cov2: torch.Tensor | None
    spatial: tuple[int, ...]
    full: bool
    channels: int
    gaussian: bool
    variance_only: bool = False
    mixed: bool = False

    def replace(self, **changes) -> _State:
        return dataclasses.replace(self, **changes)

    @property
    def symmetric(self) -> bool:
        """Both sides are the same inputs; self covariances are nngp's diagonal."""
        return self.cov1 is None

    def covs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Self covariances of both sides, (B, *S, *S) or (B, *S)."""
        if self.variance_only:
            raise RuntimeError("self covariances were replaced by cached variances")
        if self.cov1 is None:
            d = torch.diagonal(self.nngp, dim1=0, dim2=1).movedim(-1, 0)
            return d, d
        return self.cov1, self.cov2

    def map_covs(self, fn) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Apply ``fn(cov, batch_ndim)`` to cov1 and cov2; (None, None) if symmetric.

        Symmetric tiles read their self covariances off the diagonal of nngp, so the
        variances a nonlinearity sees equal the diagonal covariances bit for bit and
        correlations of an input with itself are exactly 1.
        """
        if self.cov1 is None:
            return None, None
        if self.variance_only:  # the caller substitutes cached values afterwards
            return self.cov1, self.cov2
        return fn(self.cov1, 1), fn(self.cov2, 1)

    def variances(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position variances q1 (B1, *S) and q2 (B2, *S)."""
        if self.variance_only:
            return self.cov1, self.cov2
        c1, c2 = self.covs()
        return _diag(c1, self.spatial, self.full), _diag(c2, self.spatial, self.full)

    def to_diagonal(self) -> _State:
        """The same state in diagonal mode (a no-op when already diagonal)."""
        if not self.full:
            return self
        nd = len(self.spatial)
        cov1, cov2 = self.map_covs(lambda c, _: _diag_pairs(c, nd, 1))
        return self.replace(
            nngp=_diag_pairs(self.nngp, nd, 2),
            ntk=_diag_pairs(self.ntk, nd, 2),
            cov1=cov1,
            cov2=cov2,
            full=False,
        )


def _diag_pairs(k: torch.Tensor, nd: int, batch_ndim: int) -> torch.Tensor:
    """Take ``k[..., *i, *i]`` from a (batch..., *S, *S) tensor: (batch..., *S)."""
    batch = k.shape[:batch_ndim]
    spatial = k.shape[batch_ndim : batch_ndim + nd]
    size = math.prod(spatial)
    flat = k.reshape(*batch, size, size)
    return torch.diagonal(flat, dim1=-2, dim2=-1).reshape(*batch, *spatial)


def _diag(cov: torch.Tensor, spatial: tuple[int, ...], full: bool) -> torch.Tensor:
    """Variances (B, *S) from a self covariance in either mode."""
    if not full or not spatial:
        return cov
    return _diag_pairs(cov, len(spatial), 1)


def pair_shapes(
    q1: torch.Tensor, q2: torch.Tensor, nd: int, full: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcast variances q1 (B1, *S), q2 (B2, *S) against a cross nngp tile.

    Returns views of shapes (B1, 1, *S, *1) and (1, B2, *1, *S) in full mode, or
    (B1, 1, *S) and (1, B2, *S) in diagonal mode.
    """
    if full and nd:
        ones = (1,) * nd
        a = q1.reshape(q1.shape[0], 1, *q1.shape[1:], *ones)
        b = q2.reshape(1, q2.shape[0], *ones, *q2.shape[1:])
        return a, b
    return q1.unsqueeze(1), q2.unsqueeze(0)


def self_pair_shapes(
    q: torch.Tensor, nd: int, full: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcast variances q (B, *S) against a self covariance (B, *S, *S)."""
    if full and nd:
        ones = (1,) * nd
        return (
            q.reshape(q.shape[0], *q.shape[1:], *ones),
            q.reshape(q.shape[0], *ones, *q.shape[1:]),
        )
    return q, q


def input_state(x1: torch.Tensor, x2: torch.Tensor | None, full: bool) -> _State:
    """Kernel of the inputs, ``x . x' / C`` per spatial pair (neural-tangents' input).

    Args:
        x1: (B1, *S, C) float64 inputs, channels last.
        x2: (B2, *S, C) or None for the same inputs as x1.
        full: whether to build the full spatial covariance.
    """
    spatial = tuple(x1.shape[1:-1])
    chans = x1.shape[-1]
    nd = len(spatial)
    full = full and nd > 0

    def cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if not nd:
            return a @ b.T / chans
        fa = a.reshape(a.shape[0], -1, chans)
        fb = b.reshape(b.shape[0], -1, chans)
        if full:
            k = torch.einsum("aic,bjc->abij", fa, fb)
            return k.reshape(a.shape[0], b.shape[0], *spatial, *spatial) / chans
        return (
            torch.einsum("aic,bic->abi", fa, fb).reshape(
                a.shape[0], b.shape[0], *spatial
            )
            / chans
        )

    def self_cov(a: torch.Tensor) -> torch.Tensor:
        if not nd:
            return (a * a).sum(-1) / chans
        fa = a.reshape(a.shape[0], -1, chans)
        if full:
            k = torch.einsum("aic,ajc->aij", fa, fa)
            return k.reshape(a.shape[0], *spatial, *spatial) / chans
        return (fa * fa).sum(-1).reshape(a.shape[0], *spatial) / chans

    nngp = cross(x1, x1 if x2 is None else x2)
    return _State(
        nngp=nngp,
        ntk=torch.zeros_like(nngp),
        cov1=None if x2 is None else self_cov(x1),
        cov2=None if x2 is None else self_cov(x2),
        spatial=spatial,
        full=full,
        channels=chans,
        gaussian=False,
    )
