"""The Master Theorem reader against closed forms, random-matrix laws and simulation."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate

import tensorprograms as tp


def _gauss_expect(fn, q=1.0):
    """E[fn(sqrt(q) z)], z ~ N(0, 1), by scipy's adaptive quadrature (independent)."""
    dens = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    return integrate.quad(lambda z: fn(math.sqrt(q) * z) * dens(z), -12, 12, limit=200)[
        0
    ]


# ---------------------------------------------------------------------------- linear


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_semicircle_moments_are_catalan_numbers(k):
    # A = (W + W^T)/sqrt(2): (1/n) x^T A^(2k) x = |A^k x|^2 / n -> Catalan C_k.
    p = tp.Program()
    x = p.vector("x")
    W = p.matrix("W")
    y = x
    for _ in range(k):
        y = (W @ y + W.T @ y) * 2**-0.5
    s = p.moment(y * y)
    res = tp.limit(p)
    catalan = math.comb(2 * k, k) // (k + 1)
    assert float(res[s]) == pytest.approx(catalan, rel=1e-12)
    assert res.estimate(s).method == "exact"  # no integration anywhere


def _narayana_moment(k, lam):
    # m_k = sum_j N(k, j) lam^j with N(k, j) = C(k, j) C(k, j - 1) / k.
    return sum(
        math.comb(k, j) * math.comb(k, j - 1) / k * lam**j for j in range(1, k + 1)
    )


@pytest.mark.parametrize("lam", [0.5, 1.0, 3.0])
def test_rectangular_marchenko_pastur_moments(lam):
    # W of shape (lam n) x n, entries N(0, 1/n): (1/n) x^T (W^T W)^k x -> Narayana.
    p = tp.Program()
    x = p.vector("x")
    W = p.matrix("W", shape=(lam, 1.0))
    y, moments = x, []
    for _ in range(4):
        y = W.T @ (W @ y)
        moments.append(p.moment(x * y))
    res = tp.limit(p)
    for k, s in enumerate(moments, start=1):
        assert float(res[s]) == pytest.approx(_narayana_moment(k, lam), rel=1e-12)
        assert res.estimate(s).method == "exact"


def test_zdot_is_what_makes_linear_transposes_right():
    p = tp.Program()
    x = p.vector("x")
    W = p.matrix("W")
    y = W.T @ (W @ x)
    res = tp.limit(p)
    # Z^y = ZHat + ZDot with ZDot = Z^x: E[Z^y Z^x] = 1 comes entirely from ZDot.
    assert "Z[x]" in res[y].expr
    assert float(res.kernel(y, x)) == pytest.approx(1.0, abs=1e-14)


# ------------------------------------------------------------------------- nonlinear


def _sanity_program(phi, tied=True):
    # THEORY sanity case: u = W^T v, x = phi(u), z = W x (or U x with U independent).
    p = tp.Program()
    v = p.vector("v")
    W = p.matrix("W")
    U = W if tied else p.matrix("U")
    u = W.T @ v
    z = U @ phi(u)
    return p, p.moment(z * v)


def test_zdot_sanity_case_tanh():
    p, s = _sanity_program(tp.tanh)
    res = tp.limit(p)
    # E[Z^z Z^v] = E[phi'(Z^u)] E[(Z^v)^2] with Z^u ~ N(0, 1).
    expected = _gauss_expect(lambda t: 1 - math.tanh(t) ** 2)
    assert float(res[s]) == pytest.approx(expected, abs=1e-9)
    assert float(res.estimate(s).error) < 1e-9


def test_tied_vs_independent_transpose_finite_and_limit():
    # Nonzero ZDot: tying W and W^T changes the answer; the finite runs agree.
    tied, s_tied = _sanity_program(tp.relu)
    free, s_free = _sanity_program(tp.relu, tied=False)
    lim_tied = float(tp.limit(tied)[s_tied])
    lim_free = float(tp.limit(free)[s_free])
    assert lim_tied == pytest.approx(0.5, abs=1e-12)  # E[step(Z)] = 1/2
    assert lim_free == 0.0
    fin_tied = tp.run(tied, width=2048, seeds=range(8))[s_tied]
    fin_free = tp.run(free, width=2048, seeds=range(8))[s_free]
    # Per-seed fluctuations are O(n^-1/2) ~ 0.03; the mean over 8 seeds ~ 0.01.
    assert abs(float(fin_tied.mean()) - lim_tied) < 0.05
    assert abs(float(fin_free.mean()) - lim_free) < 0.05
    assert abs(float(fin_tied.mean()) - float(fin_free.mean())) > 0.3


