"""Quadrature and Monte Carlo expectations against closed forms and exact moments."""

import math

import gaussian_oracles as oracles
import numpy as np
import pytest
import torch

from tensorprograms import gaussian as G
from tensorprograms import nonlinearities as nl


def _cov(q1, q2, c):
    return torch.tensor([[q1, c], [c, q2]], dtype=torch.float64)


def test_gauss_hermite_weights_and_exactness():
    # An m-point rule integrates z^j exactly for j <= 2m - 1: E[z^(2i)] = (2i - 1)!!.
    for m in (1, 3, 8, 16):
        x, w = G.gauss_hermite(m)
        assert x.dtype == w.dtype == torch.float64 and x.shape == (m,)
        assert float(w.sum()) == pytest.approx(1.0, abs=1e-14)
        for j in range(2 * m):
            exact = 0.0 if j % 2 else float(math.prod(range(j - 1, 0, -2)))
            # Odd moments cancel between terms of size ~ sqrt(E z^(2j)).
            size = math.sqrt(math.prod(range(2 * j - 1, 0, -2)))
            assert float((w * x**j).sum()) == pytest.approx(
                exact, rel=1e-12, abs=1e-14 * size
            )
    with pytest.raises(ValueError, match="positive integer"):
        G.gauss_hermite(0)


@pytest.mark.parametrize(
    "phi, psi",
    [
        (nl.relu, nl.relu),
        (nl.erf, nl.erf),
        (nl.step, nl.relu),
        (nl.gelu, nl.gelu),
        (nl.sin, nl.exp),
        (nl.abs, nl.abs),
    ],
    ids=str,
)
def test_quadrature_agrees_with_closed_form_within_stated_error(phi, psi):
    # Force quadrature by hiding the closed form behind a plain function; its
    # reported error (difference of the last two orders) must bound the true error.
    # The 1e-13 slack covers float64 rounding of the sums.
    covs = torch.stack([_cov(1.0, 2.0, 0.7), _cov(0.5, 0.5, -0.5), _cov(2.0, 1.0, 0.0)])
    est = G.expect(lambda g: phi.fn(g[..., 0]) * psi.fn(g[..., 1]), covs)
    assert est.method == "quadrature" and est.value.shape == (3,)
    exact = nl.pair_expectation(phi, psi, covs[:, 0, 0], covs[:, 1, 1], covs[:, 0, 1])
    assert bool(((est.value - exact).abs() <= est.error + 1e-13).all())
    if phi.smooth and psi.smooth:
        # Smooth integrands converge to the requested tolerance.
        assert bool((est.error <= 1e-10).all())


def test_bivariate_closed_form_and_quadrature_paths():
    q1 = torch.tensor([1.0, 0.0, 2.0])
    q2 = torch.tensor([1.0, 1.0, 0.5])
    c = torch.tensor([0.4, 0.0, -1.0])
    est = G.bivariate(nl.relu, nl.relu, q1, q2, c)
    assert est.method == "closed form" and bool((est.error == 0).all())
    # tanh has no closed form: vectorised 2-D quadrature, against the oracle.
    est = G.bivariate("tanh", "tanh", q1, q2, c)
    assert est.method == "quadrature" and est.value.shape == (3,)
    for i in range(3):
        rho = float(c[i] / (q1[i] * q2[i]).sqrt()) if q1[i] * q2[i] > 0 else 0.0
        ref = oracles.pair(nl.tanh, nl.tanh, float(q1[i]), float(q2[i]), rho)
        assert abs(float(est.value[i]) - ref) <= float(est.error[i]) + 1e-12
    # Broadcasting: a (2, 1) grid against a (3,) grid.
    est = G.bivariate(nl.sigmoid, nl.tanh, torch.tensor([[1.0], [2.0]]), 1.0, 0.3)
    assert est.value.shape == (2, 1)


