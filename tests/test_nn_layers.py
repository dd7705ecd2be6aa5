"""Activations without arc-cosine forms, attention, layer norm, residual and parallel
layers, from_spec and the errors of tensorprograms.nn."""

import math

import numpy as np
import pytest
import torch
from _nn_helpers import empirical_nngp, empirical_ntk
from scipy import integrate, special

from tensorprograms import nn
from tensorprograms.nn._attention_mc import sqrt_attention_kernel
from tensorprograms.nn._kernel import _State


def _pair_input(q1, q2, c):
    """Two 2-d inputs whose kernel x.x'/2 is [[q1, c], [c, q2]]."""
    a = math.sqrt(2 * q1)
    return torch.tensor(
        [[a, 0.0], [2 * c / a, math.sqrt(2 * q2 - (2 * c / a) ** 2)]],
        dtype=torch.float64,
    )


def _scipy_pair(f, g, q1, q2, c):
    """E[f(u) g(u')] by adaptive 2-D quadrature over standard normals (scipy)."""
    rho = c / math.sqrt(q1 * q2)

    def integrand(z2, z1):
        u = math.sqrt(q1) * z1
        v = math.sqrt(q2) * (rho * z1 + math.sqrt(1 - rho * rho) * z2)
        return f(u) * g(v) * math.exp(-(z1 * z1 + z2 * z2) / 2) / (2 * math.pi)

    val, err = integrate.dblquad(integrand, -9, 9, -9, 9, epsabs=1e-12, epsrel=1e-12)
    return val


def _gelu(x):
    return x * 0.5 * (1 + math.erf(x / math.sqrt(2)))


def _dgelu(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2))) + x * math.exp(
        -x * x / 2
    ) / math.sqrt(2 * math.pi)


def _sigmoid(x):
    return special.expit(x)


CASES = [
    (nn.Gelu(), _gelu, _dgelu),
    (nn.Tanh(), math.tanh, lambda x: 1 - math.tanh(x) ** 2),
    (nn.Sigmoid(), _sigmoid, lambda x: _sigmoid(x) * (1 - _sigmoid(x))),
    (
        nn.Elementwise(lambda t: torch.sin(t) + 0.3 * t, name="sinlin"),
        lambda x: math.sin(x) + 0.3 * x,
        lambda x: math.cos(x) + 0.3,
    ),
]


@pytest.mark.parametrize("layer,f,df", CASES, ids=["gelu", "tanh", "sigmoid", "fn"])
@pytest.mark.parametrize("q1,q2,c", [(1.0, 1.0, 0.3), (2.5, 0.7, -0.9)])
def test_activation_kernels_against_scipy(layer, f, df, q1, q2, c):
    k = nn.serial(nn.Dense(3), layer).kernel(_pair_input(q1, q2, c))
    # First layer in NTK parametrization: ntk_in = nngp_in, so ntk = c E[phi' phi'].
    # Both sides are accurate to ~1e-10 (scipy's requested 1e-12, the layers' stated
    # tolerance 1e-9 for quadrature); 1e-8 bounds their sum.
    assert abs(float(k.nngp[0, 1]) - _scipy_pair(f, f, q1, q2, c)) < 1e-8
    assert abs(float(k.ntk[0, 1]) / c - _scipy_pair(df, df, q1, q2, c)) < 1e-8
    assert abs(float(k.nngp[0, 0]) - _scipy_pair(f, f, q1, q1, q1)) < 1e-8


