"""Batch norm (TP1): the integral formula against Monte Carlo and finite networks."""

import numpy as np
import pytest
import torch

from tensorprograms import nn


def _x(n, d, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, d)))


@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_batchnorm_kernel_against_monte_carlo(eps):
    x = _x(9, 8)
    k = nn.serial(nn.Dense(1, W_std=1.2, b_std=0.3), nn.BatchNorm(eps=eps)).kernel(x)
    k0 = (1.44 * x @ x.T / 8 + 0.09).numpy()  # Gaussian input kernel; ntk_in = k0
    b = 9
    rng = np.random.default_rng(1)
    z = rng.standard_normal((50_000, b)) @ np.linalg.cholesky(k0).T
    u = z - z.mean(1, keepdims=True)
    r2 = (u * u).sum(1) + b * eps
    y = np.sqrt(b) * u / np.sqrt(r2)[:, None]
    g = np.eye(b) - 1 / b
    jac = np.sqrt(b / r2)[:, None, None] * (
        g - u[:, :, None] * u[:, None, :] / r2[:, None, None]
    )
    samples = {
        "nngp": y[:, :, None] * y[:, None, :],
        "ntk": np.einsum("nac,cd,nbd->nab", jac, k0, jac),
    }
    for name, vals in samples.items():
        mean = vals.mean(0)
        se = vals.std(0) / np.sqrt(len(vals))
        got = getattr(k, name).numpy()
        # Monte Carlo with 5e4 samples: within 5 standard errors entrywise.
        assert np.all(np.abs(got - mean) < 5 * se + 1e-12), name


def _batch_ntk(f, x):
    params = list(f.parameters())
    out = f(x)[:, 0]
    rows = []
    for a in range(x.shape[0]):
        grads = torch.autograd.grad(out[a], params, retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    jac = torch.stack(rows)
    return (jac @ jac.T).detach()


def test_batchnorm_network_finite_width():
    # 8 inputs in 10 dimensions: the centred batch kernel has full rank 7, so the
    # per-unit Jacobians ~ 1/|u| have finite variance (rank <= 4 gives heavy tails
    # and erratic convergence).
    x = _x(8, 10, seed=2)
    net = nn.serial(
        nn.Dense(1, W_std=1.3, b_std=0.2),
        nn.BatchNorm(eps=1e-5),
        nn.Dense(1, W_std=1.1, b_std=0.1),
    )
    k = net.kernel(x)
    errors = []
    for width in (32, 2048):
        errs = [
            float(
                (
                    _batch_ntk(net.sample(width, seed=s, input_shape=(10,)), x) - k.ntk
                ).norm()
                / k.ntk.norm()
            )
            for s in range(3)
        ]
        errors.append(np.mean(errs))
    # ~ width^(-1/2): 64x the width, a factor ~8 expected (measured on one seed:
    # 0.20, 0.09, 0.08, 0.04 at widths 32, 128, 512, 2048); 3 asked.
    assert errors[1] < errors[0] / 3, errors


def test_batchnorm_errors():
    x = _x(3, 2)
    net = nn.serial(nn.Dense(1), nn.BatchNorm(eps=0.0), nn.Dense(1))
    with pytest.raises(ValueError, match=r"layer 1 \(BatchNorm\).*rank 2 <= 2"):
        net.kernel(x)
    with pytest.raises(ValueError, match="x2=None"):
        net.kernel(x, x)
    with pytest.raises(ValueError, match="not Gaussian"):
        nn.serial(nn.Dense(1), nn.Relu(), nn.BatchNorm()).kernel(x)
