"""Finite-width networks sampled from a layer description.

`Network` is the `torch.nn.Module` that `Layer.sample` returns. Each layer builds its
own finite module (in the same file as its limit rule); this file holds the wrapper and
the small modules shared by several layers.
"""

from __future__ import annotations

import math

import torch

from ._layer import Layer, _BuildContext

__all__ = ["Network"]


class Network(torch.nn.Module):
    """A sampled finite network; call it on (N, *input_shape) tensors.

    Built from ``layer._build`` with every parameter drawn from one seeded generator,
    either at construction (``input_shape`` given) or at the first call.

    Attributes:
        layer: the description it was sampled from.
        width: the hidden width (None: declared sizes).
        seed: the generator's seed.
        body: the module tree (None until built).

    Example:
        >>> import torch
        >>> from tensorprograms import nn
        >>> f = nn.Dense(2).sample(None, input_shape=(3,))
        >>> sorted(name for name, _ in f.named_parameters())
        ['body.weight']
    """

    def __init__(
        self,
        layer: Layer,
        width: int | None,
        seed: int,
        dtype: torch.dtype,
        input_shape: tuple[int, ...] | None,
    ):
        super().__init__()
        self.layer = layer
        self.width = width
        self.seed = seed
        self.dtype = dtype
        self.body: torch.nn.Module | None = None
        if input_shape is not None:
            self._materialise(tuple(input_shape))

    def _materialise(self, input_shape: tuple[int, ...]) -> None:
        self.layer.out_shape(input_shape)  # validates the architecture first
        ctx = _BuildContext(
            width=self.width,
            generator=torch.Generator().manual_seed(self.seed),
            dtype=self.dtype,
            readout=self.layer._readout(),
        )
        self.body, self.output_shape = self.layer._build(input_shape, ctx)
        self.input_shape = input_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.body is None:
            self._materialise(tuple(x.shape[1:]))
            self.body.to(x.device)
        elif tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"expected inputs of shape (N, *{self.input_shape}), got "
                f"{tuple(x.shape)}"
            )
        return self.body(x)


class Sequential(torch.nn.Module):
    """Apply child modules in order (a plain container with indexable children)."""

    def __init__(self, modules: list[torch.nn.Module]):
        super().__init__()
        self.layers = torch.nn.ModuleList(modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.layers:
            x = m(x)
        return x


class Function(torch.nn.Module):
    """A parameter-free module applying ``fn`` (activations, pooling, reshapes)."""

    def __init__(self, fn, name: str = "fn"):
        super().__init__()
        self.fn = fn
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


def affine_params(
    module: torch.nn.Module,
    ctx: _BuildContext,
    weight_shape: tuple[int, ...],
    fan_in: int,
    n_out: int,
    W_std: float,
    b_std: float | None,
    parametrization: str,
) -> tuple[float, float]:
    """Register `weight` (and `bias`) on `module`; return (weight, bias) multipliers.

    NTK parametrization: w, b ~ N(0, 1) with multipliers W_std / sqrt(fan_in) and
    b_std. Standard: w ~ N(0, W_std^2 / fan_in), b ~ N(0, b_std^2), multipliers 1.
    """
    w = ctx.normal(*weight_shape)
    b = None if b_std is None else ctx.normal(n_out)
    if parametrization == "ntk":
        w_mult, b_mult = W_std / math.sqrt(fan_in), (b_std or 0.0)
    else:
        w = w * (W_std / math.sqrt(fan_in))
        b = None if b is None else b * b_std
        w_mult, b_mult = 1.0, 1.0
    module.weight = torch.nn.Parameter(w)
    module.bias = None if b is None else torch.nn.Parameter(b)
    return w_mult, b_mult