def _softmax(a):
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_attention_kernel_against_formula_and_finite_networks():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 2))
    att = nn.GlobalSelfAttention(
        1, 1, 1, 2, W_key_std=1.5, W_query_std=1.2, W_value_std=0.9, b_std=0.2
    )
    k = nn.serial(nn.Dense(1, W_std=1.1), att).kernel(torch.from_numpy(x))
    # Independent NumPy version of the 1/n-logit limit (module docstring).
    k1 = 1.21 * np.einsum("aic,bjc->abij", x, x) / 2
    g = [_softmax(1.8 * k1[a, a]) for a in range(3)]
    mixed = np.einsum("aij,abjk,blk->abil", np.stack(g), k1, np.stack(g))
    np.testing.assert_allclose(k.nngp.numpy(), 0.81 * mixed + 0.04, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        k.ntk.numpy(), 3 * 0.81 * mixed + 0.04, rtol=0, atol=1e-12
    )

    net = nn.serial(
        nn.Dense(1, W_std=1.2, b_std=0.1),
        att,
        nn.Relu(),
        nn.GlobalAvgPool(),
        nn.Dense(1),
    )
    xt = torch.from_numpy(x)
    lim = net.kernel(xt)
    errors = []
    for width in (32, 1024):
        errs = [
            float(
                (
                    empirical_ntk(net.sample(width, seed=s, input_shape=(4, 2)), xt)
                    - lim.ntk
                ).norm()
                / lim.ntk.norm()
            )
            for s in range(4)
        ]
        errors.append(np.mean(errs))
    # ~ width^(-1/2), so 32x the width should divide the error by ~5.7 (measured on
    # this net, 6 seeds: 0.37, 0.23, 0.086, 0.035 at widths 32, 128, 512, 2048; the
    # spread between seeds is large); ask for a factor 3.
    assert errors[1] < errors[0] / 3, errors
    emp = empirical_nngp(net, xt, 256, range(20), 1.0, 0.0)
    # 20 seeds at width 256, readout integrated exactly: expected error ~0.03.
    assert float((emp - lim.nngp).norm() / lim.nngp.norm()) < 0.08


@pytest.mark.parametrize(
    "block",
    [
        nn.serial(nn.Dense(1, W_std=1.2, b_std=0.1), nn.LayerNorm(), nn.Relu()),
        nn.serial(
            nn.Dense(1, b_std=0.1),
            nn.Residual(nn.serial(nn.Relu(), nn.Dense(1, W_std=1.3)), multiplier=0.7),
            nn.Erf(),
        ),
        nn.serial(
            nn.parallel(nn.Dense(1, W_std=0.8), nn.Dense(1, W_std=1.6, b_std=0.3)),
            nn.Relu(),
        ),
    ],
    ids=["layernorm", "residual", "parallel"],
)
def test_norm_residual_parallel_finite_width(block):
    x = torch.from_numpy(np.random.default_rng(4).standard_normal((4, 3)))
    net = nn.serial(block, nn.Dense(1, W_std=1.1, b_std=0.1))
    lim = net.kernel(x)
    errors = []
    for width in (32, 512):
        errs = [
            float(
                (
                    empirical_ntk(net.sample(width, seed=s, input_shape=(3,)), x)
                    - lim.ntk
                ).norm()
                / lim.ntk.norm()
            )
            for s in range(3)
        ]
        errors.append(np.mean(errs))
    # Fluctuations ~ width^(-1/2): a factor ~4 expected, 2.5 asked.
    assert errors[1] < errors[0] / 2.5, errors
    emp = empirical_nngp(net, x, 512, range(10), 1.1, 0.1)
    assert float((emp - lim.nngp).norm() / lim.nngp.norm()) < 0.05


