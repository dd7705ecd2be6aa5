"""MLP kernels of tensorprograms.nn against closed-form recursions and finite nets."""

import math

import numpy as np
import pytest
import torch
from _nn_helpers import empirical_nngp, empirical_ntk

from tensorprograms import nn

# Float64 closed forms evaluated two ways (torch tiles here, NumPy there) differ
# only by rounding: 1e-10 leaves room for depth-5 accumulation of ~1e-15 errors.
CLOSED_FORM_TOL = 1e-10


def _inputs(n=7, d=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    x[3] = 2.0 * x[1]  # parallel inputs: correlation exactly 1 across examples
    return x


def _relu_recursion(x, depth, w, b):
    """THEORY.md section 3, arc-cosine kernel, written with NumPy."""
    b2 = 0.0 if b is None else b * b
    s = w * w * x @ x.T / x.shape[1] + b2
    t = s.copy()
    for _ in range(depth):
        q = np.sqrt(np.outer(np.diag(s), np.diag(s)))
        rho = np.clip(s / q, -1, 1)
        theta = np.arccos(rho)
        e = q * (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / (2 * np.pi)
        edot = (np.pi - theta) / (2 * np.pi)
        s_new = w * w * e + b2
        t = s_new + w * w * edot * t
        s = s_new
    return s, t


def _erf_recursion(x, depth, w, b):
    b2 = 0.0 if b is None else b * b
    s = w * w * x @ x.T / x.shape[1] + b2
    t = s.copy()
    for _ in range(depth):
        d = 1 + 2 * np.diag(s)
        e = 2 / np.pi * np.arcsin(2 * s / np.sqrt(np.outer(d, d)))
        edot = 4 / np.pi / np.sqrt(np.outer(d, d) - 4 * s * s)
        s_new = w * w * e + b2
        t = s_new + w * w * edot * t
        s = s_new
    return s, t


def _mlp(act, depth, w, b, width=16):
    layers = []
    for _ in range(depth):
        layers += [nn.Dense(width, W_std=w, b_std=b), act()]
    return nn.serial(*layers, nn.Dense(1, W_std=w, b_std=b))


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("b_std", [None, 0.3])
@pytest.mark.parametrize(
    "act,recursion,w", [(nn.Relu, _relu_recursion, 1.4), (nn.Erf, _erf_recursion, 1.7)]
)
def test_closed_form_recursions(depth, b_std, act, recursion, w):
    x = _inputs()
    k = _mlp(act, depth, w, b_std).kernel(torch.from_numpy(x))
    s, t = recursion(x, depth, w, b_std)
    np.testing.assert_allclose(k.nngp.numpy(), s, rtol=0, atol=CLOSED_FORM_TOL)
    np.testing.assert_allclose(k.ntk.numpy(), t, rtol=0, atol=CLOSED_FORM_TOL)


def test_tiles_and_cross_kernels_agree():
    x = torch.from_numpy(_inputs(n=9))
    net = _mlp(nn.Relu, 3, 1.3, 0.2)
    whole = net.kernel(x)
    tiled = net.kernel(x, block_size=2)
    cross = net.kernel(x[:4], x[4:], block_size=3)
    # Tiles change only rounding; cross blocks read variances from separately
    # computed self covariances, which moves arccos near rho = 1 by ~1e-8.
    torch.testing.assert_close(tiled.nngp, whole.nngp, rtol=0, atol=1e-12)
    torch.testing.assert_close(tiled.ntk, whole.ntk, rtol=0, atol=1e-12)
    torch.testing.assert_close(cross.ntk, whole.ntk[:4, 4:], rtol=0, atol=1e-7)
    assert whole.nngp.dtype == torch.float64
    assert torch.equal(whole.nngp, whole.nngp.T)


def test_float32_inputs_give_float64_kernels_without_nan():
    # A deep erf net in float32 would saturate; kernels are computed in float64.
    x = torch.from_numpy(_inputs()).float()
    k = _mlp(nn.Erf, 30, 3.0, 0.5).kernel(x)
    assert k.nngp.dtype == torch.float64
    assert torch.isfinite(k.nngp).all() and torch.isfinite(k.ntk).all()


def _leaky_formula(q1, q2, c, a, b):
    """E[phi(u)phi(u')] for phi = a min(x,0) + b max(x,0) by 2-D quadrature (scipy)."""
    from scipy import integrate

    def f(z2, z1):
        u = math.sqrt(q1) * z1
        v = (
            math.sqrt(q2) * (c / math.sqrt(q1 * q2) * z1)
            + math.sqrt(q2 * (1 - c * c / (q1 * q2))) * z2
        )
        phi = (a * min(u, 0) + b * max(u, 0)) * (a * min(v, 0) + b * max(v, 0))
        return phi * math.exp(-(z1 * z1 + z2 * z2) / 2) / (2 * math.pi)

    val, err = integrate.dblquad(f, -10, 0, -10, 10, epsabs=1e-11)
    val2, err2 = integrate.dblquad(f, 0, 10, -10, 10, epsabs=1e-11)
    return val + val2


@pytest.mark.parametrize(
    "layer,a,b", [(nn.LeakyRelu(0.2), 0.2, 1.0), (nn.Abs(), -1, 1)]
)
def test_abrelu_family_against_quadrature(layer, a, b):
    # One layer on a 2-point input: entries are E[phi phi'] with q = 1.3, 0.8.
    x = torch.tensor([[1.3**0.5, 0.0], [0.5, 0.55**0.5]], dtype=torch.float64)
    k = nn.serial(nn.Dense(4, W_std=2**0.5), layer).kernel(x)
    q1, q2, c = 1.3, 0.8, (1.3**0.5) * 0.5
    # dblquad's absolute error request 1e-11; the truncation at |z| = 10 is ~1e-22.
    assert abs(float(k.nngp[0, 1]) - _leaky_formula(q1, q2, c, a, b)) < 1e-8
    assert abs(float(k.nngp[0, 0]) - (a * a + b * b) / 2 * q1) < 1e-12


def test_standard_parametrization_ntk_follows_fan_in():
    # Standard parametrization: the NNGP is the NTK one; the NTK gains fan_in per
    # weight layer (d/dW_ij h_i = x_j) and 1 per bias, as in neural-tangents.
    x = torch.from_numpy(_inputs(d=3))
    std = nn.serial(
        nn.Dense(50, W_std=1.5, b_std=0.2, parametrization="standard"),
        nn.Relu(),
        nn.Dense(1, W_std=1.5, b_std=0.2, parametrization="standard"),
    )
    ntk = nn.serial(
        nn.Dense(50, W_std=1.5, b_std=0.2), nn.Relu(), nn.Dense(1, 1.5, 0.2)
    )
    ks, kn = std.kernel(x), ntk.kernel(x)
    torch.testing.assert_close(ks.nngp, kn.nngp, rtol=1e-14, atol=1e-14)
    xx = x @ x.T / 3
    s1 = 1.5**2 * xx + 0.04
    q = torch.sqrt(torch.outer(s1.diag(), s1.diag()))
    theta = torch.acos((s1 / q).clamp(-1, 1))
    e = q * (torch.sin(theta) + (math.pi - theta) * torch.cos(theta)) / (2 * math.pi)
    edot = (math.pi - theta) / (2 * math.pi)
    ntk1 = 3 * xx + 1  # layer 1: fan_in = d = 3, one bias
    expected = 50 * e + 1.5**2 * edot * ntk1 + 1  # layer 2: fan_in = 50
    torch.testing.assert_close(ks.ntk, expected, rtol=1e-12, atol=1e-12)


def test_finite_width_ntk_and_nngp_approach_the_limit():
    torch.manual_seed(0)
    x = torch.from_numpy(_inputs(n=5, d=4))
    net = nn.serial(
        nn.Dense(1, W_std=1.5, b_std=0.1),
        nn.Erf(),
        nn.Dense(1, W_std=1.5, b_std=0.1),
        nn.Relu(),
        nn.Dense(1, W_std=1.2, b_std=0.1),
    )
    k = net.kernel(x)
    errors = []
    for width in (64, 1024):
        errs = []
        for seed in range(4):
            f = net.sample(width, seed=seed, input_shape=(4,))
            errs.append(float((empirical_ntk(f, x) - k.ntk).norm() / k.ntk.norm()))
        errors.append(np.mean(errs))
    # Fluctuations of the empirical NTK are ~ width^(-1/2): 16x the width should cut
    # the error by ~4; we ask for 2.5 to leave room for seed noise over 4 seeds.
    assert errors[1] < errors[0] / 2.5, errors
    assert errors[1] < 0.1, errors

    # NNGP: Monte Carlo over 40 seeds at width 256 (readout integrated exactly).
    # The empirical feature kernel fluctuates by ~ 1/sqrt(256) relative per seed, so
    # ~0.01 after averaging 40 seeds, plus an O(1/width) bias: 0.05 is generous.
    emp = empirical_nngp(net, x, 256, range(40), 1.2, 0.1)
    rel = float((emp - k.nngp).norm() / k.nngp.norm())
    assert rel < 0.05, rel