def test_degenerate_covariance_integrates_in_fewer_dimensions():
    # The same input twice (rank 1): E[g0^2 g1^2] = E[z^4] q^2 = 3 q^2, and the
    # points f receives lie on one line.
    calls = []

    def f(g):
        calls.append(g.shape[1])
        return g[..., 0] ** 2 * g[..., 1] ** 2

    q = 1.5
    est = G.expect(f, torch.full((2, 2), q, dtype=torch.float64))
    assert float(est.value) == pytest.approx(3 * q * q, rel=1e-13)
    # A 1-D rule: the first order has 8 radii times 2 signs; a 2-D rule would start
    # at 8 radii x 8 angles x 4 arcs.
    assert calls[0] == 16 and max(calls) <= 2 * 512
    # Rank 0: f(0) exactly.
    est = G.expect(lambda g: torch.cos(g).sum(-1), torch.zeros(3, 3))
    assert est.method == "exact" and float(est.value) == 3.0 and float(est.error) == 0


def test_batched_covariances_with_mixed_ranks_and_vector_output():
    covs = torch.stack(
        [
            _cov(1.0, 1.0, 1.0),
            _cov(2.0, 0.5, 0.3),
            torch.zeros(2, 2),
            _cov(1.0, 4.0, -2.0),
        ]
    )

    def f(g):  # (P, Q, 2) -> (P, Q, 3)
        return torch.stack(
            [g[..., 0] * g[..., 1], g[..., 0] ** 2, torch.relu(g[..., 1])], -1
        )

    est = G.expect(f, covs)
    assert est.value.shape == est.error.shape == (4, 3)
    assert est.method == "quadrature"
    for p in range(4):
        q1, q2, c = float(covs[p, 0, 0]), float(covs[p, 1, 1]), float(covs[p, 0, 1])
        exact = [c, q1, math.sqrt(q2 / (2 * math.pi))]
        np.testing.assert_allclose(est.value[p].numpy(), exact, atol=1e-10)
        single = G.expect(f, covs[p])
        np.testing.assert_allclose(
            single.value.numpy(), est.value[p].numpy(), atol=1e-14
        )


def test_indexed_f_receives_problem_indices():
    scales = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    covs = torch.stack([torch.eye(1), torch.zeros(1, 1), 4 * torch.eye(1)]).double()

    def f(g, index):
        return scales[index, None] * (1 + g[..., 0] ** 2)

    est = G.expect(f, covs, indexed=True)
    np.testing.assert_allclose(est.value.numpy(), [2.0, 2.0, 15.0], atol=1e-12)


def test_monte_carlo_in_five_dimensions_within_four_standard_errors():
    # E[(a.g)^4] = 3 (a^T C a)^2 exactly; rank 5 > 3 -> Monte Carlo.
    gen = torch.Generator().manual_seed(1)
    A = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    cov = A @ A.T / 5 + 0.1 * torch.eye(5, dtype=torch.float64)
    a = torch.tensor([0.3, -0.2, 0.5, 0.1, -0.4], dtype=torch.float64)
    exact = 3 * float(a @ cov @ a) ** 2
    est = G.expect(lambda g: (g @ a) ** 4, cov, mc_samples=2**15, seed=3)
    assert est.method == "monte carlo"
    assert 0 < float(est.error) < 0.05 * exact
    assert abs(float(est.value) - exact) <= 4 * float(est.error)
    # The same seed gives the same answer.
    again = G.expect(lambda g: (g @ a) ** 4, cov, mc_samples=2**15, seed=3)
    assert float(again.value) == float(est.value)


def test_monte_carlo_standard_error_is_calibrated():
    # Over 20 seeds, |error| / stated standard error should look like |N(0, 1)|:
    # its mean is sqrt(2/pi) ~ 0.80; we accept (0.4, 1.3), about 4 sigma of the
    # sample mean of 20 half-normal draws (sd 0.6 / sqrt(20) = 0.13).
    cov = torch.eye(4, dtype=torch.float64) + 0.5
    exact = float(nl.relu.dual(1.5, 1.5, 0.5))  # E[relu(g0) relu(g1)]
    ratios = []
    for seed in range(20):
        est = G.expect(
            lambda g: torch.relu(g[..., 0]) * torch.relu(g[..., 1]),
            cov,
            max_quadrature_dim=2,
            mc_samples=2**10,
            seed=seed,
        )
        ratios.append(abs(float(est.value) - exact) / float(est.error))
    assert 0.4 < float(np.mean(ratios)) < 1.3