def test_nonlinearity_after_parallel_acts_within_each_branch():
    # The units of parallel branches with different kernels are not identically
    # distributed: the next layer's kernel is the channel-weighted mean over the
    # branches of E[phi phi'], not E[phi phi'] of the mean kernel (which is off by
    # ~50% here). Both sides are the same closed forms, so agreement is to rounding.
    x = torch.from_numpy(np.random.default_rng(8).standard_normal((4, 3)))
    first = nn.Dense(3, W_std=0.3)
    second = nn.Dense(9, W_std=2.5, b_std=1.0)
    tail = (nn.Erf(), nn.Dense(1, W_std=1.1, b_std=0.1))
    net = nn.serial(nn.parallel(first, second), *tail)
    k1, k2 = nn.serial(first, *tail).kernel(x), nn.serial(second, *tail).kernel(x)
    got = net.kernel(x)
    for kind in ("nngp", "ntk"):
        want = 0.25 * getattr(k1, kind) + 0.75 * getattr(k2, kind)
        torch.testing.assert_close(getattr(got, kind), want, rtol=1e-12, atol=0)
    cross = net.kernel(x[:2], x[1:])
    torch.testing.assert_close(cross.ntk, got.ntk[:2, 1:], rtol=1e-12, atol=0)

    # Conv branches, pooling between the concatenation and the nonlinearity.
    xi = torch.from_numpy(np.random.default_rng(9).standard_normal((3, 4, 4, 2)))
    conv_a = nn.Conv(2, (3, 3), padding="SAME", W_std=0.5)
    conv_b = nn.Conv(2, (1, 1), padding="SAME", W_std=2.0, b_std=0.5)
    tail = (nn.AvgPool((2, 2)), nn.Relu(), nn.GlobalAvgPool(), nn.Dense(1))
    got = nn.serial(nn.parallel(conv_a, conv_b), *tail).kernel(xi)
    ka, kb = (nn.serial(c, *tail).kernel(xi) for c in (conv_a, conv_b))
    torch.testing.assert_close(got.ntk, (ka.ntk + kb.ntk) / 2, rtol=1e-12, atol=0)

    # A nonlinearity that cannot be moved into the branches is refused.
    with pytest.raises(ValueError, match=r"layer 2 \(Relu\).*parallel branches"):
        nn.serial(nn.parallel(first, second), nn.LayerNorm(), nn.Relu()).kernel(x)


def test_layernorm_and_residual_closed_forms():
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((3, 4)))
    dense = nn.Dense(1, W_std=1.3, b_std=0.2)
    base = dense.kernel(x)
    ln = nn.serial(dense, nn.LayerNorm()).kernel(x)
    d = base.nngp.diag()
    torch.testing.assert_close(ln.nngp, base.nngp / torch.sqrt(torch.outer(d, d)))
    res = nn.serial(dense, nn.Residual(nn.Dense(1, W_std=0.5), multiplier=2.0)).kernel(
        x
    )
    # x + 2 * Dense(x): nngp = K + 4 * 0.25 K, ntk = ntk + 4 (0.25 K + 0.25 ntk).
    torch.testing.assert_close(res.nngp, 2 * base.nngp)
    torch.testing.assert_close(res.ntk, base.ntk + base.nngp + base.ntk)


def test_from_spec_builds_the_same_network():
    spec = [
        [
            "Dense",
            {"out_dim": 8, "W_std": 1.5, "b_std": 0.1, "parameterization": "ntk"},
        ],
        ["Relu", {}],
        [
            "Residual",
            {
                "block": [
                    ["Dense", {"out_dim": 8}],
                    ["Relu", {}],
                    ["Dense", {"out_dim": 8}],
                ],
                "multiplier": 0.5,
            },
        ],
        ["Dense", {"out_dim": 1}],
    ]
    direct = nn.serial(
        nn.Dense(8, 1.5, 0.1),
        nn.Relu(),
        nn.Residual(nn.serial(nn.Dense(8), nn.Relu(), nn.Dense(8)), 0.5),
        nn.Dense(1),
    )
    x = torch.from_numpy(np.random.default_rng(6).standard_normal((3, 2)))
    a, b = nn.from_spec(spec).kernel(x), direct.kernel(x)
    assert torch.equal(a.nngp, b.nngp) and torch.equal(a.ntk, b.ntk)
    with pytest.raises(ValueError, match="unknown layer 'Dense2'"):
        nn.from_spec([["Dense2", {}]])


