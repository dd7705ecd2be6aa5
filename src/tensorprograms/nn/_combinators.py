"""Combinators: serial composition, parallel branches and residual connections."""

from __future__ import annotations

import torch

from ._kernel import _State
from ._layer import Layer, _BuildContext
from ._sample import Sequential

__all__ = ["Parallel", "Residual", "Serial", "parallel", "serial"]


def _check_layers(layers, where: str) -> tuple[Layer, ...]:
    if len(layers) == 1 and isinstance(layers[0], list | tuple):
        layers = tuple(layers[0])
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(
                f"{where}: argument {i} must be a tensorprograms.nn layer, got "
                f"{type(layer).__name__}"
            )
    return tuple(layers)


def _name(i: int, layer: Layer) -> str:
    return f"layer {i} ({type(layer).__name__})"


def _check_state(s: _State, i: int, layer: Layer) -> None:
    if not (torch.isfinite(s.nngp.sum()) and torch.isfinite(s.ntk.sum())):
        raise ValueError(
            f"{_name(i, layer)}: the kernel has non-finite entries (overflow "
            "or an undefined limit)"
        )


class Serial(Layer):
    """Layers applied one after the other; built by `serial`.

    Errors raised by a layer (shape mismatches, a kernel that is not positive
    semi-definite, overflow) name its index and class in the chain.
    """

    def __init__(self, *layers: Layer):
        self.layers = _check_layers(layers, "serial")

    def __repr__(self):
        return "serial(" + ", ".join(map(repr, self.layers)) + ")"

    def out_shape(self, in_shape):
        shape = tuple(in_shape)
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.out_shape(shape)
            except (ValueError, TypeError) as e:
                raise type(e)(f"{_name(i, layer)}: {e}") from None
        return shape

    def _modes(self, out_full: bool) -> list[bool]:
        """modes[i]: full mode needed at the input of layer i; modes[-1] = out_full."""
        modes = [out_full]
        for layer in reversed(self.layers):
            modes.append(layer._in_full(modes[-1]))
        return modes[::-1]

    def _in_full(self, out_full):
        return self._modes(out_full)[0]

    def _whole_batch(self):
        return any(layer._whole_batch() for layer in self.layers)

    def _caches_variances(self):
        return bool(self.layers) and all(
            type(layer)._variance_only_ok for layer in self.layers
        )

    def _from_input(self, x1, x2, in_full, out_full, cache=None):
        if not self.layers or self._per_unit_tail(0):
            return super()._from_input(x1, x2, in_full, out_full)
        modes = self._modes(out_full)
        try:
            first = self.layers[0]
            args = (x1, x2, modes[0], modes[1])
            if cache is not None and len(cache) == 2 and first._skips_self_covs:
                # Cross tile: _cached replaces the self covariances right below.
                s = first._from_input(*args, self_covs=False)
            else:
                s = first._from_input(*args)
        except ValueError as e:
            raise ValueError(f"{_name(0, self.layers[0])}: {e}") from None
        s = self._cached(s, cache, 0)
        return self._step(s, out_full, start=1, cache=cache)

    @staticmethod
    def _cached(s: _State, cache, i: int) -> _State:
        """Record (diagonal tile) or replay (cross tile) the variances after layer i."""
        if cache is None:
            return s
        if len(cache) == 1:
            # A copy: the variances may be a view of the tile's whole nngp.
            cache[0].append(s.variances()[0].clone())
            return s
        return s.replace(cov1=cache[0][i], cov2=cache[1][i], variance_only=True)

    def _per_unit_tail(self, i: int) -> tuple[Layer, ...]:
        """The layers after a `parallel` at index i that act on each unit alone
        (activations, with pooling or Flatten among them), up to the last
        activation: `Parallel` applies them within each branch."""
        from ._activations import _Activation
        from ._conv import AvgPool, Flatten, GlobalAvgPool

        if not isinstance(self.layers[i], Parallel):
            return ()
        tail, end = [], 0
        for layer in self.layers[i + 1 :]:
            if not isinstance(layer, _Activation | AvgPool | Flatten | GlobalAvgPool):
                break
            tail.append(layer)
            if isinstance(layer, _Activation):
                end = len(tail)
        return tuple(tail[:end])

    def _step(self, s: _State, out_full: bool, start: int = 0, cache=None) -> _State:
        modes = self._modes(out_full)
        fused = False
        skip = 0
        for i, layer in enumerate(self.layers):
            if i < start or fused or skip:  # fused: applied with layer i - 1
                fused = False
                skip = max(skip - 1, 0)
                continue
            tail = self._per_unit_tail(i)
            if tail:
                # Applied within each branch by the parallel layer (cache is None
                # here: Parallel does not allow variance caching).
                skip = len(tail)
                try:
                    s = layer._step(s, modes[i + 1 + skip], tail=tail)
                except ValueError as e:
                    raise ValueError(f"{_name(i, layer)}: {e}") from None
                _check_state(s, i, layer)
                continue
            nxt = self.layers[i + 1] if i + 1 < len(self.layers) else None
            # A closed-form activation followed by global average pooling: the
            # pooled dual kernels are reduced as they are formed, never written.
            fused = (
                s.full
                and getattr(layer, "_fuses_mean", False)
                and hasattr(nxt, "_after_activation")
            )
            try:
                if fused:
                    s = nxt._after_activation(layer, s)
                else:
                    s = layer._step(s, modes[i + 1])
            except ValueError as e:
                raise ValueError(f"{_name(i, layer)}: {e}") from None
            if fused and cache is not None:
                if len(cache) == 1:
                    cache[0].append(None)  # layer i's variances: never replayed
                s = self._cached(s, cache, i + 1)
            else:
                s = self._cached(s, cache, i)
            _check_state(s, i, layer)
        return s

    def _build(self, in_shape, ctx: _BuildContext):
        modules = []
        shape = tuple(in_shape)
        for layer in self.layers:
            module, shape = layer._build(shape, ctx)
            modules.append(module)
        return Sequential(modules), shape

    def _readout(self):
        for layer in reversed(self.layers):
            r = layer._readout()
            if r is not None:
                return r
        return None