def test_error_messages():
    with pytest.raises(
        ValueError, match="not positive semi-definite: smallest eigenvalue -1"
    ):
        G.expect(lambda g: g[..., 0], [[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match=r"\(problem 1\)"):
        G.expect(
            lambda g: g[..., 0], torch.stack([torch.eye(2), -torch.eye(2)]).double()
        )
    with pytest.raises(ValueError, match="symmetric"):
        G.expect(lambda g: g[..., 0], [[1.0, 0.5], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"shape \(k, k\) or \(P, k, k\)"):
        G.expect(lambda g: g[..., 0], torch.ones(3))
    with pytest.raises(ValueError, match="NaN or inf"):
        G.expect(lambda g: torch.log(g[..., 0]), [[1.0]])
    with pytest.raises(ValueError, match=r"f must return shape \(P, Q\)"):
        G.expect(lambda g: g.sum(), [[1.0]])
    with pytest.raises(ValueError, match="contains NaN"):
        G.expect(lambda g: g[..., 0], [[float("nan")]])
    # Rounding-size negative eigenvalues are clipped, not errors.
    est = G.expect(
        lambda g: g[..., 0] * g[..., 1], [[1.0, 1.0 + 1e-13], [1.0 + 1e-13, 1.0]]
    )
    assert float(est.value) == pytest.approx(1.0, abs=1e-12)


def test_expect_grad_autograd_path():
    # E[relu'(u)] = 1/2; E[d/du1 (u1 u2^2)] = E[u2^2] = q2, E[d/du2] = E[2 u1 u2] = 2c.
    est = G.expect_grad(lambda g: torch.relu(g[..., 0]), [[2.0]])
    assert est.value.shape == (1,) and float(est.value[0]) == pytest.approx(
        0.5, abs=1e-12
    )
    q1, q2, c = 1.0, 2.0, 0.6
    est = G.expect_grad(lambda g: g[..., 0] * g[..., 1] ** 2, _cov(q1, q2, c))
    np.testing.assert_allclose(est.value.numpy(), [q2, 2 * c], atol=1e-12)
    # Batched, vector-valued: (P, m, k).
    covs = torch.stack([_cov(1.0, 1.0, 1.0), _cov(1.0, 3.0, 0.5)])
    est = G.expect_grad(
        lambda g: torch.stack([g[..., 0] ** 2, torch.sin(g[..., 1])], -1), covs
    )
    assert est.value.shape == (2, 2, 2)
    # E[d sin(u2)/du2] = E[cos u2] = exp(-q2/2); d(u1^2)/du1 mean 0.
    np.testing.assert_allclose(
        est.value[:, 1, 1].numpy(), np.exp([-0.5, -1.5]), atol=1e-12
    )
    np.testing.assert_allclose(est.value[:, 0].numpy(), 0.0, atol=1e-12)


def test_expect_grad_stein_path_for_step_functions():
    # f(g) = step(g1): E[df/dg1] = density of N(0, q1) at 0 (a Dirac delta that
    # autograd cannot see), E[df/dg2] = 0. Jumps slow quadrature down: the stated
    # error (difference of orders) is what we compare with, plus rounding.
    q1, q2, c = 2.0, 1.0, 0.7
    est = G.expect_grad(lambda g: nl.step.fn(g[..., 0]), _cov(q1, q2, c), smooth=False)
    exact = torch.tensor([1 / math.sqrt(2 * math.pi * q1), 0.0], dtype=torch.float64)
    assert bool(((est.value - exact).abs() <= est.error + 1e-12).all())
    assert float(est.error.max()) < 1e-3
    # Autograd alone would say 0: the Stein path is what makes it right.
    wrong = G.expect_grad(lambda g: nl.step.fn(g[..., 0]), _cov(q1, q2, c))
    assert float(wrong.value.abs().max()) == 0.0
    # Stein's lemma for relu (no jump) agrees with autograd.
    relu_stein = G.expect_grad(
        lambda g: torch.relu(g[..., 0] - g[..., 1]), _cov(q1, q2, c), smooth=False
    )
    relu_auto = G.expect_grad(
        lambda g: torch.relu(g[..., 0] - g[..., 1]), _cov(q1, q2, c)
    )
    assert bool(
        (
            (relu_stein.value - relu_auto.value).abs()
            <= relu_stein.error + relu_auto.error + 1e-12
        ).all()
    )
    np.testing.assert_allclose(relu_auto.value.numpy(), [0.5, -0.5], atol=1e-12)


def test_expect_grad_on_degenerate_covariance_uses_autograd():
    # g = (u, u) (rank 1): Stein's lemma is unavailable, the partial derivatives of
    # f(g) = exp(g0) g1 are exp(g0) g1 and exp(g0), with means E[u e^u] = q e^{q/2}
    # (Stein in one variable) and E[e^u] = e^{q/2}.
    q = 0.8
    est = G.expect_grad(
        lambda g: torch.exp(g[..., 0]) * g[..., 1],
        torch.full((2, 2), q, dtype=torch.float64),
        smooth=False,
    )
    np.testing.assert_allclose(
        est.value.numpy(), [q * math.exp(q / 2), math.exp(q / 2)], rtol=1e-12
    )


def test_expect_grad_mixes_stein_and_autograd_per_problem():
    # Problem 0 is full rank (Stein), problem 1 is degenerate (autograd); with
    # f = relu(g0 + g1) both give E[step(g0 + g1)] = 1/2 in each coordinate, and an
    # indexed f with per-problem factors checks that indices are mapped back.
    covs = torch.stack([_cov(1.0, 2.0, 0.3), _cov(1.0, 1.0, 1.0)])
    factors = torch.tensor([1.0, 3.0], dtype=torch.float64)

    def f(g, index):
        return factors[index, None] * torch.relu(g[..., 0] + g[..., 1])

    est = G.expect_grad(f, covs, smooth=False, indexed=True, kinks=[[1.0, 1.0]])
    assert est.value.shape == (2, 2)
    np.testing.assert_allclose(est.value.numpy(), [[0.5, 0.5], [1.5, 1.5]], atol=1e-11)


def test_kinks_off_the_coordinate_planes():
    # relu(g0 - g1) has its kink on g0 = g1: declared, the polar rule resolves it
    # to the requested tolerance; E[relu(g0 - g1)] = sqrt(Var(g0 - g1) / (2 pi)).
    cov = _cov(1.0, 2.0, 0.3)
    exact = math.sqrt((1.0 + 2.0 - 0.6) / (2 * math.pi))
    est = G.expect(
        lambda g: torch.relu(g[..., 0] - g[..., 1]), cov, kinks=[[1.0, -1.0]]
    )
    assert abs(float(est.value) - exact) < 1e-12 and float(est.error) < 1e-10
    # Undeclared, it still converges (more slowly) within its stated error.
    est = G.expect(lambda g: torch.relu(g[..., 0] - g[..., 1]), cov)
    assert abs(float(est.value) - exact) <= float(est.error) + 1e-12
    with pytest.raises(ValueError, match="kinks must have shape"):
        G.expect(lambda g: g[..., 0], cov, kinks=[1.0, 2.0, 3.0])


def test_radial_rule_is_exact_for_chi_moments():
    # E[rho^j] for rho = |eps|, eps ~ N(0, I_r): 2^(j/2) Gamma((r + j)/2) / Gamma(r/2).
    for r in (1, 2):
        for m in (8, 64):
            x, w = G._rules._radial(m, r)
            for j in range(0, min(2 * m, 40)):
                exact = 2 ** (j / 2) * math.gamma((r + j) / 2) / math.gamma(r / 2)
                assert float((w * x**j).sum()) == pytest.approx(exact, rel=1e-13)


def test_empty_batch_is_an_error():
    with pytest.raises(ValueError, match="empty batch"):
        G.expect(lambda g: g[..., 0], torch.zeros(0, 2, 2))


def test_rank_three_rule_resolves_kinks_and_jumps():
    # Stein's lemma on g2 gives closed forms for three correlated Gaussians:
    # E[relu(g0) relu(g1) g2] = C20 E[step(g0) relu(g1)] + C21 E[relu(g0) step(g1)],
    # E[step(g0) relu(g1) g2] = C20 E[delta(g0) relu(g1)] + C21 E[step(g0) step(g1)],
    # E[delta(g0) relu(g1)] = N(0, C00) density at 0 * E[relu(N(0, C11 - C01^2/C00))].
    C = torch.tensor([[1.0, 0.3, 0.5], [0.3, 2.0, -0.4], [0.5, -0.4, 1.5]]).double()
    q0, q1, c01, c20, c21 = 1.0, 2.0, 0.3, 0.5, -0.4
    kink = c20 * float(
        nl.pair_expectation(nl.step, nl.relu, q0, q1, c01)
    ) + c21 * float(nl.pair_expectation(nl.relu, nl.step, q0, q1, c01))
    delta_relu = math.sqrt((q1 - c01**2 / q0) / (2 * math.pi)) / math.sqrt(
        2 * math.pi * q0
    )
    jump = c20 * delta_relu + c21 * float(nl.step.dual(q0, q1, c01))
    est = G.expect(
        lambda g: torch.stack(
            [
                torch.relu(g[..., 0]) * torch.relu(g[..., 1]) * g[..., 2],
                nl.step.fn(g[..., 0]) * torch.relu(g[..., 1]) * g[..., 2],
            ],
            -1,
        ),
        C,
    )
    assert est.method == "quadrature"
    actual = (est.value - torch.tensor([kink, jump], dtype=torch.float64)).abs()
    assert bool((actual <= est.error + 1e-12).all())
    assert float(est.error.max()) < 1e-6


def test_rank_three_with_many_kink_planes_falls_back_to_a_grid(monkeypatch):
    # Twelve coordinates in a rank-3 space: the spherical rule would need more
    # than max_points nodes, so a Gauss-Hermite grid is used; a polynomial is
    # still integrated exactly: E[(g0 + ... + g11)^2] = sum of cov entries.
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    cov = A @ A.T
    monkeypatch.setattr(G._rules, "_sphere_rule", None)  # calling it would fail
    est = G.expect(lambda g: g.sum(-1) ** 2, cov)
    assert est.method == "quadrature"
    assert float(est.value) == pytest.approx(float(cov.sum()), rel=1e-12)


def test_bivariate_delta_against_functions_without_closed_form():
    # E[delta(u) tanh(u')] = p_u(0) E[tanh(u') | u = 0]; tanh is odd, so it is 0;
    # for sigmoid^2 the reference is a 1-D integration of sigmoid(x)^2 over
    # N(0, q2 - c^2 / q1).
    q1, q2, c = 1.0, 2.0, 0.5
    est = G.bivariate(nl.delta, nl.tanh, q1, q2, c)
    assert abs(float(est.value)) < 1e-14
    sq = nl.nonlinearity(lambda x: torch.sigmoid(x) ** 2, name="sigmoid2")
    est = G.bivariate(sq, nl.delta, q2, q1, c)
    ref = oracles.mean(sq, q2 - c * c / q1) / math.sqrt(2 * math.pi * q1)
    assert abs(float(est.value) - ref) <= float(est.error) + 1e-13


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "tanh'", "sin*tanh"])
def test_mehler_series_for_smooth_pairs(name):
    # Smooth pairs without a closed form go through Mehler's series when its
    # Cauchy-Schwarz/Parseval tail bound is below atol, else 2-D quadrature;
    # every path must stay within its reported error of the independent oracle.
    phi, psi = {
        "tanh": (nl.tanh, nl.tanh),
        "sigmoid": (nl.sigmoid, nl.sigmoid),
        "tanh'": (nl.tanh.derivative(), nl.tanh.derivative()),
        "sin*tanh": (nl.sin, nl.tanh),
    }[name]
    rhos = [-1.0, -0.6, 0.0, 0.3, 0.9, 0.999, 1.0]
    q1 = torch.tensor([0.5, 1.0, 6.0] * len(rhos), dtype=torch.float64)
    q2 = torch.tensor([2.0, 1.0, 0.7] * len(rhos), dtype=torch.float64)
    rho = torch.tensor([r for r in rhos for _ in range(3)], dtype=torch.float64)
    c = rho * (q1 * q2).sqrt()
    est = G.bivariate(phi, psi, q1, q2, c)
    assert bool((est.error <= 1e-10).all())
    for i in range(len(rho)):
        ref = oracles.pair(phi, psi, float(q1[i]), float(q2[i]), float(rho[i]))
        # The oracle (scipy) is accurate to ~1e-12 on these smooth integrands.
        assert abs(float(est.value[i]) - ref) <= float(est.error[i]) + 1e-11


# ------------------------------------------------------------- kinks off the origin


_SQRT2 = math.sqrt(2.0)


def _Phi(x):
    return 0.5 * (1 + math.erf(x / _SQRT2))


def _phi(x):
    return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)


