"""predict: closed forms against explicit iteration, expm, linear solves, Monte Carlo
over initialisations of linear models, and trained finite-width relu networks."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from relu_mlp import NTKMLP, relu_kernels

from tensorprograms.predict import (
    Gaussian,
    MSEEnsemble,
    gp_inference,
    gradient_descent,
    gradient_descent_mse,
    gradient_descent_mse_ensemble,
    max_learning_rate,
)

F64 = torch.float64
# Closed forms in the eigenbasis vs iteration / expm / solve on well-conditioned
# (cond < 1e3) 6x6 kernels: float64 rounding amplified by cond stays below 1e-10.
TOL = 1e-10


def features(n, p, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, p, dtype=F64, generator=g)


def kernels(n_train=6, n_test=3, p=12, seed=0):
    """Joint PSD kernels of train and test points from random features."""
    phi = features(n_train + n_test, p, seed)
    k = phi @ phi.T / p + 0.2 * torch.eye(n_train + n_test, dtype=F64)
    return k[:n_train, :n_train], k[n_train:, :n_train], k[n_train:, n_train:]


def targets(n, o=2, seed=1):
    return features(n, o, seed)


# ---------------------------------------------------------------------------
# MSE, one network


@pytest.mark.parametrize("eta_scale", [0.5, 1.7])  # monotone and oscillating
@pytest.mark.parametrize("diag_reg", [0.0, 0.1])
def test_gradient_descent_steps_equal_explicit_iteration(eta_scale, diag_reg):
    k, kx, _ = kernels()
    y = targets(6)
    f0, fx0 = targets(6, seed=2), targets(3, seed=3)
    kr = k + diag_reg * k.diagonal().mean() * torch.eye(6, dtype=F64)
    eta = eta_scale / float(torch.linalg.eigvalsh(kr).max())
    predict = gradient_descent_mse(k, y, eta, diag_reg, discrete=True)
    steps = [0, 1, 5, 37]
    got_train, got_test = predict(steps, f0, fx0, kx)
    assert got_train.shape == (4, 6, 2) and got_test.shape == (4, 3, 2)
    f, fx = f0.clone(), fx0.clone()
    for s in range(max(steps) + 1):
        if s in steps:
            i = steps.index(s)
            assert torch.allclose(got_train[i], f, rtol=0, atol=TOL)
            assert torch.allclose(got_test[i], fx, rtol=0, atol=TOL)
        fx = fx - eta * kx @ (f - y)
        f = f - eta * kr @ (f - y)
    one = predict(5, f0, fx0, kx)  # a scalar time has no time axis
    assert one[0].shape == (6, 2) and torch.allclose(one[1], got_test[2], atol=0)


def test_gradient_flow_equals_expm_even_for_a_singular_kernel():
    phi = features(9, 4, seed=4)  # rank 4 < 6 train points: K is singular
    kall = phi @ phi.T / 4
    k, kx = kall[:6, :6], kall[6:, :6]
    y, f0, fx0 = targets(6), targets(6, seed=2), targets(3, seed=3)
    eta, t = 0.3, 2.5
    predict = gradient_descent_mse(k, y, eta)
    got_train, got_test = predict(t, f0, fx0, kx)
    tau = eta * t
    want_train = y + torch.as_tensor(scipy.linalg.expm(-tau * k.numpy())) @ (f0 - y)
    # int_0^tau exp(-s K) ds: the top-right block of expm([[-K, I], [0, 0]] tau).
    block = np.block([[-k.numpy(), np.eye(6)], [np.zeros((6, 6)), np.zeros((6, 6))]])
    integral = torch.as_tensor(scipy.linalg.expm(tau * block)[:6, 6:])
    want_test = fx0 - kx @ integral @ (f0 - y)
    assert torch.allclose(got_train, want_train, rtol=0, atol=TOL)
    assert torch.allclose(got_test, want_test, rtol=0, atol=TOL)
    with pytest.raises(ValueError, match=r"k_train_train is singular .*diag_reg"):
        predict(None, f0, fx0, kx)


def test_infinite_time_is_kernel_regression():
    k, kx, _ = kernels()
    y, f0, fx0 = targets(6), targets(6, seed=2), targets(3, seed=3)
    want = fx0 + kx @ torch.linalg.solve(k, y - f0)
    for discrete in (False, True):
        predict = gradient_descent_mse(k, y, 0.1, discrete=discrete)
        train, test = predict(None, f0, fx0, kx)
        assert torch.allclose(train, y, rtol=0, atol=TOL)
        assert torch.allclose(test, want, rtol=0, atol=TOL)
        both = predict([1.0, math.inf], f0, fx0, kx)[1]
        assert torch.allclose(both[1], want, rtol=0, atol=TOL)
    ridge = gradient_descent_mse(k, y, diag_reg=1e-3, diag_reg_absolute_scale=True)
    want = fx0 + kx @ torch.linalg.solve(k + 1e-3 * torch.eye(6, dtype=F64), y - f0)
    assert torch.allclose(ridge(None, f0, fx0, kx)[1], want, rtol=0, atol=TOL)


def test_bad_kernels_and_arguments_are_named():
    k, kx, _ = kernels()
    y = targets(6)
    indefinite = k - 2 * float(torch.linalg.eigvalsh(k).min()) * torch.eye(6, dtype=F64)
    with pytest.raises(ValueError, match="not positive semi-definite"):
        gradient_descent_mse(indefinite, y)(1.0)
    with pytest.raises(ValueError, match="not positive semi-definite"):
        gp_inference(indefinite, y)
    nan = k.clone()
    nan[0, 1] = nan[1, 0] = float("nan")
    with pytest.raises(ValueError, match="k_train_train contains NaN"):
        gradient_descent_mse(nan, y)
    with pytest.raises(ValueError, match=r"y_train has 5 rows: expected \(5, 5\)"):
        gradient_descent_mse(k, y[:5])
    with pytest.raises(ValueError, match=r"y_train must have shape \(N, O\)"):
        gradient_descent_mse(k, y[:, 0])
    with pytest.raises(ValueError, match="not symmetric"):
        gradient_descent_mse(k + torch.triu(torch.ones(6, 6, dtype=F64), 1), y)
    with pytest.raises(ValueError, match=r"k_test_train must have shape \(M, 6\)"):
        gradient_descent_mse(k, y)(1.0, 0.0, targets(3), kx[:, :5])
    big = 3.0 / float(torch.linalg.eigvalsh(k).max())
    assert big > max_learning_rate(k)
    with pytest.warns(RuntimeWarning, match="gradient descent diverges"):
        gradient_descent_mse(k, y, big, discrete=True)(4)
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="overflowed"):
        gradient_descent_mse(k, y, big, discrete=True)(10**6)
    with pytest.raises(ValueError, match="no limit at t = infinity"):
        gradient_descent_mse(k, y, big, discrete=True)(None)
    with pytest.raises(ValueError, match="fractional steps"):
        gradient_descent_mse(k, y, 0.9 * max_learning_rate(k), discrete=True)(2.5)


# ---------------------------------------------------------------------------
# mean and covariance over initialisations


def test_nngp_posterior_equals_direct_solve_and_infinite_time_ensemble():
    k, kx, kxx = kernels()
    y = targets(6)
    for reg in (0.0, 0.05):
        kr = k + reg * k.diagonal().mean() * torch.eye(6, dtype=F64)
        post = gp_inference(k, y, diag_reg=reg)(kx, kxx)
        assert torch.allclose(post.mean, kx @ torch.linalg.solve(kr, y), atol=TOL)
        want_cov = kxx - kx @ torch.linalg.solve(kr, kx.T)
        assert torch.allclose(post.covariance, want_cov, atol=TOL)
        ens = MSEEnsemble(k, 2 * k, y, diag_reg=reg)(
            None, get="nngp", nngp_test_train=kx, nngp_test_test=kxx, compute_cov=True
        )
        assert torch.allclose(ens.mean, post.mean, atol=TOL)
        assert torch.allclose(ens.covariance, post.covariance, atol=TOL)


def random_feature_model(n_train=6, n_test=3, p=12, q=5, seed=0):
    """f(x) = a . phi(x) / sqrt(p) + b . psi(x) / sqrt(q), only a trained.

    a ~ N(0, sa^2 I), b ~ N(0, sb^2 I): NNGP K = sa^2 phi phi^T / p + sb^2 psi psi^T
    / q and NTK Theta = phi phi^T / p, exactly, at any p and q."""
    n = n_train + n_test
    phi, psi = features(n, p, seed), features(n, q, seed + 1)
    sa, sb = 0.8, 0.6
    nngp = sa**2 * phi @ phi.T / p + sb**2 * psi @ psi.T / q
    ntk = phi @ phi.T / p
    return phi, psi, sa, sb, nngp, ntk


def test_covariance_over_initialisations_by_monte_carlo():
    n, m, p, q, seeds = 6, 3, 12, 5, 20000
    phi, psi, sa, sb, nngp, ntk = random_feature_model(n, m, p, q)
    y = targets(n)
    gen = torch.Generator().manual_seed(11)
    a0 = sa * torch.randn(seeds, p, 2, dtype=F64, generator=gen)  # two output units
    b = sb * torch.randn(seeds, q, 2, dtype=F64, generator=gen)
    fixed = torch.einsum("iq,sqo->sio", psi, b) / q**0.5
    model = lambda a: torch.einsum("ip,spo->sio", phi, a) / p**0.5 + fixed  # noqa: E731

    def check(samples, g):
        # samples (S, n + m, O): test rows against the Gaussian prediction.
        test = samples[:, n:]
        mean, cov = (
            test.mean(0),
            torch.einsum("sio,sjo->ij", test - test.mean(0), test - test.mean(0))
            / (2 * seeds - 2),
        )
        sd = g.covariance.diagonal().clamp_min(0).sqrt()
        # Sample mean: standard error sqrt(C_ii / S); covariance (pooled over the two
        # outputs, 2S samples): sqrt((C_ii C_jj + C_ij^2) / 2S). 5 sigma, 27 entries.
        assert bool(
            ((mean - g.mean).abs() <= 5 * sd[:, None] / seeds**0.5 + 1e-12).all()
        )
        c = g.covariance
        se = torch.sqrt(
            (c.diagonal()[:, None] * c.diagonal()[None] + c**2) / (2 * seeds)
        )
        assert bool(((cov - c).abs() <= 5 * se + 1e-12).all())

    eta = 0.5 / float(torch.linalg.eigvalsh(ntk[:n, :n]).max())
    kw = dict(
        nngp_test_train=nngp[n:, :n],
        ntk_test_train=ntk[n:, :n],
        nngp_test_test=nngp[n:, n:],
        compute_cov=True,
    )

    # gradient descent on L = 1/2 sum (f(X) - Y)^2, step eta, parameters a only
    ens = MSEEnsemble(nngp[:n, :n], ntk[:n, :n], y, eta, discrete=True)
    a = a0.clone()
    for step in range(31):
        if step in (3, 30):
            check(model(a), ens(step, get="ntk", **kw))
        f = model(a)[:, :n]
        a = a - eta * torch.einsum("ip,sio->spo", phi[:n], f - y) / p**0.5

    # gradient flow: a(tau) = exp(-M tau) a0 + int_0^tau exp(-M s) ds c(b), solved
    # in parameter space with M = phi_X^T phi_X / p, c = phi_X^T (Y - psi_X b) / sqrt p
    tau = 4.0
    mm = (phi[:n].T @ phi[:n] / p).numpy()
    block = np.block([[-mm, np.eye(p)], [np.zeros((p, p)), np.zeros((p, p))]])
    big = torch.as_tensor(scipy.linalg.expm(tau * block))
    c = torch.einsum("ip,sio->spo", phi[:n], y - fixed[:, :n]) / p**0.5
    a_tau = big[:p, :p] @ a0 + big[:p, p:] @ c
    flow = MSEEnsemble(nngp[:n, :n], ntk[:n, :n], y, learning_rate=2.0)
    check(model(a_tau), flow(tau / 2.0, get="ntk", **kw))

    # the train set itself: mean (I - D) Y, covariance D K D
    g = flow(tau / 2.0, get="ntk", compute_cov=True)
    train = model(a_tau)[:, :n]
    sd = g.covariance.diagonal().sqrt()
    assert bool(((train.mean(0) - g.mean).abs() <= 5 * sd[:, None] / seeds**0.5).all())


def test_ensemble_from_a_kernel_function_and_infinite_time_train_set():
    phi, psi, sa, sb, nngp, ntk = random_feature_model()
    x = torch.arange(9)  # inputs are indices into the feature tables

    class K:
        def __init__(self, i, j):
            self.nngp, self.ntk = nngp[i][:, j], ntk[i][:, j]

    kernel_fn = lambda x1, x2: K(x1, x1 if x2 is None else x2)  # noqa: E731
    y = targets(6)
    predict = gradient_descent_mse_ensemble(kernel_fn, x[:6], y, learning_rate=0.7)
    g = predict(None, x[6:], "ntk", compute_cov=True)
    assert isinstance(g, Gaussian)
    direct = MSEEnsemble(nngp[:6, :6], ntk[:6, :6], y, 0.7)(
        None,
        nngp_test_train=nngp[6:, :6],
        ntk_test_train=ntk[6:, :6],
        nngp_test_test=nngp[6:, 6:],
        compute_cov=True,
    )
    assert torch.allclose(g.mean, direct.mean, atol=0) and torch.allclose(
        g.covariance, direct.covariance, atol=0
    )
    # kernel regression with Theta, and the covariance written out at t = inf
    a = ntk[6:, :6] @ torch.linalg.inv(ntk[:6, :6])
    assert torch.allclose(g.mean, a @ y, atol=TOL)
    want = nngp[6:, 6:] - a @ nngp[:6, 6:] - nngp[6:, :6] @ a.T + a @ nngp[:6, :6] @ a.T
    assert torch.allclose(g.covariance, want, atol=TOL)
    train = predict(None, None, "ntk", compute_cov=True)
    assert torch.allclose(train.mean, y, atol=TOL)
    assert torch.allclose(train.covariance, torch.zeros(6, 6, dtype=F64), atol=TOL)


# ---------------------------------------------------------------------------
# cross-entropy: the kernel ODE


def one_hot(n, c, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.one_hot(torch.randint(c, (n,), generator=g), c).to(F64)


def euler(k, kx, f0, fx0, y, tau, h):
    f, fx = f0.clone(), fx0.clone()
    for _ in range(round(tau / h)):
        g = torch.softmax(f, 1) - y
        f, fx = f - h * k @ g, fx - h * kx @ g
    return f, fx


def test_cross_entropy_flow_matches_small_step_euler():
    k, kx, _ = kernels(n_train=8, n_test=3)
    y = one_hot(8, 3, seed=5)
    f0, fx0 = 0.3 * targets(8, 3, seed=6), 0.3 * targets(3, 3, seed=7)
    eta, t = 0.5, 3.0  # tau = 1.5
    got = gradient_descent("cross_entropy", k, y, eta)(t, f0, fx0, kx)
    e1 = euler(k, kx, f0, fx0, y, eta * t, 2e-3)
    e2 = euler(k, kx, f0, fx0, y, eta * t, 1e-3)
    for g_, a1, a2 in zip(got, e1, e2):
        # Euler's error is ~ C h: at h = 1e-3 it is about |E(2h) - E(h)|.
        err = float((a1 - a2).abs().max())
        assert 0 < err < 1e-3
        assert float((g_ - a2).abs().max()) < 2 * err
        assert float((g_ - a2).abs().max()) > 0.2 * err  # the ODE is not Euler itself


def test_cross_entropy_steps_match_a_trained_linear_model():
    n, m, p, q = 8, 3, 12, 5
    phi, psi, sa, sb, nngp, ntk = random_feature_model(n, m, p, q, seed=3)
    y = one_hot(n, 3, seed=8)
    gen = torch.Generator().manual_seed(9)
    a = (sa * torch.randn(p, 3, dtype=F64, generator=gen)).requires_grad_(True)
    b = sb * torch.randn(q, 3, dtype=F64, generator=gen)
    f = lambda a: phi @ a / p**0.5 + psi @ b / q**0.5  # noqa: E731
    f0 = f(a).detach()
    eta, steps = 0.4, 25
    predict = gradient_descent("cross_entropy", ntk[:n, :n], y, eta, discrete=True)
    got_train, got_test = predict([10, steps], f0[:n], f0[n:], ntk[n:, :n])
    opt = torch.optim.SGD([a], lr=eta)
    for s in range(1, steps + 1):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(f(a)[:n], y.argmax(1), reduction="sum")
        loss.backward()
        opt.step()
        if s == 10:
            assert torch.allclose(got_train[0], f(a)[:n].detach(), atol=1e-12)
    # a linear model moves exactly by its (constant) NTK: rounding only
    assert torch.allclose(got_train[1], f(a)[:n].detach(), atol=1e-12)
    assert torch.allclose(got_test[1], f(a)[n:].detach(), atol=1e-12)


def test_ode_with_mse_and_callable_losses():
    k, kx, _ = kernels()
    y, f0, fx0 = targets(6), targets(6, seed=2), targets(3, seed=3)
    t = [0.0, 0.7, 2.0]
    ode = gradient_descent("mse", k, y, 0.8)(t, f0, fx0, kx)
    closed = gradient_descent_mse(k, y, 0.8)(t, f0, fx0, kx)
    for a, b in zip(ode, closed):
        assert torch.allclose(a, b, rtol=0, atol=1e-8)  # solver rtol 1e-9
    yc = one_hot(6, 2, seed=4)
    ce = lambda f, y: -(torch.log_softmax(f, 1) * y).sum()  # noqa: E731
    a = gradient_descent(ce, k, yc)(1.5, f0, fx0, kx)
    b = gradient_descent("cross_entropy", k, yc)(1.5, f0, fx0, kx)
    assert torch.allclose(a[0], b[0], atol=1e-10) and torch.allclose(
        a[1], b[1], atol=1e-10
    )
    with pytest.raises(ValueError, match="not supported"):
        gradient_descent("mse", k, y)(None)
    with pytest.raises(ValueError, match="loss must be one of"):
        gradient_descent("hinge", k, y)


# ---------------------------------------------------------------------------
# finite networks approach the prediction as width grows


def test_finite_relu_networks_approach_the_prediction():
    w_std, b_std = 2**0.5, 0.1
    g = torch.Generator().manual_seed(12)
    x, xt = (
        torch.randn(16, 4, dtype=F64, generator=g),
        torch.randn(8, 4, dtype=F64, generator=g),
    )
    y = torch.sin(x.sum(1, keepdim=True))
    _, k = relu_kernels(x, None, w_std, b_std, 1)
    _, kx = relu_kernels(xt, x, w_std, b_std, 1)
    eta = 1.0 / float(torch.linalg.eigvalsh(k).max())
    steps = [10, 40]
    predict = gradient_descent_mse(k, y, eta, discrete=True)
    errors = {}
    for width in (256, 1024, 4096):
        errs = []
        for seed in range(16):
            net = NTKMLP(4, width, 1, w_std, b_std, seed)
            with torch.no_grad():
                f0, ft0 = net(x), net(xt)
            want_train, want_test = predict(steps, f0, ft0, kx)
            opt = torch.optim.SGD(net.parameters(), lr=eta)
            for s in range(1, max(steps) + 1):
                opt.zero_grad()
                (0.5 * ((net(x) - y) ** 2).sum()).backward()
                opt.step()
                if s in steps:
                    i = steps.index(s)
                    with torch.no_grad():
                        diff = torch.cat(
                            [net(x) - want_train[i], net(xt) - want_test[i]]
                        )
                    errs.append(float(diff.pow(2).mean()))
        errors[width] = math.sqrt(sum(errs) / len(errs))  # rms over seeds, times
    # The deviation from the infinite-width dynamics shrinks like n^-1/2: x4 per 16x.
    assert errors[256] > errors[1024] > errors[4096]
    # Measured ratios over five disjoint sets of 16 seeds: 3.1 to 5.0.
    assert errors[256] / errors[4096] > 2.0, errors
