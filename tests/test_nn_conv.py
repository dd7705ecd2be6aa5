"""Conv, pooling and flattening kernels against brute-force sums and finite nets."""

import itertools

import numpy as np
import pytest
import torch
from _nn_helpers import empirical_nngp, empirical_ntk

from tensorprograms import nn

# Brute-force loops and the vectorised tiles add the same float64 terms in another
# order: agreement to 1e-12 is rounding.
TOL = 1e-12


def _x(shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape))


def _pads(n, k, s, padding):  # CIRCULAR: SAME's padding, positions mod n
    if padding == "VALID":
        return (n - k) // s + 1, 0
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return out, total // 2


def _nt_layout(k):
    """(N1, N2, *i, *j) -> (N1, N2, i1, j1, i2, j2, ...): the layout of kernels with
    spatial outputs (neural-tangents'; the same array for one spatial axis)."""
    nd = (k.ndim - 2) // 2
    return k.transpose(0, 1, *(a for t in range(nd) for a in (2 + t, 2 + nd + t)))


def _brute_conv(x, filt, strides, padding, w, b):
    """nngp[a, c, i, j] of one conv layer by explicit loops over positions."""
    x = x.numpy()
    n_in, spatial, chans = x.shape[0], x.shape[1:-1], x.shape[-1]
    geo = [_pads(n, k, s, padding) for n, k, s in zip(spatial, filt, strides)]
    out_shape = tuple(g[0] for g in geo)
    ksize = int(np.prod(filt))
    res = np.zeros((n_in, n_in, *out_shape, *out_shape))
    for a, c in itertools.product(range(n_in), repeat=2):
        for i in itertools.product(*map(range, out_shape)):
            for j in itertools.product(*map(range, out_shape)):
                tot = 0.0
                for o in itertools.product(*map(range, filt)):
                    pi = [
                        ii * s + oo - g[1] for ii, s, oo, g in zip(i, strides, o, geo)
                    ]
                    pj = [
                        jj * s + oo - g[1] for jj, s, oo, g in zip(j, strides, o, geo)
                    ]
                    if padding == "CIRCULAR":
                        pi = [p % n for p, n in zip(pi, spatial)]
                        pj = [p % n for p, n in zip(pj, spatial)]
                    if all(0 <= p < n for p, n in zip(pi + pj, spatial + spatial)):
                        tot += x[(a, *pi)] @ x[(c, *pj)] / chans
                res[(a, c, *i, *j)] = w * w * tot / ksize + b * b
    return res


@pytest.mark.parametrize("padding", ["SAME", "VALID", "CIRCULAR"])
@pytest.mark.parametrize(
    "shape,filt,strides",
    [
        ((7, 2), (3,), (1,)),
        ((6, 2), (2,), (2,)),
        ((4, 5, 2), (3, 2), (2, 1)),
        ((3, 2), (3,), (1,)),  # CIRCULAR: a pad as wide as the image
    ],
)
def test_conv_matches_brute_force(padding, shape, filt, strides):
    x = _x((3, *shape))
    layer = nn.Conv(4, filt, strides=strides, padding=padding, W_std=1.3, b_std=0.2)
    k = layer.kernel(x)
    expected = _nt_layout(_brute_conv(x, filt, strides, padding, 1.3, 0.2))
    np.testing.assert_allclose(k.nngp.numpy(), expected, rtol=0, atol=TOL)
    # NTK parametrization, first layer: ntk = nngp (inputs carry no parameters).
    np.testing.assert_allclose(k.ntk.numpy(), expected, rtol=0, atol=TOL)
    # A second layer runs the covariance rule (not the first layer's patches).
    net = nn.serial(nn.Dense(3), layer)
    second = _nt_layout(_brute_conv(x, filt, strides, padding, 1.3, 0.2))
    np.testing.assert_allclose(net.kernel(x).nngp.numpy(), second, rtol=0, atol=TOL)


def test_pooling_and_flatten_match_brute_force():
    x = _x((3, 5, 4, 2))
    xn = x.numpy()
    cov = np.einsum("aijc,bklc->abijkl", xn, xn) / 2  # (a, b, i1, i2, j1, j2)

    pooled = nn.AvgPool((2, 2), strides=(2, 1), padding="SAME").kernel(x).nngp.numpy()
    # SAME: output 3 x 4, padding (0, 1) on the first axis and (0, 1) on the second;
    # every output divides by the full window 4, padded zeros included.
    pad = np.zeros((3, 3, 6, 5, 6, 5))
    pad[:, :, :5, :4, :5, :4] = cov
    expected = np.zeros((3, 3, 3, 4, 3, 4))
    for i1, i2, j1, j2 in itertools.product(range(3), range(4), range(3), range(4)):
        win1 = pad[:, :, 2 * i1 : 2 * i1 + 2, i2 : i2 + 2]
        win = win1[..., 2 * j1 : 2 * j1 + 2, j2 : j2 + 2]
        expected[:, :, i1, i2, j1, j2] = win.sum(axis=(2, 3, 4, 5)) / 16
    np.testing.assert_allclose(pooled, _nt_layout(expected), rtol=0, atol=TOL)
    # normalize_edges: each output divided by its taps inside the image; the
    # first axis has 2, 2, 1 of them, the second 2, 2, 2, 1.
    edges = nn.AvgPool((2, 2), (2, 1), "SAME", normalize_edges=True).kernel(x)
    taps = np.outer([2, 2, 1], [2, 2, 2, 1]).astype(float)
    rescale = 16 / np.einsum("ij,kl->ijkl", taps, taps)
    np.testing.assert_allclose(
        edges.nngp.numpy(), _nt_layout(expected * rescale), rtol=0, atol=TOL
    )

    gap = nn.GlobalAvgPool().kernel(x).nngp.numpy()
    means = xn.mean(axis=(1, 2))
    np.testing.assert_allclose(gap, means @ means.T / 2, rtol=0, atol=TOL)

    flat = nn.Flatten().kernel(x).nngp.numpy()
    xf = xn.reshape(3, -1)
    np.testing.assert_allclose(flat, xf @ xf.T / xf.shape[1], rtol=0, atol=TOL)


