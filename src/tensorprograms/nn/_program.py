"""The same MLP written as a Tensor Program: its kernels from the Master Theorem.

For ``serial(Dense, phi, Dense, phi, ..., Dense)`` (NTK parametrization; other
layers are written by ``network_program``, which ``program_kernel`` uses) the
forward pass over a data set ``X`` (``N`` inputs) is a Netsor-T+ program with
``N`` lanes:

* ``h^1`` is an initial vector with covariance ``W_std^2 X X^T / d + b_std^2``;
* ``h^{l+1} = W^{l+1} phi(h^l) + b^{l+1}``, ``W^{l+1}`` with entries
  ``N(0, W_std^2 / n)``, ``b^{l+1}`` a shared initial vector of variance
  ``b_std^2``.

The backward pass multiplies by the *same* matrices transposed (TP2):
``dh^L = v * phi'(h^L)`` with the readout ``v`` (variance ``W_std^2``), and
``dh^l = (W^{l+1})^T dh^{l+1} * phi'(h^l)``. Then (TP1, TP2)

    nngp = lim <h^{L+1}, h^{L+1}'> / n,
    ntk  = nngp + sum_l lim(<h^l, h^l'> / n) lim(<dh^l, dh^l'> / n),

every term being read off :func:`tensorprograms.limit`, ZDot included (it vanishes
by TP2's gradient-independence argument; the evaluator computes it anyway).
This is the generic path that the closed-form kernels of :mod:`tensorprograms.nn`
are tested against.

Example:
    >>> import torch
    >>> from tensorprograms import nn
    >>> net = nn.serial(nn.Dense(8, W_std=1.4, b_std=0.1), nn.Relu(), nn.Dense(1))
    >>> x = torch.eye(3, dtype=torch.float64)
    >>> k = nn.program_kernel(net, x)
    >>> bool(torch.allclose(k.nngp, net.kernel(x).nngp, atol=1e-12))
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import nonlinearities as nl
from ..limit import limit
from ..program import Program, Vector
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
from ._combinators import Serial
from ._dense import Dense
from ._kernel import Kernel

__all__ = ["MLPProgram", "mlp_program", "program_kernel"]


def _nonlinearity_of(layer, index: int):
    """The registry nonlinearity of an activation layer (closed forms kept)."""
    if isinstance(layer, Relu):
        return nl.relu
    if isinstance(layer, Abs):
        return nl.abs
    if isinstance(layer, LeakyRelu):
        return nl.leaky_relu(layer.alpha)
    if isinstance(layer, ABRelu):
        return nl.abrelu(layer.a, layer.b)
    if isinstance(layer, Erf):
        return nl.erf
    if isinstance(layer, Gelu):
        return nl.gelu
    if isinstance(layer, Identity):
        return nl.identity
    if isinstance(layer, Tanh):
        return nl.tanh
    if isinstance(layer, Sigmoid):
        return nl.sigmoid
    if isinstance(layer, Elementwise):
        return layer._nonlinearity()
    raise ValueError(
        f"layer {index} ({type(layer).__name__}): no Tensor Program rule in "
        "mlp_program (it covers Dense layers and coordinatewise activations)"
    )


@dataclass(frozen=True)
class MLPProgram:
    """An MLP on a data set as a program, with the vectors its kernels need.

    Attributes:
        program: the Netsor-T+ program (``N`` lanes).
        forward: pre-activations ``h^1 .. h^{L+1}`` (vectors with lanes).
        backward: ``dh^1 .. dh^L`` (vectors with lanes).
        input_nngp: ``(N, N)`` covariance of ``h^1``.
        readout_var: ``(W_std, b_std)`` of the readout layer.
    """

    program: Program
    forward: tuple[Vector, ...]
    backward: tuple[Vector, ...]
    input_nngp: torch.Tensor
    readout: tuple[float, float]

    def kernel(self, **limit_options) -> Kernel:
        """NNGP and NTK from the Master Theorem (``(N, N)``, float64)."""
        res = limit(self.program, **limit_options)
        nngp = res.kernel(self.forward[-1])
        ntk = nngp.clone()
        for h, dh in zip(self.forward[:-1], self.backward):
            ntk = ntk + res.kernel(h) * res.kernel(dh)
        return Kernel(nngp=nngp, ntk=ntk)


def mlp_program(model: Serial, x: torch.Tensor) -> MLPProgram:
    """Write ``model`` applied to the inputs ``x`` (``(N, d)``) as a Tensor Program.

    Args:
        model: ``serial`` of ``Dense`` layers (NTK parametrization) separated by
            coordinatewise activations, ending with a ``Dense`` readout.
        x: ``(N, d)`` inputs.

    Raises:
        ValueError: a layer that this translation does not cover, named by index.
    """
    layers = list(model.layers) if isinstance(model, Serial) else [model]
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.ndim != 2:
        raise ValueError(f"mlp_program takes inputs of shape (N, d), got {x.shape}")
    dense = [i for i, layer in enumerate(layers) if isinstance(layer, Dense)]
    if not dense or dense[0] != 0 or dense[-1] != len(layers) - 1:
        raise ValueError("mlp_program needs Dense first and last layers")
    for i, layer in enumerate(layers):
        if isinstance(layer, Dense) and layer.parametrization != "ntk":
            raise ValueError(
                f"layer {i} (Dense): mlp_program covers the NTK parametrization, "
                f"got {layer.parametrization!r}"
            )
    groups = []  # (Dense, [activations after it])
    for i, layer in enumerate(layers):
        if isinstance(layer, Dense):
            groups.append((layer, []))
        else:
            groups[-1][1].append(_nonlinearity_of(layer, i))

    first = groups[0][0]
    b2 = 0.0 if first.b_std is None else first.b_std**2
    K1 = first.W_std**2 * (x @ x.T) / x.shape[1] + b2
    p = Program()
    h = p.vector("h1", cov=K1)
    forward, acts = [h], []
    for layer_idx, (dense_l, _) in enumerate(groups[1:], start=2):
        phis = groups[layer_idx - 2][1]
        a = h
        for phi in phis:
            a = phi(a)
        acts.append((h, phis))
        W = p.matrix(f"W{layer_idx}", var=dense_l.W_std**2)
        h = W @ a
        if dense_l.b_std is not None:
            h = h + p.vector(f"b{layer_idx}", var=dense_l.b_std**2)
        forward.append(h)

    readout = groups[-1][0]
    v = p.vector("v", var=readout.W_std**2)
    mats = [ins for ins in p.handles() if ins.instruction.kind == "matrix"]
    backward = []
    grad = v  # sqrt(n) d f / d (activations of the last hidden layer)
    for k in range(len(acts) - 1, -1, -1):
        h_k, phis = acts[k]
        grad = _through_activations(grad, h_k, phis)
        backward.append(grad)
        if k > 0:
            grad = mats[k - 1].T @ grad
    backward.reverse()
    return MLPProgram(p, tuple(forward), tuple(backward), K1, (readout.W_std, b2))


def _through_activations(grad, h, phis):
    """Back through ``a = phi_k(...phi_1(h))``: multiply by each derivative."""
    values = [h]
    for phi in phis[:-1]:
        values.append(phi(values[-1]))
    for phi, u in zip(reversed(phis), reversed(values)):
        grad = grad * phi.derivative()(u)
    return grad


def program_kernel(model: Serial, x1: torch.Tensor, **limit_options) -> Kernel:
    """NNGP and NTK of a network by the generic Master Theorem evaluator.

    The network is written as a Tensor Program with its backward pass by
    :func:`~tensorprograms.nn.network_program` (Dense, activations, Residual,
    LayerNorm, Conv, Flatten, GlobalAvgPool, RNN, GlobalSelfAttention with 1/n
    logits). Equal to ``model.kernel(x1)`` (the closed-form / quadrature path) up
    to the integration tolerance; meant as its independent check.

    Args:
        model: the network (NTK parametrization, a Dense readout last).
        x1: ``(N, d)`` or ``(N, *spatial, d)`` inputs.
        limit_options: passed to :func:`tensorprograms.limit`.

    Returns:
        :class:`Kernel` with ``(N, N)`` float64 ``nngp`` and ``ntk``.

    Example:
        >>> import torch
        >>> from tensorprograms import nn
        >>> net = nn.serial(nn.RNN(4, nn.Relu()), nn.Dense(1))
        >>> x = torch.ones(2, 3, 1, dtype=torch.float64)  # 2 sequences, 3 steps
        >>> k = nn.program_kernel(net, x)
        >>> bool(torch.allclose(k.ntk, net.kernel(x).ntk, atol=1e-12))
        True
    """
    from ._program_net import network_program

    return network_program(model, x1).kernel(**limit_options)