def serial(*layers: Layer) -> Serial:
    """Compose layers: ``serial(f, g)(x) = g(f(x))``; kernels are composed likewise.

    Args:
        layers: `tensorprograms.nn` layers (or one list of them).

    Returns:
        A `Serial` layer with `kernel` and `sample`.

    Example:
        >>> import torch
        >>> from tensorprograms import nn
        >>> net = nn.serial(nn.Dense(8, W_std=2**0.5), nn.Relu(), nn.Dense(1))
        >>> x = torch.eye(2, dtype=torch.float64)
        >>> k = net.kernel(x)  # relu of q = 1: E[relu^2] = 1/2, times W_std^2 = 1
        >>> round(float(k.nngp[0, 0]), 12), round(float(k.ntk[0, 0]), 12)
        (0.5, 1.0)
    """
    return Serial(*layers)


class Parallel(Layer):
    """Branches applied to the same input, outputs concatenated along channels.

    Limit rule: the per-unit kernels of a concatenation are the branches' kernels
    averaged with weights proportional to their declared output channels. The
    units of different branches are not identically distributed, so only layers
    linear in the per-unit kernel (Dense, Conv, pooling, Flatten, attention,
    LayerNorm) may act on the concatenation as a whole; nonlinearities that follow
    `parallel` directly in a `serial` (possibly with pooling or Flatten between)
    are applied within each branch before the average, which is what the finite
    network computes. Sampled networks give every hidden branch the same width, so
    finite and infinite agree when branches declare equal output channels.
    """

    def __init__(self, *layers: Layer):
        self.layers = _check_layers(layers, "parallel")
        if not self.layers:
            raise ValueError("parallel: needs at least one branch, got none")

    def __repr__(self):
        return "parallel(" + ", ".join(map(repr, self.layers)) + ")"

    def out_shape(self, in_shape):
        shapes = []
        for i, layer in enumerate(self.layers):
            try:
                shapes.append(layer.out_shape(in_shape))
            except (ValueError, TypeError) as e:
                raise type(e)(f"branch {i} ({type(layer).__name__}): {e}") from None
        spatial = {s[:-1] for s in shapes}
        if len(spatial) != 1:
            raise ValueError(
                f"parallel: branches must agree on spatial shape, got {sorted(spatial)}"
            )
        return (*shapes[0][:-1], sum(s[-1] for s in shapes))

    def _in_full(self, out_full):
        return any(layer._in_full(out_full) for layer in self.layers)

    def _whole_batch(self):
        return any(layer._whole_batch() for layer in self.layers)

    def _step(self, s: _State, out_full: bool, tail: tuple = ()) -> _State:
        """The branches' kernels, each followed by the per-unit layers `tail`
        (the layers after this one that `Serial` hands over), then averaged."""
        outs = []
        for i, layer in enumerate(self.layers):
            branch = Serial(layer, *tail) if tail else layer
            try:
                o = branch._step(s, out_full)
            except ValueError as e:
                raise ValueError(f"branch {i} ({type(layer).__name__}): {e}") from None
            outs.append(o if out_full else o.to_diagonal())
        total = sum(o.channels for o in outs)
        w = [o.channels / total for o in outs]
        nngp = sum(wi * o.nngp for wi, o in zip(w, outs))
        ntk = sum(wi * o.ntk for wi, o in zip(w, outs))
        cov1 = cov2 = None
        if not s.symmetric:
            cov1 = sum(wi * o.cov1 for wi, o in zip(w, outs))
            cov2 = sum(wi * o.cov2 for wi, o in zip(w, outs))
        return outs[0].replace(
            nngp=nngp,
            ntk=ntk,
            cov1=cov1,
            cov2=cov2,
            channels=total,
            gaussian=all(o.gaussian for o in outs),
            mixed=len(outs) > 1 or outs[0].mixed,
        )

    def _build(self, in_shape, ctx):
        built = [layer._build(in_shape, ctx) for layer in self.layers]
        shape = (*built[0][1][:-1], sum(b[1][-1] for b in built))
        return _ParallelModule([b[0] for b in built]), shape


