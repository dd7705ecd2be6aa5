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


# ---- layers beyond the MLP: network_program -------------------------------------
# Every case compares NNGP and NTK of nn's layer-by-layer kernel maps with the
# program's (forward and backward vectors, weight matrices reused where the network
# reuses them) read off tp.limit. Both sides are closed forms composed in float64
# (relu/erf/identity arc-cosine kernels, linear maps), so they agree to rounding:
# 1e-10 relative leaves a margin of 10^5 over the observed 1e-15.

GEN = torch.Generator().manual_seed(1)
SEQ = torch.randn(3, 4, 2, dtype=torch.float64, generator=GEN)  # (N, T or W, C)
SEQ5 = torch.randn(3, 5, 2, dtype=torch.float64, generator=GEN)
IMG = torch.randn(2, 3, 3, 2, dtype=torch.float64, generator=GEN)  # (N, H, W, C)


def _agree(net, x):
    fast, generic = net.kernel(x), nn.program_kernel(net, x)
    assert torch.allclose(fast.nngp, generic.nngp, rtol=1e-10, atol=1e-12)
    assert torch.allclose(fast.ntk, generic.ntk, rtol=1e-10, atol=1e-12)
    return generic


def _dense(w=1.2, b=0.2):
    return nn.Dense(16, W_std=w, b_std=b)


RESIDUAL = {
    "relu-dense": lambda: nn.Residual(nn.serial(nn.Relu(), _dense(1.1, 0.1)), 0.7),
    "dense-erf": lambda: nn.Residual(nn.serial(_dense(1.3, None), nn.Erf()), 0.5),
    "dense": lambda: nn.Residual(_dense(0.9, 0.3), 1.5),
}


@pytest.mark.parametrize("name", sorted(RESIDUAL))
def test_residual_equals_generic_evaluator(name):
    block = RESIDUAL[name]
    net = nn.serial(_dense(), block(), _dense(1.1, 0.1), block(), _dense(), nn.Relu())
    _agree(nn.serial(net, nn.Dense(1, b_std=0.1)), X)


@pytest.mark.parametrize("act", [nn.Relu, nn.Erf])
def test_layernorm_equals_generic_evaluator(act):
    net = nn.serial(
        _dense(1.3, 0.2), nn.LayerNorm(), act(), _dense(), nn.LayerNorm(), nn.Dense(1)
    )
    _agree(net, X)


@pytest.mark.parametrize("readout", ["last", "mean"])
@pytest.mark.parametrize("act", [nn.Relu, nn.Erf])
def test_rnn_equals_generic_evaluator(readout, act):
    rnn = nn.RNN(16, act(), W_std=1.1, U_std=1.2, b_std=0.3, readout=readout)
    _agree(nn.serial(rnn, nn.Dense(1, b_std=0.1)), SEQ)


def test_rnn_after_dense_and_its_one_shared_matrix():
    net = nn.serial(_dense(), nn.RNN(16, nn.Erf(), b_std=0.2), nn.Dense(1))
    _agree(net, SEQ)
    prog = nn.network_program(net, SEQ).program
    mats = [ins.name for ins in prog.instructions if ins.kind == "matrix"]
    # U, the hidden W (once for all 4 steps), the readout: weight sharing is kept.
    assert len(mats) == 3


