"""Infinite-width NNGP and NTK of layer combinators, and their finite networks.

One description, two readings (TP1 section 3, TP2): ``model.kernel(x1, x2)`` gives
the infinite-width NNGP and NTK per output unit in neural-tangents' conventions
(inputs' kernel x.x'/d, NTK or standard parametrization), and
``model.sample(width, seed)`` a `torch.nn.Module` of the same architecture whose
empirical kernels converge to them like width^(-1/2).

Example:
    >>> import torch
    >>> from tensorprograms import nn
    >>> net = nn.serial(nn.Dense(512, W_std=1.5, b_std=0.1), nn.Erf(), nn.Dense(1))
    >>> gen = torch.Generator().manual_seed(0)
    >>> x = torch.randn(5, 3, dtype=torch.float64, generator=gen)
    >>> k = net.kernel(x)
    >>> k.nngp.shape, k.ntk.dtype
    (torch.Size([5, 5]), torch.float64)
"""

from __future__ import annotations

from ._activations import (
    ABRelu,
    Abs,
    Elementwise,
    Erf,
    Gelu,
    Identity,
    LeakyRelu,
    Relu,
    Sigmoid,
    Tanh,
)
from ._attention import GlobalSelfAttention, SelfAttention
from ._combinators import Parallel, Residual, Serial, parallel, serial
from ._conv import AvgPool, Conv, Flatten, GlobalAvgPool
from ._dense import Dense
from ._kernel import Kernel
from ._layer import Layer
from ._norm import BatchNorm, LayerNorm
from ._program import MLPProgram, mlp_program, program_kernel
from ._program_net import NetworkProgram, network_program
from ._rnn import RNN
from ._spec import from_spec

__all__ = [
    "ABRelu",
    "Abs",
    "AvgPool",
    "BatchNorm",
    "Conv",
    "Dense",
    "Elementwise",
    "Erf",
    "Flatten",
    "Gelu",
    "GlobalAvgPool",
    "GlobalSelfAttention",
    "Identity",
    "Kernel",
    "Layer",
    "LayerNorm",
    "MLPProgram",
    "NetworkProgram",
    "LeakyRelu",
    "Parallel",
    "RNN",
    "Relu",
    "Residual",
    "SelfAttention",
    "Serial",
    "Sigmoid",
    "Tanh",
    "from_spec",
    "mlp_program",
    "network_program",
    "program_kernel",
    "parallel",
    "serial",
]