class _ParallelModule(torch.nn.Module):
    def __init__(self, branches):
        super().__init__()
        self.branches = torch.nn.ModuleList(branches)

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches], dim=-1)


def parallel(*layers: Layer) -> Parallel:
    """Apply branches to the same input and concatenate their channels.

    Args:
        layers: one layer per branch; outputs must agree in spatial shape.

    Returns:
        A `Parallel` layer.

    Example:
        >>> import torch
        >>> from tensorprograms import nn
        >>> net = nn.parallel(nn.Dense(4, W_std=1.0), nn.Dense(4, W_std=3.0))
        >>> k = net.kernel(torch.ones(1, 1, dtype=torch.float64))
        >>> float(k.nngp)  # (1 + 9) / 2
        5.0
    """
    return Parallel(*layers)


class Residual(Layer):
    """``x + multiplier * block(x)``; kernels add: K = K_x + multiplier^2 K_block.

    The cross terms E[x block(x')] vanish in the limit when the block's output is a
    function of a fresh weight matrix (the block contains a Dense, Conv, attention
    or RNN layer) and either x or block(x) has mean zero (TP1: Z^{Wx} is independent
    of Z^x). Other blocks raise, since their kernel is not the sum.

    Args:
        block: a layer (often a `serial`) whose output shape equals its input shape.
        multiplier: scale of the block's branch.

    Example:
        >>> import torch
        >>> from tensorprograms import nn
        >>> net = nn.serial(nn.Dense(4), nn.Residual(nn.Dense(4, W_std=2.0), 0.5))
        >>> float(net.kernel(torch.ones(1, 1, dtype=torch.float64)).nngp)  # 1 + 1
        2.0
    """

    def __init__(self, block: Layer | list, multiplier: float = 1.0):
        if isinstance(block, list | tuple):
            block = Serial(*block)
        if not isinstance(block, Layer):
            raise TypeError(
                f"Residual: block must be a tensorprograms.nn layer, got "
                f"{type(block).__name__}"
            )
        self.block = block
        self.multiplier = float(multiplier)

    def out_shape(self, in_shape):
        try:
            out = self.block.out_shape(in_shape)
        except (ValueError, TypeError) as e:
            raise type(e)(f"block: {e}") from None
        if tuple(out) != tuple(in_shape):
            raise ValueError(
                f"Residual: block must keep the shape {tuple(in_shape)} of its input, "
                f"got {tuple(out)}"
            )
        return tuple(in_shape)

    def _in_full(self, out_full):
        return out_full or self.block._in_full(out_full)

    def _whole_batch(self):
        return self.block._whole_batch()

    def _step(self, s: _State, out_full: bool) -> _State:
        if self.block._readout() is None:
            raise ValueError(
                "Residual: the block has no Dense/Conv/attention/RNN layer, so "
                "block(x) is not independent of x and the kernels do not add"
            )
        try:
            b = self.block._step(s, out_full)
        except ValueError as e:
            raise ValueError(f"block: {e}") from None
        if not (s.gaussian or b.gaussian):
            raise ValueError(
                "Residual: neither x nor block(x) has mean zero, so the limit has "
                "cross terms E[x] E[block(x')]; end the block with Dense/Conv"
            )
        x = s if out_full else s.to_diagonal()
        b = b if out_full else b.to_diagonal()
        m2 = self.multiplier**2
        return x.replace(
            nngp=x.nngp + m2 * b.nngp,
            ntk=x.ntk + m2 * b.ntk,
            cov1=None if s.symmetric else x.cov1 + m2 * b.cov1,
            cov2=None if s.symmetric else x.cov2 + m2 * b.cov2,
            gaussian=s.gaussian and b.gaussian,
            mixed=s.mixed or b.mixed,
        )

    def _build(self, in_shape, ctx: _BuildContext):
        inner = _BuildContext(
            ctx.width,
            ctx.generator,
            ctx.dtype,
            ctx.readout,
            {**ctx.fixed, id(self.block._readout()): in_shape[-1]},
        )
        block, shape = self.block._build(in_shape, inner)
        if shape != tuple(in_shape):
            raise ValueError(
                f"Residual: the sampled block maps {tuple(in_shape)} to {shape}; its "
                "last Dense/Conv must give back the input's channels"
            )
        return _ResidualModule(block, self.multiplier), shape


class _ResidualModule(torch.nn.Module):
    def __init__(self, block, multiplier):
        super().__init__()
        self.block = block
        self.multiplier = multiplier

    def forward(self, x):
        return x + self.multiplier * self.block(x)
