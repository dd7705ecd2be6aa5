"""Convolutions, pooling and flattening: linear maps of the spatial covariance.

Inputs are channels-last (NWC, NHWC). A convolution with a shared filter of size k
(prod of filter_shape) maps the covariance of its input, pair of positions by pair of
positions (neural-tangents' conventions, Novak et al. 2019, Garriga-Alonso et al.
2019):

    nngp'[i, j] = W_std^2 / k sum_o nngp[s i + o - p, s j + o - p] + b_std^2,

where SAME padding reads zeros outside the image (the sum is still divided by the full
k: padded positions contribute nothing, exactly as in the finite network whose fan-in
is C k), CIRCULAR padding (periodic images, the same output size as SAME) reads
positions modulo the image size, and ntk'[i, j] = W_std^2 / k sum_o ntk[...] +
nngp'[i, j]. A box filter is separable, so the sum runs one spatial dimension at a
time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._dense import affine_kernel_, check_parametrization, check_std
from ._kernel import _State
from ._layer import Layer, _BuildContext
from ._sample import Function, affine_params

__all__ = ["AvgPool", "Conv", "Flatten", "GlobalAvgPool"]


def _tuple(value, nd: int | None, name: str, layer: str) -> tuple[int, ...]:
    if isinstance(value, int):
        value = (value,) * (nd or 1)
    value = tuple(value)
    if not value or any(int(v) != v or v < 1 for v in value):
        raise ValueError(f"{layer}: {name} must be positive integers, got {value!r}")
    if nd is not None and len(value) != nd:
        raise ValueError(f"{layer}: {name} must have {nd} entries, got {value!r}")
    return tuple(int(v) for v in value)


_PADDINGS = ("SAME", "VALID", "CIRCULAR")


def _padding(padding: str, layer: str) -> str:
    if not isinstance(padding, str) or padding.upper() not in _PADDINGS:
        raise ValueError(
            f"{layer}: padding must be one of {_PADDINGS}, got {padding!r}"
        )
    return padding.upper()


def _geometry(n: int, k: int, s: int, padding: str, layer: str) -> tuple[int, int, int]:
    """(output size, padding before, padding after) along one spatial dimension;
    CIRCULAR pads like SAME, with the image's own positions instead of zeros."""
    if padding in ("SAME", "CIRCULAR"):
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        return out, total // 2, total - total // 2
    if n < k:
        raise ValueError(f"{layer}: VALID window {k} does not fit the input size {n}")
    return (n - k) // s + 1, 0, 0