@pytest.mark.parametrize("head", ["flatten", "gap"])
def test_conv_net_finite_width_approaches_limit(head):
    x = _x((4, 6, 5, 2), seed=1)
    readout = [nn.Flatten()] if head == "flatten" else [nn.GlobalAvgPool()]
    net = nn.serial(
        nn.Conv(1, (3, 3), padding="SAME", W_std=1.5, b_std=0.1),
        nn.Relu(),
        nn.Conv(1, (2, 2), strides=(2, 2), padding="VALID", W_std=1.5),
        nn.Erf(),
        *readout,
        nn.Dense(1, W_std=1.2, b_std=0.1),
    )
    k = net.kernel(x)
    errors = []
    for width in (16, 256):
        errs = []
        for seed in range(3):
            f = net.sample(width, seed=seed, input_shape=x.shape[1:])
            emp = empirical_ntk(f, x)
            errs.append(float((emp - k.ntk).norm() / k.ntk.norm()))
        errors.append(np.mean(errs))
    # Error ~ width^(-1/2): 16x the width should divide it by ~4; ask for 2.5.
    assert errors[1] < errors[0] / 2.5, errors

    # NNGP: 20 seeds at width 64, readout integrated exactly. One seed's feature
    # kernel deviates by ~0.2 relative at this width (global pooling over 4 positions
    # averages little), so the 20-seed mean is within ~0.05; 0.12 is 2.5 of those.
    emp = empirical_nngp(net, x, 64, range(20), 1.2, 0.1)
    assert float((emp - k.nngp).norm() / k.nngp.norm()) < 0.12


@pytest.mark.parametrize(
    "padding,edges", [("SAME", False), ("CIRCULAR", False), ("SAME", True)]
)
def test_linear_conv_net_is_exact_at_any_width(padding, edges):
    # Without nonlinearities E_W[f f'] equals the limit at every width: Monte Carlo
    # over 2000 seeds of a width-3 network then matches up to its standard error.
    x = _x((3, 5, 2), seed=2)
    net = nn.serial(
        nn.Conv(3, (2,), padding=padding, W_std=1.1, b_std=0.3),
        nn.AvgPool((3,), strides=(2,), padding=padding, normalize_edges=edges),
        nn.Flatten(),
        nn.Dense(1),
    )
    k = net.kernel(x)
    with torch.no_grad():
        outs = torch.stack(
            [net.sample(3, seed=s, input_shape=(5, 2))(x)[:, 0] for s in range(2000)]
        )
    emp = outs.T @ outs / 2000
    # Standard error of a second moment of Gaussians: sqrt((K_aa K_bb + K_ab^2) / n).
    se = torch.sqrt((torch.outer(k.nngp.diag(), k.nngp.diag()) + k.nngp**2) / 2000)
    assert bool(((emp - k.nngp).abs() < 4 * se).all())


def test_tiled_kernels_with_cached_variances_match_one_tile():
    # K(x, x) in tiles: diagonal tiles record each layer's variances and the cross
    # tiles reuse them instead of recomputing the self covariances.
    x = _x((5, 6, 5, 2), seed=3)
    net = nn.serial(
        nn.Conv(1, (3, 3), padding="SAME", W_std=1.5, b_std=0.1),
        nn.Relu(),
        nn.AvgPool((2, 2)),
        nn.Conv(1, (2, 2), strides=(2, 2), W_std=1.5),
        nn.Erf(),
        nn.GlobalAvgPool(),
        nn.Dense(1),
    )
    whole = net.kernel(x)
    for block in (1, 2):
        tiled = net.kernel(x, block_size=block)
        torch.testing.assert_close(tiled.nngp, whole.nngp, rtol=0, atol=1e-13)
        torch.testing.assert_close(tiled.ntk, whole.ntk, rtol=0, atol=1e-13)


@pytest.mark.parametrize("act", [nn.Relu(), nn.LeakyRelu(0.2)])
def test_activation_then_global_pool_fused_matches_unfused(act):
    # serial reduces a closed-form activation's dual kernels straight into the
    # global average (never writing them); an Identity in between turns that off,
    # so both paths must agree up to summation order (~1e-16 relative).
    x, x2 = _x((4, 5, 4, 2), seed=5), _x((3, 5, 4, 2), seed=6)
    conv = nn.Conv(1, (3, 3), padding="SAME", W_std=1.4, b_std=0.2)
    fused = nn.serial(conv, act, nn.GlobalAvgPool(), nn.Dense(1))
    plain = nn.serial(conv, act, nn.Identity(), nn.GlobalAvgPool(), nn.Dense(1))
    for args, kw in (((x,), {}), ((x,), {"block_size": 1}), ((x, x2), {})):
        a, b = fused.kernel(*args, **kw), plain.kernel(*args, **kw)
        torch.testing.assert_close(a.nngp, b.nngp, rtol=1e-13, atol=0)
        torch.testing.assert_close(a.ntk, b.ntk, rtol=1e-13, atol=0)
