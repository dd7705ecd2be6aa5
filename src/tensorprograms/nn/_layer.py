"""The layer protocol: each layer states its finite network and its limit rule together.

A `Layer` answers four questions:

- `out_shape(in_shape)`: the per-example output shape (channels last), validating the
  input shape;
- `_in_full(out_full)`: whether its kernel rule needs the full spatial covariance of
  its input when the full (True) or diagonal (False) covariance of its output is asked;
- `_step(state, out_full)`: the infinite-width rule, one tile of input pairs;
- `_build(in_shape, ctx)`: a freshly sampled finite `torch.nn.Module` and its
  per-example output shape at the sampled width.

`Layer.kernel` tiles the pairs of inputs and runs `_step`; `Layer.sample` runs
`_build`. Both work on any layer, a whole `serial` network or a single `Dense`.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ._kernel import Kernel, _State, input_state

__all__ = ["Layer"]

# Entries of one nngp tile (float64): 2**20 entries are 8 MiB per tensor, so the
# dozen temporaries of a nonlinearity stay near 100 MiB, and tensors stay below the
# size that the C allocator always maps afresh (page faults on every temporary).
_TILE_ENTRIES = 2**20


@dataclasses.dataclass
class _BuildContext:
    """What sampling needs besides the input shape."""

    width: int | None
    generator: torch.Generator
    dtype: torch.dtype
    readout: object | None
    fixed: dict = dataclasses.field(default_factory=dict)

    def size(self, layer: Layer, declared: int) -> int:
        """Hidden widths become `width`; the readout layer keeps its declaration.

        `fixed` maps id(layer) to a forced size (a residual block's last layer must
        give back its input's channels).
        """
        if id(layer) in self.fixed:
            return self.fixed[id(layer)]
        if self.width is None or layer is self.readout:
            return declared
        return self.width

    def normal(self, *shape: int) -> torch.Tensor:
        """Standard normal draws from the context's generator, in its dtype."""
        z = torch.randn(*shape, generator=self.generator, dtype=torch.float64)
        return z.to(self.dtype)


class Layer:
    """Base class of all layers of `tensorprograms.nn`.

    Subclasses implement `out_shape`, `_step` and `_build`; `_in_full` defaults to
    "position-wise" (the mode asked of the output is the mode needed at the input).
    """

    parametric = False
    # True for layers whose rule reads only the input variances (not the full self
    # covariances): cross tiles may then reuse variances cached from diagonal tiles.
    _variance_only_ok = False
    # True for layers whose `_from_input` takes self_covs=False (skip cov1, cov2).
    _skips_self_covs = False

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError

    def _in_full(self, out_full: bool) -> bool:
        return out_full

    def _step(self, s: _State, out_full: bool) -> _State:
        raise NotImplementedError

    def _build(
        self, in_shape: tuple[int, ...], ctx: _BuildContext
    ) -> tuple[torch.nn.Module, tuple[int, ...]]:
        raise NotImplementedError

    def _from_input(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor | None,
        in_full: bool,
        out_full: bool,
        cache: tuple | None = None,
    ) -> _State:
        """`_step` applied to the inputs' kernel; layers may fuse the two.

        `cache`: (record,) to record per-layer output variances of a diagonal tile,
        or (vars1, vars2) to replay them in a cross tile (only `Serial` uses it).
        """
        return self._step(input_state(x1, x2, in_full), out_full)

    def _caches_variances(self) -> bool:
        """Whether `_from_input` can record and replay per-layer variances."""
        return False

    def _whole_batch(self) -> bool:
        """True when the kernel couples all inputs of a batch (batch norm)."""
        return False

    def _readout(self) -> Layer | None:
        """The last parametric layer (the one that keeps its size when sampled)."""
        return self if self.parametric else None

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"

    # -- infinite width -------------------------------------------------------------

    def kernel(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor | None = None,
        *,
        block_size: int | None = None,
    ) -> Kernel:
        """Infinite-width NNGP and NTK between two batches of inputs.

        The layer rules of TP1 (NNGP, section 3) and TP2 (NTK, gradient independence)
        applied to the covariance of the inputs ``x . x' / C``, in float64 on the
        inputs' device, tiled over pairs of inputs so that large batches fit in
        memory; with ``x2=None`` only the tiles on and above the diagonal are
        computed and mirrored.

        Args:
            x1: (N1, *S, C) inputs, channels last (NHWC for images).
            x2: (N2, *S, C) inputs, or None for K(x1, x1).
            block_size: inputs per tile side; chosen from a memory budget if None.

        Returns:
            `Kernel` with nngp and ntk of shape (N1, N2), or, when the output keeps
            spatial axes So = (S_1, ..., S_d), (N1, N2, S_1, S_1, ..., S_d, S_d):
            ``nngp[a, b, i1, j1, i2, j2]`` pairs position (i1, i2) of x1[a] with
            (j1, j2) of x2[b] (neural-tangents' layout).

        Example:
            >>> import torch
            >>> from tensorprograms import nn
            >>> x = torch.eye(3, dtype=torch.float64)
            >>> k = nn.Dense(1, W_std=2.0, b_std=0.5).kernel(x)
            >>> k.nngp[0].tolist()  # 4 * x.x'/3 + 0.25
            [1.5833333333333333, 0.25, 0.25]
        """
        x1 = _check_input(x1, "x1")
        in_shape = tuple(x1.shape[1:])
        if x2 is not None:
            x2 = _check_input(x2, "x2").to(x1.device)
            if tuple(x2.shape[1:]) != in_shape:
                raise ValueError(
                    f"x2 must have per-example shape {in_shape} like x1, got "
                    f"{tuple(x2.shape[1:])}"
                )
        out = self.out_shape(in_shape)
        out_spatial = tuple(out[:-1])
        out_full = bool(out_spatial)
        in_full = self._in_full(out_full) and len(in_shape) > 1

        n1 = x1.shape[0]
        n2 = n1 if x2 is None else x2.shape[0]
        if self._whole_batch():
            if x2 is not None:
                raise ValueError(
                    "the kernel couples the inputs of a batch (BatchNorm, or attention "
                    "with 1/sqrt(n) logits estimated by Monte Carlo): it is defined on "
                    "one batch, call kernel(x) with x2=None"
                )
            block_size = n1
        if block_size is None:
            per_pair = math.prod(in_shape[:-1]) ** (2 if in_full else 1)
            block_size = max(1, math.isqrt(max(1, _TILE_ENTRIES // per_pair)))
        b = int(block_size)
        if b < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size}")

        pair = out_spatial * 2 if out_full else ()
        nngp = torch.empty(n1, n2, *pair, dtype=torch.float64, device=x1.device)
        ntk = torch.empty_like(nngp)
        nd = len(out_spatial)
        swap = (1, 0, *range(2 + nd, 2 + 2 * nd), *range(2, 2 + nd))
        # K(x, x) with full spatial covariances: diagonal tiles first, keeping each
        # layer's output variances, so cross tiles need not redo self covariances.
        caching = x2 is None and in_full and n1 > b and self._caches_variances()
        records = {}
        # Recorded variances are copied into storage allocated once: small tensors
        # allocated tile after tile would split the large freed blocks of the C heap,
        # which then grows by a tile's worth of memory per diagonal tile.
        storage: dict = {}
        n_tiles = -(-n1 // b)
        for i in range(0, n1, b) if caching else ():
            record = []
            s = self._from_input(x1[i : i + b], None, in_full, out_full, (record,))
            records[i] = _keep(record, storage, i // b, n_tiles)
            _check_finite(s, self)
            s = _mirror(s, swap)
            nngp[i : i + b, i : i + b] = s.nngp
            ntk[i : i + b, i : i + b] = s.ntk
        for i in range(0, n1, b):
            xa = x1[i : i + b]
            for j in range(i if x2 is None else 0, n2, b):
                same = x2 is None and i == j
                if same and caching:
                    continue
                xb = None if same else (x1 if x2 is None else x2)[j : j + b]
                if caching:
                    cache = (records[i], records[j])
                    s = self._from_input(xa, xb, in_full, out_full, cache)
                else:
                    s = self._from_input(xa, xb, in_full, out_full)
                if out_full and not s.full:
                    raise RuntimeError(
                        "a layer returned a diagonal state; please report"
                    )
                _check_finite(s, self)
                if same:
                    s = _mirror(s, swap)
                nngp[i : i + b, j : j + b] = s.nngp
                ntk[i : i + b, j : j + b] = s.ntk
                if x2 is None and not same:
                    nngp[j : j + b, i : i + b] = s.nngp.permute(swap)
                    ntk[j : j + b, i : i + b] = s.ntk.permute(swap)
        if nd > 1:
            # neural-tangents' layout: the two positions of each spatial axis side
            # by side, (N1, N2, H, H', W, W').
            order = (0, 1, *(a for t in range(nd) for a in (2 + t, 2 + nd + t)))
            nngp = nngp.permute(order).contiguous()
            ntk = ntk.permute(order).contiguous()
        return Kernel(nngp=nngp, ntk=ntk)

    # -- finite width ---------------------------------------------------------------

    def sample(
        self,
        width: int | None,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
        *,
        input_shape: tuple[int, ...] | None = None,
    ) -> torch.nn.Module:
        """A finite network of this architecture with freshly sampled parameters.

        Every hidden Dense/Conv/attention/RNN width becomes `width`; the last
        parametric layer of the network (its readout) keeps its declared size.
        Parameters are drawn in the layer's parametrization (NTK: w, b ~ N(0, 1) with
        multipliers W_std / sqrt(fan_in) and b_std; standard: w ~ N(0, W_std^2 /
        fan_in), b ~ N(0, b_std^2)), so the empirical NNGP and NTK of the module
        tend to `kernel` as width grows (TP1, TP2), with errors ~ width^(-1/2).

        Args:
            width: hidden width n, or None for the declared sizes.
            seed: seed of the torch generator that draws all parameters.
            dtype: parameter dtype.
            input_shape: per-example input shape (channels last); if None the module
                samples its parameters at its first call, from the input's shape.

        Returns:
            A `torch.nn.Module` mapping (N, *input_shape) to (N, *out_shape).

        Example:
            >>> import torch
            >>> from tensorprograms import nn
            >>> net = nn.serial(nn.Dense(5), nn.Relu(), nn.Dense(2))
            >>> f = net.sample(64, seed=0, input_shape=(3,))
            >>> f(torch.ones(4, 3, dtype=torch.float64)).shape
            torch.Size([4, 2])
        """
        from ._sample import Network

        if width is not None and (int(width) != width or width < 1):
            raise ValueError(f"width must be a positive integer or None, got {width}")
        return Network(self, width, seed, dtype, input_shape)


def _keep(record: list, storage: dict, tile: int, n_tiles: int) -> list:
    """Copy one diagonal tile's per-layer variances into `storage`, which holds one
    tensor of shape (n_tiles, *shape) per layer and shape, allocated at first use."""
    kept = []
    for k, r in enumerate(record):
        if r is None:  # a layer fused with the next one records nothing
            kept.append(None)
            continue
        key = (k, tuple(r.shape))
        if key not in storage:
            storage[key] = r.new_empty((n_tiles, *r.shape))
        kept.append(storage[key][tile].copy_(r))
    return kept


def _mirror(s: _State, swap: tuple[int, ...]) -> _State:
    """Make a tile of K(x, x) on the diagonal exactly symmetric.

    Matrix products (BLAS) need not return x x^T bit-symmetric; averaging a tile with
    its transpose, ``k[a, b, i, j] = k[b, a, j, i]``, changes only rounding and makes
    ``torch.equal(K, K.T)`` hold for the assembled kernel.
    """
    return s.replace(
        nngp=(s.nngp + s.nngp.permute(swap)) / 2, ntk=(s.ntk + s.ntk.permute(swap)) / 2
    )


def _check_input(x, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        x = x.to(torch.float64)
    if x.ndim < 2:
        raise ValueError(
            f"{name} must have shape (N, *spatial, channels), got {tuple(x.shape)}"
        )
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite entries")
    return x.to(torch.float64)


def _check_finite(s: _State, where: Layer) -> None:
    if not (torch.isfinite(s.nngp.sum()) and torch.isfinite(s.ntk.sum())):
        raise ValueError(
            f"{type(where).__name__}: the kernel has non-finite entries (overflow or "
            "an undefined limit)"
        )