@pytest.mark.parametrize("shift", [0.013, 0.7, -2.9, 6.0])
@pytest.mark.parametrize("q", [0.01, 1.0, 100.0])
def test_affine_kinks_in_one_dimension(shift, q):
    # g ~ N(0, q), kink at g = shift. Closed forms (s = sqrt q, a = shift / s):
    # E[step(g - shift)] = Phi(-a), E[relu(g - shift)] = s phi(a) - shift Phi(-a),
    # E[sign(g - shift) g] = 2 s phi(a). Without the split a Gauss rule's orders
    # agree to rounding on these and miss by up to 5e-3; with it, to rounding.
    s = math.sqrt(q)
    a = shift / s

    def f(g):
        g = g[..., 0]
        return torch.stack(
            [(g > shift).double(), torch.relu(g - shift), torch.sign(g - shift) * g],
            -1,
        )

    est = G.expect(f, [[q]], kinks=[[1.0]], offsets=[-shift])
    exact = torch.tensor(
        [_Phi(-a), s * _phi(a) - shift * _Phi(-a), 2 * s * _phi(a)],
        dtype=torch.float64,
    )
    err = (est.value - exact).abs()
    assert est.method == "quadrature"
    # Rounding of O(s) terms: 1e-14 * (1 + s) on top of the stated bound.
    assert bool((err <= est.error + 1e-14 * (1 + s)).all()), (err, est.error)
    assert float(err.max()) < 1e-12 * (1 + s)