def test_errors_name_the_layer():
    x = torch.ones(3, 4, dtype=torch.float64)
    mlp = nn.serial(nn.Dense(2), nn.Relu(), nn.Dense(1))
    with pytest.raises(ValueError, match=r"x2 must have per-example shape \(4,\)"):
        mlp.kernel(x, torch.ones(2, 5))
    with pytest.raises(ValueError, match="NaN"):
        mlp.kernel(torch.full((2, 4), float("nan")))
    with pytest.raises(ValueError, match=r"layer 1 \(Conv\): Conv: expected inputs"):
        nn.serial(nn.Dense(2), nn.Conv(2, (3,))).kernel(x)
    with pytest.raises(ValueError, match=r"layer 0 \(Relu\): Relu: its input units"):
        nn.serial(nn.Relu(), nn.Dense(1)).kernel(x)
    with pytest.raises(ValueError, match=r"layer 2 \(LayerNorm\)"):
        nn.serial(nn.Dense(2), nn.Relu(), nn.LayerNorm()).kernel(x)
    with pytest.raises(ValueError, match=r"layer 1 \(Residual\).*not independent"):
        nn.serial(nn.Dense(2), nn.Residual(nn.Relu())).kernel(x)
    sqrt_att = nn.GlobalSelfAttention(2, 2, 2, 1, linear_scaling=False, mc_samples=8)
    with pytest.raises(
        ValueError, match=r"layer 1 \(GlobalSelfAttention\).*mc_samples"
    ):
        nn.serial(nn.Dense(2), sqrt_att, nn.GlobalAvgPool()).kernel(
            torch.randn(2, 3, 2, generator=torch.Generator().manual_seed(0))
        )
    with pytest.raises(ValueError, match="parametrization must be"):
        nn.Dense(2, parametrization="mup")

    # A covariance that is not positive semi-definite (|c| > sqrt(q1 q2)) reaching a
    # nonlinearity is reported, not clamped away.
    bad = _State(
        nngp=torch.tensor([[2.0]], dtype=torch.float64),
        ntk=torch.zeros(1, 1, dtype=torch.float64),
        cov1=torch.tensor([1.0], dtype=torch.float64),
        cov2=torch.tensor([1.0], dtype=torch.float64),
        spatial=(),
        full=False,
        channels=1,
        gaussian=True,
    )
    with pytest.raises(ValueError, match="not positive semi-definite"):
        nn.Relu()._step(bad, False)


def test_sampled_widths_and_seeds():
    net = nn.serial(nn.Dense(7), nn.Relu(), nn.Dense(3))
    f = net.sample(16, seed=1, input_shape=(5,))
    shapes = [tuple(p.shape) for p in f.parameters()]
    assert shapes == [(16, 5), (3, 16)]  # hidden width 16, readout keeps out_dim 3
    g = net.sample(16, seed=1, input_shape=(5,))
    x = torch.ones(2, 5, dtype=torch.float64)
    assert torch.equal(f(x), g(x))
    lazy = net.sample(16, seed=1)
    assert torch.equal(lazy(x), f(x))
    with pytest.raises(ValueError, match="width must be a positive integer"):
        net.sample(0)


@pytest.mark.parametrize("mechanism", ["SOFTMAX", "IDENTITY"])
def test_sqrt_attention_matches_finite_networks_within_monte_carlo_error(mechanism):
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((3, 4, 2)))
    att = nn.GlobalSelfAttention(
        1,
        1,
        1,
        2,
        linear_scaling=False,
        W_key_std=1.5,
        W_query_std=1.2,
        W_value_std=0.9,
        b_std=0.2,
        attention_mechanism=mechanism,
        mc_samples=40000,
    )
    net = nn.serial(
        nn.Dense(1, W_std=1.2, b_std=0.1), att, nn.GlobalAvgPool(), nn.Dense(1)
    )
    lim = net.kernel(x)
    # With 1/sqrt(n) logits a single network's kernels stay random (finitely many
    # heads); their average over seeds estimates the limit. Seeds: 30 at width 128.
    ntks = torch.stack(
        [
            empirical_ntk(net.sample(128, seed=s, input_shape=(4, 2)), x)
            for s in range(30)
        ]
    )
    se = ntks.std(0) / 30**0.5
    # 4 standard errors of the seed average, plus 5% of the largest entry for the
    # limit's own Monte Carlo error (relative standard error below 2% at 40000 draws)
    # and the O(1/width) bias.
    slack = 4 * se + 0.05 * lim.ntk.abs().max()
    assert bool(((ntks.mean(0) - lim.ntk).abs() < slack).all())
    if mechanism == "SOFTMAX":
        with pytest.raises(ValueError, match="x2=None"):
            net.kernel(x, x)
    else:  # closed form: any pair of batches
        cross = net.kernel(x[:2], x[1:])
        torch.testing.assert_close(cross.ntk, lim.ntk[:2, 1:], rtol=1e-12, atol=0)