def _backward_program(tied: bool, phi=tp.tanh):
    """Backward pass of a 2-hidden-layer net with a readout v used once."""
    p = tp.Program()
    h1, v = p.vector("h1", var=1.3), p.vector("v")
    W = p.matrix("W", var=2.0)
    U = W if tied else p.matrix("U", var=2.0)
    x1 = phi(h1)
    h2 = W @ x1
    dphi = phi.derivative()
    dh2 = v * dphi(h2)
    dx1 = U.T @ dh2
    dh1 = dx1 * dphi(h1)
    return p, [p.moment(dh1 * dh1), p.moment(dx1 * dx1), p.moment(dx1 * x1)]


def test_gradient_independence_backward_pass():
    # TP2: with a zero-mean readout used once, ZDot of the backward pass vanishes,
    # so tying W^T to W or using an independent copy gives the same limit.
    tied, s_tied = _backward_program(True)
    free, s_free = _backward_program(False)
    lt, lf = tp.limit(tied), tp.limit(free)
    for a, b in zip(s_tied, s_free):
        assert float(lt[a]) == pytest.approx(float(lf[b]), abs=1e-9)
    # Independent closed form: E[dx1^2] = 2 E[v^2] E[tanh'(h2)^2],
    # h2 ~ N(0, 2 E[tanh^2]).
    q2 = 2.0 * _gauss_expect(lambda t: math.tanh(t) ** 2, 1.3)
    e_dx1 = 2.0 * _gauss_expect(lambda t: (1 - math.tanh(t) ** 2) ** 2, q2)
    assert float(lt[s_tied[1]]) == pytest.approx(e_dx1, abs=1e-8)
    # Finite widths, tied and untied, agree with it (8 seeds at n=2048; per-seed sd
    # ~ 0.05 for these O(1) moments, so 0.05 is > 3 standard errors of the mean).
    for prog, ss in ((tied, s_tied), (free, s_free)):
        fin = tp.run(prog, width=2048, seeds=range(8))
        assert abs(float(fin[ss[1]].mean()) - e_dx1) < 0.05
        assert abs(float(fin[ss[2]].mean())) < 0.05


# -------------------------------------------------------------------------- lanes


def test_batched_relu_kernel_is_the_arc_cosine_kernel():
    X = torch.tensor(
        [[1.0, 0.0, 0.5], [0.2, -1.0, 0.3], [0.0, 0.4, -2.0]], dtype=torch.float64
    )
    K0 = X @ X.T / 3
    p = tp.Program()
    h = p.vector("h", cov=K0)
    W = p.matrix("W", var=2.0)
    h2 = W @ tp.relu(h)
    res = tp.limit(p)
    K = res.kernel(h2)
    q = torch.diagonal(K0)
    rho = (K0 / torch.sqrt(q[:, None] * q[None, :])).clamp(-1, 1)
    th = torch.arccos(rho)
    arc = torch.sqrt(q[:, None] * q[None, :]) * (torch.sin(th) + (math.pi - th) * rho)
    assert torch.allclose(K, 2.0 * arc / (2 * math.pi), atol=1e-12)
    fin = tp.run(p, width=4096, seeds=range(4)).kernel(h2).mean(0)
    # Kernel entries O(1); sd per seed ~ sqrt(2/4096) ~ 0.02, averaged over 4 seeds.
    assert torch.allclose(fin, K, atol=0.06)


def test_scalar_arguments_and_scale():
    p = tp.Program()
    x = p.vector("x", var=2.0)
    c = p.scalar("c", 3.0)
    theta = p.moment(x * x)  # -> 2
    y = p.nonlin(lambda t, a, b: torch.tanh(a * t) * b, x, scalars=[theta, c])
    z = x * (theta / 4.0)  # Scale by a scalar of the program -> Z^x / 2
    s1, s2 = p.moment(y * y), p.moment(z * z)
    res = tp.limit(p)
    assert float(res[theta]) == pytest.approx(2.0, abs=1e-14)
    expected = 9.0 * _gauss_expect(lambda t: math.tanh(2.0 * t) ** 2, 2.0)
    assert float(res[s1]) == pytest.approx(expected, abs=1e-9)
    assert float(res[s2]) == pytest.approx(0.5, abs=1e-14)
    fin = tp.run(p, width=20000, seeds=range(3))
    assert abs(float(fin[s1].mean()) - expected) < 0.05


