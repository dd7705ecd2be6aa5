"""The kernels of tensorprograms.nn equal the generic Master Theorem evaluator.

The same MLP is written as a Tensor Program (forward pass with lanes, backward
pass through the transposed weights) and its NNGP/NTK read off `tp.limit`; this
is an independent path (atoms, ZHat/ZDot, pairwise closed forms or quadrature)
from the layer-by-layer kernel maps of `nn`.
"""

import pytest
import torch

from tensorprograms import nn


def _net(act, depth, b_std):
    layers = []
    for _ in range(depth):
        layers += [nn.Dense(16, W_std=1.3, b_std=b_std), act()]
    layers.append(nn.Dense(1, W_std=0.9, b_std=b_std))
    return nn.serial(*layers)


X = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

CLOSED = {
    "relu": nn.Relu,
    "erf": nn.Erf,
    "gelu": nn.Gelu,
    "leaky": lambda: nn.LeakyRelu(0.2),
    "abrelu": lambda: nn.ABRelu(-0.5, 1.5),
    "abs": nn.Abs,
}


@pytest.mark.parametrize("name", sorted(CLOSED))
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("b_std", [None, 0.3])
def test_closed_form_path_equals_generic_evaluator(name, depth, b_std):
    net = _net(CLOSED[name], depth, b_std)
    fast, generic = net.kernel(X), nn.program_kernel(net, X)
    # Both are closed forms composed in float64: agreement to rounding.
    assert torch.allclose(fast.nngp, generic.nngp, rtol=1e-10, atol=1e-12)
    assert torch.allclose(fast.ntk, generic.ntk, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("depth", [1, 3])
def test_quadrature_path_equals_generic_evaluator(depth):
    net = _net(nn.Tanh, depth, 0.2)
    fast, generic = net.kernel(X), nn.program_kernel(net, X)
    # Both integrate tanh numerically: nn to 1e-9 per entry and layer, the
    # evaluator to 1e-10; a few layers compound to below 1e-8.
    assert torch.allclose(fast.nngp, generic.nngp, atol=1e-8)
    assert torch.allclose(fast.ntk, generic.ntk, atol=1e-8)


def test_uncovered_layers_are_named():
    net = nn.serial(nn.Dense(4), nn.Relu(), nn.Dense(1, parametrization="standard"))
    with pytest.raises(ValueError, match="layer 2 \\(Dense\\).*NTK parametrization"):
        nn.program_kernel(net, X)