def test_sqrt_attention_identity_mechanism_closed_form():
    # With G = s (IDENTITY) the Gaussian expectations are closed: E[s s'] = QK^2 K K,
    # so nngp' = OV^2 QK^2 K S2 + b^2 and ntk' = OV^2 QK^2 (2 S_KT K + S2 (T + 4 K))
    # + b^2, with S2 = sum K[j, j']^2 and S_KT = sum K[j, j'] T[j, j'] over the
    # positions (neural-tangents' formula for this case, derived independently).
    x = torch.from_numpy(np.random.default_rng(7).standard_normal((3, 3, 2)))
    dense = nn.Dense(1, W_std=1.1, b_std=0.2)
    att = nn.GlobalSelfAttention(
        1,
        1,
        1,
        1,
        linear_scaling=False,
        W_key_std=0.7,
        W_query_std=0.9,
        W_value_std=1.3,
        b_std=0.1,
        attention_mechanism="IDENTITY",
    )
    base = dense.kernel(x)
    k, t = base.nngp, base.ntk  # (3, 3, P, P)
    s2 = (k * k).sum(dim=(2, 3))[:, :, None, None]
    skt = (k * t).sum(dim=(2, 3))[:, :, None, None]
    c = (1.3 * 0.7 * 0.9) ** 2
    got = nn.serial(dense, att).kernel(x)
    # The layer evaluates the closed form; the Monte Carlo path (which this formula
    # also checks, within its error) is what the other mechanisms use.
    want_ntk = c * (2 * skt * k + s2 * (t + 4 * k)) + 0.01
    torch.testing.assert_close(got.nngp, c * k * s2 + 0.01, rtol=1e-12, atol=0)
    torch.testing.assert_close(got.ntk, want_ntk, rtol=1e-12, atol=0)
    nngp_mc, ntk_mc, rel = sqrt_attention_kernel(
        k, t, 0.7 * 0.9, 1.3**2, 0.01, "IDENTITY", 60000, 0
    )
    # 60000 draws: deviations ~0.4% of the largest entry measured; allow 2%
    # (dropping or halving a term of the formula moves entries by ~30%).
    scale = got.ntk.abs().max()
    assert float((nngp_mc - got.nngp).abs().max()) < 0.02 * scale
    assert float((ntk_mc - got.ntk).abs().max()) < 0.02 * scale


def test_elementwise_tolerance_is_relative_for_large_kernels():
    # E[exp(u) exp(u')] = exp((q1 + q2) / 2 + c): with variances ~8 the kernel is
    # ~1e7, where an absolute 1e-9 is below its rounding (this used to raise). The
    # tolerance is tol * max(1, size): check the stated 1e-9 relative, with margin
    # for the closed form's own rounding (exp of a number ~16: ~1e-15 relative).
    x = torch.from_numpy(np.random.default_rng(10).standard_normal((3, 4))) * 4.0
    dense = nn.Dense(1, W_std=1.0, b_std=0.5)
    base = dense.kernel(x)
    net = nn.serial(dense, nn.Elementwise(torch.exp, deriv=torch.exp))
    got = net.kernel(x)
    q = base.nngp.diagonal()
    dual = torch.exp((q[:, None] + q[None, :]) / 2 + base.nngp)
    assert float(dual.max()) > 1e6
    torch.testing.assert_close(got.nngp, dual, rtol=2e-9, atol=0)
    torch.testing.assert_close(got.ntk, dual * base.ntk, rtol=2e-9, atol=0)