def _window_sum(
    k: torch.Tensor, axes: tuple[int, ...], size: int, stride: int, geom
) -> torch.Tensor:
    """sum_o k[..., s i + o - p, ...] along `axes` jointly (same o on all), zeros
    outside the input (SAME padding), without materialising the padding.

    When some tap is read by every output (the centre of a stride-1 SAME window,
    every tap of a VALID one), the first pass writes that tap plus the next one
    into a fresh tensor, and no zero tensor is written. Always a fresh tensor.
    """
    out, lo, _ = geom
    n = k.shape[axes[0]]
    shape = list(k.shape)
    for a in axes:
        shape[a] = out

    def region(first, last, start=None):
        """Index of outputs [first, last] (or, given start, of their inputs)."""
        idx = [slice(None)] * k.ndim
        for a in axes:
            if start is None:
                idx[a] = slice(first, last + 1)
            else:
                idx[a] = slice(start, start + stride * (last - first) + 1, stride)
        return tuple(idx)

    taps = []  # (first output, last output, first input) of each tap
    for o in range(size):
        # Outputs i whose input position s i + o - lo lies inside [0, n).
        first = max(0, -(-(lo - o) // stride))
        last = min(out - 1, (n - 1 + lo - o) // stride)
        if last >= first:
            taps.append((first, last, stride * first + o - lo))
    full = [t for t in taps if t[0] == 0 and t[1] == out - 1]
    if not full:
        acc = k.new_zeros(shape)
        for first, last, start in taps:
            acc[region(first, last)].add_(k[region(first, last, start)])
        return acc
    centre = k[region(*full[0])]  # indexed by output position
    rest = [t for t in taps if t is not full[0]]
    if not rest:
        return centre.clone(memory_format=torch.contiguous_format)
    acc = k.new_empty(shape)
    first, last, start = rest[0]
    inner = region(first, last)
    torch.add(centre[inner], k[region(first, last, start)], out=acc[inner])
    # Outputs outside [first, last] on some axis: the centre tap alone so far.
    for j, a in enumerate(axes):
        for lo_, hi_ in ((0, first), (last + 1, out)):
            if hi_ > lo_:
                idx = list(inner)
                idx[a] = slice(lo_, hi_)
                for b in axes[j + 1 :]:
                    idx[b] = slice(None)
                acc[tuple(idx)] = centre[tuple(idx)]
    for first, last, start in rest[1:]:
        acc[region(first, last)].add_(k[region(first, last, start)])
    return acc


def _wrap(k: torch.Tensor, axes_per_dim, geoms) -> torch.Tensor:
    """CIRCULAR padding: along each axis of dimension t (``axes_per_dim[t]``) the
    padded position p, -lo <= p < n + hi, reads position p mod n."""
    for axes, (_, lo, hi) in zip(axes_per_dim, geoms):
        for a in axes:
            n = k.shape[a]
            k = k.index_select(a, torch.arange(-lo, n + hi, device=k.device) % n)
    return k


def _periodic(padding: str, geoms):
    """(wrap, geoms): for CIRCULAR padding a function that pads a tensor
    periodically, given its axes per spatial dimension, and the VALID geometry of
    the padded tensor; otherwise no padding and the geometry unchanged."""
    if padding != "CIRCULAR":
        return (lambda k, axes: k), geoms
    return (lambda k, axes: _wrap(k, axes, geoms)), [(g[0], 0, 0) for g in geoms]


def _spatial_axes(batch_ndim: int, nd: int, full: bool):
    """Axes of each spatial dimension in a (batch..., *S, *S) or (batch..., *S)
    covariance."""
    if full:
        return [(batch_ndim + t, batch_ndim + nd + t) for t in range(nd)]
    return [(batch_ndim + t,) for t in range(nd)]


def _window_mean(k, axes, size, stride, geom) -> torch.Tensor:
    """`_window_sum` divided by the window size (padded taps count as zeros)."""
    return _window_sum(k, axes, size, stride, geom).div_(size)


def _conv_sum(k, batch_ndim, nd, full, filt, strides, geoms):
    """Shared-filter box sum of a covariance (B..., *S, *S) or (B..., *S); divided
    by prod(filt) it is the box average. Always a fresh tensor."""
    for t in range(nd):
        axes = (batch_ndim + t, batch_ndim + nd + t) if full else (batch_ndim + t,)
        k = _window_sum(k, axes, filt[t], strides[t], geoms[t])
    return k


def _pool_map(k, batch_ndim, nd, full, window, strides, geoms, edges=False):
    """Average pooling of each side independently (full mode); with `edges`, each
    output is divided by its number of taps inside the input instead of the window
    size (neural-tangents' normalize_edges)."""
    for t in range(nd):
        for a in (batch_ndim + t, batch_ndim + nd + t):
            if not edges:
                k = _window_mean(k, (a,), window[t], strides[t], geoms[t])
                continue
            counts = _tap_counts(k.shape[a], window[t], strides[t], geoms[t])
            shape = [1] * k.ndim
            shape[a] = -1
            k = _window_sum(k, (a,), window[t], strides[t], geoms[t])
            k = k.div_(k.new_tensor(counts).reshape(shape))
    return k


def _tap_counts(n: int, size: int, stride: int, geom) -> list[int]:
    """For each output along one axis, how many of its taps lie inside [0, n)."""
    out, lo, _ = geom
    return [sum(0 <= stride * i + o - lo < n for o in range(size)) for i in range(out)]


def _check_spatial(in_shape, nd, layer):
    if len(in_shape) != nd + 1:
        raise ValueError(
            f"{layer}: expected inputs with {nd} spatial axes and channels last, "
            f"got per-example shape {tuple(in_shape)}"
        )


class Conv(Layer):
    """Convolution with a shared filter, 1D or 2D (or 3D), channels last.

    NTK parametrization: ``h = (W_std / sqrt(C k)) w * x + b_std b``, w, b ~ N(0, 1),
    k = prod(filter_shape); standard: ``w ~ N(0, W_std^2 / (C k))``. Limit: see the
    module docstring; the standard parametrization's NTK adds ``C k`` times the
    unscaled window average of nngp (+ 1 with a bias), as neural-tangents does.

    Args:
        out_chan: output channels (the readout's when it is the last layer).
        filter_shape: filter size per spatial axis, e.g. (3, 3).
        strides: stride per spatial axis (None: 1).
        padding: "VALID" (neural-tangents' default), "SAME" (zeros, output size
            ceil(n / stride), extra padding after) or "CIRCULAR" (periodic: the
            same padding filled with the image's positions modulo its size).
        W_std, b_std, parametrization: as in `Dense`.

    Example:
        >>> import torch
        >>> from tensorprograms import nn
        >>> x = torch.ones(1, 3, 1, dtype=torch.float64)  # (N, W, C)
        >>> k = nn.Conv(1, (3,), padding="SAME").kernel(x)
        >>> k.nngp[0, 0].tolist()  # edges see 2 of 3 taps: (1/3) * 2
        [[0.6666666666666666, 0.6666666666666666, 0.3333333333333333], \
[0.6666666666666666, 1.0, 0.6666666666666666], \
[0.3333333333333333, 0.6666666666666666, 0.6666666666666666]]
    """

    _variance_only_ok = True

    parametric = True

    def __init__(
        self,
        out_chan: int,
        filter_shape,
        strides=None,
        padding: str = "VALID",
        W_std: float = 1.0,
        b_std: float | None = None,
        parametrization: str = "ntk",
    ):
        if isinstance(out_chan, bool) or int(out_chan) != out_chan or out_chan < 1:
            raise ValueError(
                f"Conv: out_chan must be a positive integer, got {out_chan!r}"
            )
        self.out_chan = int(out_chan)
        self.filter_shape = _tuple(filter_shape, None, "filter_shape", "Conv")
        nd = len(self.filter_shape)
        self.strides = (
            (1,) * nd if strides is None else _tuple(strides, nd, "strides", "Conv")
        )
        self.padding = _padding(padding, "Conv")
        self.W_std = check_std(W_std, "W_std", "Conv")
        self.b_std = check_std(b_std, "b_std", "Conv", allow_none=True)
        self.parametrization = check_parametrization(parametrization, "Conv")

    def _geoms(self, spatial):
        return [
            _geometry(n, k, s, self.padding, "Conv")
            for n, k, s in zip(spatial, self.filter_shape, self.strides)
        ]

    def out_shape(self, in_shape):
        _check_spatial(in_shape, len(self.filter_shape), "Conv")
        return (*(g[0] for g in self._geoms(in_shape[:-1])), self.out_chan)

    def _step(self, s: _State, out_full: bool) -> _State:
        nd = len(s.spatial)
        geoms = self._geoms(s.spatial)
        wrap, valid = _periodic(self.padding, geoms)
        args = (nd, s.full, self.filter_shape, self.strides, valid)
        size = math.prod(self.filter_shape)

        def window_sum(k, batch_ndim):
            k = wrap(k, _spatial_axes(batch_ndim, nd, s.full))
            return _conv_sum(k, batch_ndim, *args)

        nngp, ntk = affine_kernel_(
            window_sum(s.nngp, 2),
            window_sum(s.ntk, 2),
            self.W_std,
            self.b_std,
            self.parametrization,
            s.channels * size,
            1.0 / size,
        )
        w2 = self.W_std**2 / size
        b2 = 0.0 if self.b_std is None else self.b_std**2
        cov1, cov2 = s.map_covs(lambda c, b: window_sum(c, b).mul_(w2).add_(b2))
        out = s.replace(
            nngp=nngp,
            ntk=ntk,
            cov1=cov1,
            cov2=cov2,
            spatial=tuple(g[0] for g in geoms),
            channels=self.out_chan,
            gaussian=True,
            mixed=False,
        )
        return out if out_full else out.to_diagonal()

    # `Serial` may ask `_from_input` to skip the self covariances of a cross tile
    # whose variances it replays from the diagonal tiles.
    _skips_self_covs = True

    def _from_input(self, x1, x2, in_full, out_full, self_covs: bool = True):
        """First layer: nngp = W_std^2 <P_i, P'_j> / (C k) + b_std^2 from the input
        patches P (zero padded), one matrix product instead of a spatial sum.

        self_covs=False leaves cov1 and cov2 None for a cross tile (x2 given): the
        caller substitutes cached variances."""
        spatial = tuple(x1.shape[1:-1])
        geoms = self._geoms(spatial)
        out_spatial = tuple(g[0] for g in geoms)
        fan_in = x1.shape[-1] * math.prod(self.filter_shape)
        nd = len(spatial)

        wrap, valid = _periodic(self.padding, geoms)

        def patches(x):  # (B, *S_out, C k)
            x = wrap(x, [(1 + t,) for t in range(nd)])
            pad = [0, 0] + [p for g in reversed(valid) for p in g[1:]]
            x = F.pad(x, pad)
            for t in range(nd):
                x = x.unfold(1 + t, self.filter_shape[t], self.strides[t])
            return x.reshape(x.shape[0], -1, fan_in)

        pa = patches(x1)
        pb = pa if x2 is None else patches(x2)
        b1, b2 = pa.shape[0], pb.shape[0]
        eq = "aic,bjc->abij" if out_full else "aic,bic->abi"
        shape = (*out_spatial, *out_spatial) if out_full else out_spatial
        product = torch.einsum(eq, pa, pb).reshape(b1, b2, *shape)
        # The input's ntk is zero: affine_kernel in place on the fresh product
        # (standard parametrization: the product is the NTK's fan_in * nngp).
        w2 = self.W_std**2 / fan_in
        b2_ = 0.0 if self.b_std is None else self.b_std**2
        if self.parametrization == "standard":
            nngp = product * w2
            ntk = product.add_(1.0) if self.b_std is not None else product
        else:
            nngp = product.mul_(w2)
        if b2_:
            nngp.add_(b2_)
        if self.parametrization == "ntk":
            ntk = nngp.clone()
        cov1 = cov2 = None
        if x2 is not None and self_covs:
            eq = "aic,ajc->aij" if out_full else "aic,aic->ai"
            shape = (*out_spatial, *out_spatial) if out_full else out_spatial
            cov1, cov2 = (
                self.W_std**2
                * torch.einsum(eq, p, p).reshape(p.shape[0], *shape)
                / fan_in
                + b2_
                for p in (pa, pb)
            )
        return _State(
            nngp=nngp,
            ntk=ntk,
            cov1=cov1,
            cov2=cov2,
            spatial=out_spatial,
            full=out_full,
            channels=self.out_chan,
            gaussian=True,
            mixed=False,
        )

    def _build(self, in_shape, ctx: _BuildContext):
        n_out = ctx.size(self, self.out_chan)
        module = _ConvModule(self, ctx, in_shape, n_out)
        return module, (*(g[0] for g in self._geoms(in_shape[:-1])), n_out)


class _ConvModule(torch.nn.Module):
    def __init__(self, layer: Conv, ctx, in_shape, n_out):
        super().__init__()
        c = in_shape[-1]
        self.nd = len(layer.filter_shape)
        self.strides = layer.strides
        self.wrap, geoms = _periodic(layer.padding, layer._geoms(in_shape[:-1]))
        self.pad = [p for g in reversed(geoms) for p in g[1:]]
        self.w_mult, self.b_mult = affine_params(
            self,
            ctx,
            (n_out, c, *layer.filter_shape),
            c * math.prod(layer.filter_shape),
            n_out,
            layer.W_std,
            layer.b_std,
            layer.parametrization,
        )

    def forward(self, x):
        x = self.wrap(x, [(1 + t,) for t in range(self.nd)])
        h = F.pad(x.movedim(-1, 1), self.pad)  # (N, C, *S)
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.nd - 1]
        h = conv(h, self.w_mult * self.weight, stride=self.strides).movedim(1, -1)
        if self.bias is not None:
            h = h + self.b_mult * self.bias
        return h


class AvgPool(Layer):
    """Average pooling over windows (neural-tangents' AvgPool).

    Each output averages `window_shape` input positions, divided by the full window
    size also where SAME padding adds zeros (``normalize_edges=True``: by the number
    of positions inside the input). The covariance is pooled on each side
    independently: nngp'[i, j] = (1/k^2) sum_{o, o'} nngp[s i + o, s j + o'].

    Args:
        window_shape: window per spatial axis.
        strides: stride per spatial axis (None: 1, as neural-tangents).
        padding: "VALID", "SAME" or "CIRCULAR" (periodic, as in `Conv`).
        normalize_edges: divide SAME windows at the edges by the positions they
            cover (False, neural-tangents' default: by the window size).

    Example:
        >>> import torch
        >>> from tensorprograms import nn
        >>> x = torch.tensor([[[1.0], [-1.0]]], dtype=torch.float64)  # (1, 2, 1)
        >>> nn.AvgPool((2,)).kernel(x).nngp.flatten().tolist()  # mean of +1, -1
        [0.0]
    """

    _variance_only_ok = True

    def __init__(
        self,
        window_shape,
        strides=None,
        padding: str = "VALID",
        normalize_edges: bool = False,
    ):
        self.window_shape = _tuple(window_shape, None, "window_shape", "AvgPool")
        nd = len(self.window_shape)
        self.strides = (
            (1,) * nd if strides is None else _tuple(strides, nd, "strides", "AvgPool")
        )
        self.padding = _padding(padding, "AvgPool")
        if not isinstance(normalize_edges, bool):
            raise TypeError(
                f"AvgPool: normalize_edges must be True or False, got "
                f"{normalize_edges!r}"
            )
        self.normalize_edges = normalize_edges

    def _edges(self) -> bool:
        """Whether outputs are divided by their taps inside the input."""
        return self.normalize_edges and self.padding == "SAME"

    def _geoms(self, spatial):
        return [
            _geometry(n, k, s, self.padding, "AvgPool")
            for n, k, s in zip(spatial, self.window_shape, self.strides)
        ]

    def out_shape(self, in_shape):
        _check_spatial(in_shape, len(self.window_shape), "AvgPool")
        return (*(g[0] for g in self._geoms(in_shape[:-1])), in_shape[-1])

    def _in_full(self, out_full):
        return True

    def _step(self, s: _State, out_full: bool) -> _State:
        nd = len(s.spatial)
        wrap, geoms = _periodic(self.padding, self._geoms(s.spatial))
        args = (nd, True, self.window_shape, self.strides, geoms, self._edges())

        def pool(k, batch_ndim):
            k = wrap(k, _spatial_axes(batch_ndim, nd, True))
            return _pool_map(k, batch_ndim, *args)

        cov1, cov2 = s.map_covs(pool)
        out = s.replace(
            nngp=pool(s.nngp, 2),
            ntk=pool(s.ntk, 2),
            cov1=cov1,
            cov2=cov2,
            spatial=tuple(g[0] for g in geoms),
        )
        return out if out_full else out.to_diagonal()

    def _build(self, in_shape, ctx):
        wrap, geoms = _periodic(self.padding, self._geoms(in_shape[:-1]))
        pad = [p for g in reversed(geoms) for p in g[1:]]
        nd = len(self.window_shape)
        pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[nd - 1]
        window, strides = self.window_shape, self.strides
        scale = None
        if self._edges():  # window size / taps inside the input, per output
            ones = F.pad(torch.ones(1, 1, *in_shape[:-1], dtype=ctx.dtype), pad)
            scale = 1.0 / pool(ones, window, strides)[0, 0]

        def fn(x):
            x = wrap(x, [(1 + t,) for t in range(nd)])
            h = pool(F.pad(x.movedim(-1, 1), pad), window, strides)
            if scale is not None:
                h = h * scale.to(h.device, h.dtype)
            return h.movedim(1, -1)

        shape = (*(g[0] for g in geoms), in_shape[-1])
        return Function(fn, f"AvgPool{window}"), shape


class GlobalAvgPool(Layer):
    """Mean over all spatial positions: nngp' = mean_{i, j} nngp[i, j].

    Example:
        >>> import torch
        >>> from tensorprograms import nn
        >>> x = torch.tensor([[[1.0], [3.0]]], dtype=torch.float64)
        >>> float(nn.GlobalAvgPool().kernel(x).nngp)  # ((1 + 3) / 2)^2
        4.0
    """

    _variance_only_ok = True

    def out_shape(self, in_shape):
        if len(in_shape) < 2:
            raise ValueError(
                f"GlobalAvgPool: inputs need spatial axes, got per-example shape "
                f"{tuple(in_shape)}"
            )
        return (in_shape[-1],)

    def _in_full(self, out_full):
        return True

    def _step(self, s: _State, out_full: bool) -> _State:
        nd = len(s.spatial)

        def pool(k, batch_ndim):
            if not s.full:
                raise RuntimeError("GlobalAvgPool received a diagonal state")
            return k.mean(dim=tuple(range(batch_ndim, batch_ndim + 2 * nd)))

        cov1, cov2 = s.map_covs(pool)
        return s.replace(
            nngp=pool(s.nngp, 2),
            ntk=pool(s.ntk, 2),
            cov1=cov1,
            cov2=cov2,
            spatial=(),
            full=False,
        )

    def _after_activation(self, act: Layer, s: _State) -> _State:
        """`act` then this layer in one step: the activation's dual kernels are
        averaged as they are formed (see `_Activation._step`'s spatial_mean)."""
        s = act._step(s, True, spatial_mean=True)
        nd = len(s.spatial)
        cov1, cov2 = s.map_covs(lambda k, b: k.mean(dim=tuple(range(b, b + 2 * nd))))
        return s.replace(cov1=cov1, cov2=cov2, spatial=(), full=False)

    def _build(self, in_shape, ctx):
        axes = tuple(range(1, len(in_shape)))
        return Function(lambda x: x.mean(dim=axes), "GlobalAvgPool"), (in_shape[-1],)

    def __repr__(self):
        return "GlobalAvgPool()"


class Flatten(Layer):
    """Flatten (N, *S, C) to (N, prod(S) C); the per-unit kernel is the mean of the
    spatial diagonal, nngp' = mean_i nngp[i, i] (only the diagonal is needed, so the
    layers before it run in diagonal mode).

    Example:
        >>> import torch
        >>> from tensorprograms import nn
        >>> x = torch.tensor([[[1.0], [3.0]]], dtype=torch.float64)
        >>> float(nn.Flatten().kernel(x).nngp)  # (1 + 9) / 2
        5.0
    """

    _variance_only_ok = True

    def out_shape(self, in_shape):
        return (math.prod(in_shape),)

    def _in_full(self, out_full):
        return False

    def _step(self, s: _State, out_full: bool) -> _State:
        s = s.to_diagonal()
        nd = len(s.spatial)

        def flat(k, batch_ndim):
            return k.mean(dim=tuple(range(batch_ndim, batch_ndim + nd))) if nd else k

        cov1, cov2 = s.map_covs(flat)
        return s.replace(
            nngp=flat(s.nngp, 2),
            ntk=flat(s.ntk, 2),
            cov1=cov1,
            cov2=cov2,
            spatial=(),
            channels=s.channels * math.prod(s.spatial),
        )

    def _build(self, in_shape, ctx):
        return Function(lambda x: x.reshape(x.shape[0], -1), "Flatten"), (
            math.prod(in_shape),
        )

    def __repr__(self):
        return "Flatten()"
