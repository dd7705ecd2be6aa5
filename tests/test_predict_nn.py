"""predict and empirical kernels on networks described with tensorprograms.nn."""

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