def test_high_dimension_goes_to_monte_carlo_with_an_honest_error():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(4, 4))
    C = torch.tensor(A @ A.T / 4 + 0.5 * np.eye(4))
    p = tp.Program()
    xs = p.vectors(["a", "b", "c", "d"], cov=C)
    prod = xs[0] * xs[1] * xs[2] * xs[3]  # nested products: four Gaussian leaves
    s = p.moment(prod)
    est = tp.limit(p, mc_samples=2**16).estimate(s)
    isserlis = float(C[0, 1] * C[2, 3] + C[0, 2] * C[1, 3] + C[0, 3] * C[1, 2])
    assert est.method == "monte carlo"
    assert 0 < float(est.error) < 0.1
    assert abs(float(est.value) - isserlis) < 5 * float(est.error)


def test_result_indexing_and_errors():
    p = tp.Program()
    x = p.vector("x")
    W = p.matrix("W")
    y = W @ x
    res = tp.limit(p)
    assert res["x"].kernel().shape == (1, 1)
    with pytest.raises(KeyError, match="matrix"):
        res[W]
    with pytest.raises(KeyError, match="not a value"):
        res[tp.Program().vector("z")]
    assert "ZHat" in repr(res[y])


def test_generic_zdot_through_a_two_argument_function_with_lanes():
    # ZDot of W a with a = sigmoid(W^T v) * tanh(W^T v + x): the derivative
    # E[da / dZHat] has no closed form and goes through autograd quadrature.
    X = torch.randn(
        3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    p = tp.Program()
    x = p.vector("x", cov=X @ X.T / 5)
    v = p.vector("v")
    W = p.matrix("W")
    u = W.T @ v
    z = W @ (tp.sigmoid(u) * tp.tanh(u + x))
    g = W.T @ tp.relu(z)
    scalars = [p.moment(z * v), p.moment(g * g), p.moment(g * u)]
    res = tp.limit(p)
    fin = tp.run(p, width=4096, seeds=range(4))
    for s in scalars:
        lim = res.estimate(s)
        assert lim.value.shape == (3,) and float(lim.error.max()) < 1e-3
        # Per-seed sd at n=4096 is ~0.01, so the mean of 4 seeds is within ~0.005
        # (plus an O(1/n) bias); 0.02 is four of those standard errors.
        assert torch.allclose(fin[s].mean(0), lim.value, atol=0.02)
    # The ZDot term is what makes E[Z^z Z^v] nonzero: about 0.21-0.25 per lane.
    assert float(res[scalars[0]].min()) > 0.15


def test_integration_errors_of_scalars_propagate_to_what_uses_them():
    # theta = E[tanh(x)^2] is integrated (no closed form); z = theta * x inherits
    # that error in its norm: E[z^2] = theta^2 carries about 2 theta * err(theta).
    p = tp.Program()
    x = p.vector("x")
    theta = p.moment(tp.tanh(x) * tp.tanh(x))
    z = x * theta
    s = p.moment(z * z)
    res = tp.limit(p)
    th, est = res.estimate(theta), res.estimate(s)
    assert th.method == "quadrature" and est.method == "quadrature"
    assert float(est.value) == pytest.approx(float(th.value) ** 2, abs=1e-12)
    assert float(est.error) >= float(th.error) > 0
    assert float(est.error) < 1e-8


# ------------------------------------------------------ kinks off 0, user functions


def _normal_cdf(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def _normal_pdf(x):
    return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def test_shifted_kinks_are_integrated_to_rounding():
    # relu(x - 0.7), x ~ N(0, q): sqrt(q) phi(a) - 0.7 Phi(-a), a = 0.7 / sqrt(q);
    # a constant bias in an NNGP: E[relu(h_a + 0.25)^2] per lane,
    # (m^2 + q) Phi(m / s) + m s phi(m / s) with m = 0.25, s = sqrt(q).
    p = tp.Program()
    x = p.vector("x", var=2.0)
    s1 = p.moment(tp.relu(x - 0.7))
    K0 = torch.tensor([[1.0, 0.5], [0.5, 2.0]], dtype=torch.float64)
    h = p.vector("h", cov=K0)
    W = p.matrix("W", var=2.0)
    h2 = W @ tp.relu(h + 0.25)
    res = tp.limit(p)
    a = 0.7 / math.sqrt(2.0)
    exact = math.sqrt(2.0) * _normal_pdf(a) - 0.7 * _normal_cdf(-a)
    est = res.estimate(s1)
    # Before kinks off 0 were split, this was off by ~1e-6 with a bound of 8e-6,
    # and step(x - 0.013) by 5e-3 with a bound of 2e-16.
    assert abs(float(est.value) - exact) <= float(est.error) + 1e-15
    assert abs(float(est.value) - exact) < 1e-13
    K = res.kernel_estimate(h2)
    for i in range(2):
        q, m = float(K0[i, i]), 0.25
        sd = math.sqrt(q)
        diag = (m * m + q) * _normal_cdf(m / sd) + m * sd * _normal_pdf(m / sd)
        assert abs(float(K.value[i, i]) - 2 * diag) <= float(K.error[i, i]) + 1e-14
    fin = tp.run(p, width=4096, seeds=range(4)).kernel(h2).mean(0)
    # Entries O(1), per-seed sd ~ sqrt(2 / 4096) ~ 0.02: 0.06 is > 5 standard errors.
    assert torch.allclose(fin, K.value, atol=0.06)


def test_zdot_of_a_shifted_step_and_of_a_user_step():
    # z = W step(W^T v - 0.3): E[Z^z Z^v] = E[delta(Z^u - 0.3)] = phi(0.3), all ZDot;
    # the same function written as a lambda has no derivative by autograd (its
    # jump is invisible to it): it must be found non-smooth and go through Stein.
    exact = _normal_pdf(0.3)
    for make in (
        lambda u: tp.step(u - 0.3),
        lambda u: u.program.nonlin(lambda t: (t > 0.3).to(t.dtype), u),
    ):
        p = tp.Program()
        v = p.vector("v")
        W = p.matrix("W")
        z = W @ make(W.T @ v)
        s = p.moment(z * v)
        est = tp.limit(p).estimate(s)
        assert abs(float(est.value) - exact) <= float(est.error) + 1e-12
        fin = tp.run(p, width=2048, seeds=range(8))[s]
        # Per-seed sd ~ 0.015 at n = 2048; the mean of 8 is within 0.03 (> 5 se).
        assert abs(float(fin.mean()) - exact) < 0.03


def test_error_bounds_stay_numbers_through_unbounded_propagation():
    # A Nonlin with several arguments has no Lipschitz bound here (inf); the bound
    # of what uses it must be inf, never nan (inf * 0 in a Cauchy-Schwarz term).
    p = tp.Program()
    v, x = p.vector("v"), p.vector("x")
    W = p.matrix("W")
    o = W @ tp.erf(x)
    b = W.T @ (v * tp.tanh(o))  # ZDot coefficient E[d(v tanh o)/dZHat^o] = 0
    z = p.nonlin(lambda a, c: torch.sin(a) * c, o, b)
    s = p.moment(z * z)
    est = tp.limit(p).estimate(s)
    assert not bool(torch.isnan(est.error).any())
    assert float(est.error) >= 0


def test_numerical_trouble_names_the_instruction():
    p = tp.Program()
    x = p.vector("x")
    m = p.moment(x)  # -> 0
    p.scalar_fn(lambda t: 1.0 / t, m, name="inv")
    with pytest.raises(FloatingPointError, match="ScalarFn inv = .*not finite"):
        tp.limit(p)
    p = tp.Program()
    x = p.vector("x")
    y = p.nonlin(lambda t: torch.exp(t * t), x, name="expsq")  # E = inf
    p.moment(y, name="big")
    with pytest.raises(FloatingPointError, match="Moment big = moment\\(expsq\\)"):
        tp.limit(p)


def test_limit_errors_are_value_and_floating_point_errors():
    # Callers may catch numerical trouble as either kind; both must work.
    p = tp.Program()
    x = p.vector("x")
    p.scalar_fn(lambda t: 1.0 / t, p.moment(x), name="inv")
    for kind in (ValueError, FloatingPointError, tp.LimitError):
        with pytest.raises(kind, match="ScalarFn inv"):
            tp.limit(p)