@pytest.mark.parametrize("padding", ["SAME", "VALID", "CIRCULAR"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("head", ["flatten", "pool"])
def test_conv1d_equals_generic_evaluator(padding, stride, head):
    net = nn.serial(
        nn.Conv(16, (3,), strides=(stride,), padding=padding, W_std=1.3, b_std=0.2),
        nn.Relu(),
        nn.Conv(16, (2,), padding=padding, W_std=1.2, b_std=0.1),
        nn.Erf(),
        nn.Flatten() if head == "flatten" else nn.GlobalAvgPool(),
        nn.Dense(1, b_std=0.1),
    )
    _agree(net, SEQ5)


def test_conv2d_equals_generic_evaluator():
    net = nn.serial(
        nn.Conv(16, (2, 2), padding="SAME", b_std=0.2),
        nn.Relu(),
        nn.Conv(16, (2, 2), strides=(1, 2), padding="VALID"),
        nn.Relu(),
        nn.Flatten(),
        nn.Dense(1),
    )
    _agree(net, IMG)


@pytest.mark.parametrize("mech", ["SOFTMAX", "IDENTITY", "RELU", "ABS"])
@pytest.mark.parametrize("heads", [1, 2])
def test_attention_equals_generic_evaluator(mech, heads):
    attn = nn.GlobalSelfAttention(
        16,
        16,
        16,
        heads,
        W_key_std=1.2,
        W_query_std=0.8,
        W_value_std=1.1,
        W_out_std=0.9,
        b_std=0.1,
        attention_mechanism=mech,
    )
    net = nn.serial(_dense(), nn.Relu(), attn, nn.GlobalAvgPool(), nn.Dense(1))
    _agree(net, SEQ)


def test_mixed_architecture_equals_generic_evaluator():
    net = nn.serial(
        nn.Conv(16, (3,), padding="SAME", b_std=0.1),
        nn.Residual(nn.serial(nn.Relu(), nn.Conv(16, (3,), padding="SAME")), 0.5),
        nn.LayerNorm(),
        nn.GlobalSelfAttention(16, 16, 16, 1, W_query_std=0.5),
        nn.Relu(),
        nn.Flatten(),
        nn.Dense(1),
    )
    _agree(net, SEQ)


@pytest.mark.parametrize(
    "net, x, match",
    [
        (nn.serial(_dense(), nn.AvgPool((2,)), nn.Dense(1)), SEQ, "layer 1 \\(AvgPool"),
        (
            nn.serial(_dense(), nn.GlobalSelfAttention(4, 4, 4, 1, False), nn.Dense(1)),
            SEQ,
            "layer 1 \\(GlobalSelfAttention\\).*1/n logits",
        ),
        (
            nn.serial(nn.Relu(), nn.Dense(1)),
            X,
            "layer 0.*Dense, Conv or RNN layer first",
        ),
        (nn.serial(_dense(), nn.Dense(1)), SEQ, "readout needs a flat value"),
        (
            nn.serial(nn.Conv(4, (5,)), nn.Flatten(), nn.Dense(1)),
            SEQ,
            "layer 0 \\(Conv\\): VALID filter 5 is wider than the input 4",
        ),
        (
            nn.serial(
                nn.Conv(4, (2,), parametrization="standard"), nn.Flatten(), nn.Dense(1)
            ),
            SEQ,
            "layer 0 \\(Conv\\).*NTK parametrization",
        ),
    ],
)
def test_uncovered_configurations_are_named(net, x, match):
    with pytest.raises(ValueError, match=match):
        nn.network_program(net, x)


BEYOND_NN = {
    # x = relu(h) and block(x) = relu(W x) both have nonzero means: nn's Residual
    # (kernels add) refuses, the program keeps the cross terms E[x] E[block(x')].
    "residual-cross-terms": nn.serial(
        nn.Dense(16, W_std=1.3, b_std=0.2),
        nn.Relu(),
        nn.Residual(nn.serial(_dense(1.2, 0.1), nn.Relu()), 0.8),
        nn.Dense(1, b_std=0.1),
    ),
    # LayerNorm after relu: the centring by the Moment <h>/n matters; nn refuses.
    "layernorm-after-relu": nn.serial(
        _dense(1.3, 0.2),
        nn.Relu(),
        nn.LayerNorm(eps=1e-5),
        _dense(),
        nn.Erf(),
        nn.Dense(1),
    ),
}


@pytest.mark.parametrize("name", sorted(BEYOND_NN))
def test_program_kernel_beyond_nn_matches_finite_networks(name):
    from tensorprograms.empirical import empirical_ntk

    net = BEYOND_NN[name]
    with pytest.raises(ValueError):
        net.kernel(X)
    limit_ntk = nn.program_kernel(net, X).ntk
    finite = [empirical_ntk(net.sample(2048, seed=s), X).squeeze() for s in (0, 1)]
    err = float((sum(finite) / 2 - limit_ntk).abs().max() / limit_ntk.abs().max())
    # Width 2048, mean of 2 seeds: the relative error is ~0.02-0.04 (it falls like
    # n^(-1/2): 0.14, 0.06, 0.03 at widths 256, 1024, 4096 for the residual case);
    # 0.08 is about 3 standard deviations. Dropping the cross terms would move the
    # NNGP by ~30% (E[relu]^2 / E[relu^2] = 1/pi).
    assert err < 0.08