def _relu_relu_shifted(qa, qb, c, sa, sb):
    # E[relu(a + sa) relu(b + sb)] by conditioning on a: b | a is normal, and
    # E[relu(m + t Z)] = m Phi(m / t) + t phi(m / t); the outer 1-D integral is
    # smooth on a > -sa, so scipy's adaptive quad is accurate to ~1e-13.
    from scipy import integrate

    t = math.sqrt(qb - c * c / qa)

    def inner(z):
        a = math.sqrt(qa) * z
        m = c * a / qa + sb
        return (a + sa) * (m * _Phi(m / t) + t * _phi(m / t)) * _phi(z)

    lo = -sa / math.sqrt(qa)
    return integrate.quad(inner, lo, lo + 20, epsabs=1e-14, epsrel=1e-13)[0]


def test_affine_kinks_that_meet_in_a_point_in_two_dimensions():
    cov = _cov(1.0, 1.5, 0.6)

    def f(g):
        return torch.relu(g[..., 0] + 0.3) * torch.relu(g[..., 1] - 0.2)

    est = G.expect(f, cov, kinks=[[1.0, 0.0], [0.0, 1.0]], offsets=[0.3, -0.2])
    ref = _relu_relu_shifted(1.0, 1.5, 0.6, 0.3, -0.2)
    # The integral moves to the planes' common point; 1e-12 covers the reference.
    assert est.method == "quadrature"
    assert abs(float(est.value) - ref) <= float(est.error) + 1e-12
    assert abs(float(est.value) - ref) < 1e-11


