"""predict and empirical kernels on networks described with tensorprograms.nn."""

import pytest
import torch
from relu_mlp import relu_kernels

from tensorprograms import nn
from tensorprograms.empirical import empirical_nngp, empirical_ntk
from tensorprograms.predict import MSEEnsemble, gradient_descent_mse_ensemble

F64 = torch.float64
W_STD, B_STD = 2**0.5, 0.1


def relu_mlp(depth):
    def dense(n):
        return nn.Dense(n, W_std=W_STD, b_std=B_STD)

    return nn.serial(*[dense(512), nn.Relu()] * depth, dense(1))


def test_ensemble_from_model_kernel_equals_the_independent_recursion():
    g = torch.Generator().manual_seed(0)
    x, xt = (
        torch.randn(10, 4, dtype=F64, generator=g),
        torch.randn(3, 4, dtype=F64, generator=g),
    )
    y = torch.randn(10, 2, dtype=F64, generator=g)
    predict = gradient_descent_mse_ensemble(
        relu_mlp(2).kernel, x, y, 0.05, discrete=True
    )
    nngp, ntk = relu_kernels(x, None, W_STD, B_STD, 2)
    nngp_tx, ntk_tx = relu_kernels(xt, x, W_STD, B_STD, 2)
    nngp_tt, _ = relu_kernels(xt, None, W_STD, B_STD, 2)
    want = MSEEnsemble(nngp, ntk, y, 0.05, discrete=True)
    for t in (7, None):
        got = predict(t, xt, "ntk", compute_cov=True)
        ref = want(
            t,
            nngp_test_train=nngp_tx,
            ntk_test_train=ntk_tx,
            nngp_test_test=nngp_tt,
            compute_cov=True,
        )
        # Both kernels are closed forms in float64; the t = inf solve has cond ~ 1e2.
        assert torch.allclose(got.mean, ref.mean, rtol=0, atol=1e-10)
        assert torch.allclose(got.covariance, ref.covariance, rtol=0, atol=1e-10)


def test_sampled_networks_approach_model_kernel():
    model = relu_mlp(1)
    x = torch.randn(5, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
    k = model.kernel(x)
    err = {}
    for width in (128, 2048):
        errs = [
            float(
                (empirical_ntk(model.sample(width, s), x) - k.ntk).norm() / k.ntk.norm()
            )
            for s in range(6)
        ]
        err[width] = sum(errs) / len(errs)
    # NTK fluctuations ~ width^-1/2: 16x the width, ~4x less.
    assert 2.0 < err[128] / err[2048] < 8.0, err
    mc = empirical_nngp(lambda s: model.sample(256, s), x, seeds=range(300))
    # One hidden layer: h^1 is exactly Gaussian, so E[f f'] is the NNGP at any width
    # and only Monte Carlo error remains (4.5 standard errors, 15 entries).
    assert bool(((mc.value - k.nngp).abs() < 4.5 * mc.stderr).all())


def test_near_duplicate_inputs_train_at_finite_time_and_need_a_ridge_at_infinity():
    # Inputs 1e-7..1e-12 apart: the relu NTK's angles arccos(rho) near rho = 1 are
    # accurate to ~sqrt(eps), so the kernel has eigenvalues ~ -1e-9 lambda_max. It is
    # a PSD kernel up to rounding: finite times must work; t = infinity must ask for
    # a ridge (the kernel is numerically singular), and work with one.
    g = torch.Generator().manual_seed(1)
    base = torch.randn(1, 4, dtype=F64, generator=g)
    scales = 10.0 ** -torch.arange(7, 13, dtype=F64)[:, None]
    x = base + scales * torch.randn(6, 4, dtype=F64, generator=g)
    y = torch.randn(6, 1, dtype=F64, generator=g)
    predict = gradient_descent_mse_ensemble(relu_mlp(4).kernel, x, y, 0.01)
    assert torch.linalg.eigvalsh(relu_mlp(4).kernel(x).ntk).min() < 0  # the point
    mean = predict(3.0, x[:2], compute_cov=True).mean
    assert bool(torch.isfinite(mean).all())
    with pytest.raises(ValueError, match="singular.*diag_reg"):
        predict(None, x[:2])
    ridge = gradient_descent_mse_ensemble(relu_mlp(4).kernel, x, y, 0.01, 1e-6)
    assert bool(torch.isfinite(ridge(None, x[:2])).all())