def test_affine_kinks_that_do_not_meet_go_to_monte_carlo():
    # Three lines of a plane that share no point: E[sum of steps] is a sum of
    # normal tails, Phi(-0.3) + Phi(0.2 / sqrt 2) + Phi(-1 / sqrt(3 + 2 * 0.5)).
    cov = _cov(1.0, 2.0, 0.5)

    def f(g):
        a, b = g[..., 0], g[..., 1]
        return ((a > 0.3).double() + (b > -0.2).double()) + (a + b > 1).double()

    kinks = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    est = G.expect(f, cov, kinks=kinks, offsets=[-0.3, 0.2, -1.0], mc_samples=2**16)
    exact = _Phi(-0.3) + _Phi(0.2 / _SQRT2) + _Phi(-1 / math.sqrt(4.0))
    assert est.method == "monte carlo"
    assert 0 < float(est.error) < 0.01
    # Five standard errors: a false failure has probability < 1e-6 (fixed seed).
    assert abs(float(est.value) - exact) < 5 * float(est.error)


def test_offsets_need_kinks_of_matching_shape():
    with pytest.raises(ValueError, match="offsets need kinks"):
        G.expect(lambda g: g[..., 0], [[1.0]], offsets=[0.5])
    with pytest.raises(ValueError, match="kinks and offsets must have shapes"):
        G.expect(lambda g: g[..., 0], [[1.0]], kinks=[[1.0]], offsets=[0.5, 1.0])
