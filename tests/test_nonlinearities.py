"""Closed forms of Gaussian expectations against independent 2-D integration."""

import math

import gaussian_oracles as oracles
import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats
import torch

from tensorprograms import nonlinearities as nl

# Grid of (q1, q2, rho) including q = 0 and rho = +-1.
GRID = [
    (q1, q2, rho)
    for q1 in (0.0, 0.4, 2.5)
    for q2 in (0.0, 1.3)
    for rho in (-1.0, -0.6, 0.0, 0.35, 0.999, 1.0)
]

WITH_CLOSED_FORMS = [
    nl.identity,
    nl.relu,
    nl.step,
    nl.abs,
    nl.sign,
    nl.erf,
    nl.erf.derivative(),
    nl.gelu,
    nl.gelu.derivative(),
    nl.exp,
    nl.sin,
    nl.cos,
    nl.square,
    nl.leaky_relu(0.2),
    nl.leaky_relu(0.2).derivative(),
    nl.abrelu(-0.5, 2.0),
    nl.polynomial([1.0, -2.0, 0.5, 1.0]),
]

MIXED_PAIRS = [
    (nl.relu, nl.step),
    (nl.step, nl.relu),
    (nl.relu, nl.identity),
    (nl.relu, nl.polynomial([0.5, 0.0, 1.0, -1.0])),
    (nl.step, nl.square),
    (nl.erf, nl.erf.derivative()),
    (nl.erf, nl.identity),
    (nl.erf, nl.polynomial([0.0, 1.0, 0.0, 2.0])),
    (nl.gelu, nl.identity),
    (nl.gelu, nl.erf),
    (nl.exp, nl.sin),
    (nl.cos, nl.exp),
    (nl.sin, nl.cos),
    (nl.exp, nl.polynomial([1.0, 1.0, 1.0])),
    (nl.sin, nl.polynomial([0.0, 1.0, 0.0, 1.0])),
    (nl.abs, nl.sign),
    (nl.step, nl.exp),
    (nl.relu, nl.exp),
    (nl.step, nl.erf),
    (nl.erf, nl.step),
    (nl.relu, nl.erf),
    (nl.step, nl.erf.derivative()),
    (nl.relu, nl.erf.derivative()),
    (nl.step, nl.gelu.derivative()),
    (nl.step, nl.cos),
    (nl.relu, nl.sin),
    (nl.sign, nl.erf),
    (nl.abs, nl.erf.derivative()),
    (nl.leaky_relu(0.1), nl.gelu),
]


def _close(value, reference):
    # The oracle (piecewise Gauss-Legendre, 160 nodes per piece) is accurate to
    # ~1e-14 relative on these piecewise-smooth integrands; 1e-10 leaves room for
    # cancellation in the closed forms.
    return abs(value - reference) <= 1e-10 * (1.0 + abs(reference))


@pytest.mark.parametrize("phi", WITH_CLOSED_FORMS, ids=str)
def test_dual_matches_2d_integration_on_grid(phi):
    q1 = torch.tensor([g[0] for g in GRID], dtype=torch.float64)
    q2 = torch.tensor([g[1] for g in GRID], dtype=torch.float64)
    rho = torch.tensor([g[2] for g in GRID], dtype=torch.float64)
    closed = phi.dual(q1, q2, rho * (q1 * q2).sqrt())
    assert closed is not None and closed.shape == q1.shape
    assert bool(torch.isfinite(closed).all())
    for (a, b, r), value in zip(GRID, closed.tolist()):
        reference = oracles.pair(phi, phi, a, b, r)
        assert _close(value, reference), (str(phi), a, b, r, value, reference)


@pytest.mark.parametrize("phi, psi", MIXED_PAIRS, ids=lambda p: str(p))
def test_mixed_pairs_match_2d_integration(phi, psi):
    for a, b, r in GRID[::3]:
        value = nl.pair_expectation(phi, psi, a, b, r * math.sqrt(a * b))
        assert value is not None, (str(phi), str(psi))
        reference = oracles.pair(phi, psi, a, b, r)
        assert _close(float(value), reference), (str(phi), str(psi), a, b, r)


@pytest.mark.parametrize("phi", WITH_CLOSED_FORMS, ids=str)
def test_mean_matches_1d_integration(phi):
    q = torch.tensor([0.0, 0.3, 1.0, 4.0], dtype=torch.float64)
    means = phi.mean(q)
    for a, value in zip(q.tolist(), means.tolist()):
        assert _close(value, oracles.mean(phi, a)), (str(phi), a)


def test_oracle_agrees_with_scipy_dblquad():
    # A second, adaptive oracle (scipy dblquad, split at the kinks) for two cases,
    # so the Gauss-Legendre reference itself is checked. dblquad's tolerance 1e-11.
    def split_dblquad(g, rho):
        s = math.sqrt(1 - rho * rho)

        def integrand(y, x):
            return (
                g(x, rho * x + s * y) * math.exp(-(x * x + y * y) / 2) / (2 * math.pi)
            )

        total = 0.0
        for lo, hi in ((-12.0, 0.0), (0.0, 12.0)):
            for side in (0, 1):
                ylo = (lambda x: -12.0) if side == 0 else (lambda x: -rho * x / s)
                yhi = (lambda x: -rho * x / s) if side == 0 else (lambda x: 12.0)
                total += scipy.integrate.dblquad(
                    integrand, lo, hi, ylo, yhi, epsabs=1e-11, epsrel=1e-11
                )[0]
        return total

    relu_ref = split_dblquad(lambda x, y: max(x, 0.0) * max(y, 0.0), 0.3)
    assert abs(relu_ref - oracles.pair(nl.relu, nl.relu, 1.0, 1.0, 0.3)) < 1e-9
    erf_ref = split_dblquad(
        lambda x, y: scipy.special.erf(x) * scipy.special.erf(2 * y), -0.6
    )
    assert abs(erf_ref - oracles.pair(nl.erf, nl.erf, 1.0, 4.0, -0.6)) < 1e-9


def test_relu_second_moment_is_half_the_variance():
    q = torch.tensor([0.0, 0.5, 1.0, 3.0], dtype=torch.float64)
    assert torch.allclose(nl.relu.dual(q, q, q), q / 2, rtol=0, atol=1e-15)


def test_arc_cosine_kernels_known_values():
    # Independent inputs: E[relu u relu u'] = E[relu u] E[relu u'] = sqrt(q1 q2)/(2 pi),
    # E[step step] = 1/4; equal inputs: E[relu^2] = q/2, E[step] = 1/2; opposite: 0.
    q1, q2 = 2.0, 0.5
    assert float(nl.relu.dual(q1, q2, 0.0)) == pytest.approx(1 / (2 * math.pi), 1e-15)
    assert float(nl.step.dual(q1, q2, 0.0)) == pytest.approx(0.25, abs=1e-15)
    assert float(nl.step.dual(1.0, 1.0, 1.0)) == pytest.approx(0.5, abs=1e-15)
    assert float(nl.relu.dual(1.0, 1.0, -1.0)) == pytest.approx(0.0, abs=1e-15)
    assert float(nl.step.dual(1.0, 1.0, -1.0)) == pytest.approx(0.0, abs=1e-15)


def test_closed_forms_tolerate_c_outside_the_cauchy_schwarz_bound():
    # Rounding can push c slightly past sqrt(q1 q2): it is clamped, no NaN.
    for phi in (nl.relu, nl.step, nl.sign, nl.erf, nl.gelu, nl.abs):
        value = phi.dual(1.0, 1.0, 1.0 + 1e-12)
        assert bool(torch.isfinite(value)), str(phi)
        assert float(value) == pytest.approx(float(phi.dual(1.0, 1.0, 1.0)), abs=1e-10)


@pytest.mark.parametrize(
    "a, b, rho", [(1.0, 1.0, 0.5), (0.3, 2.0, -0.8), (3.0, 0.7, 1.0)]
)
def test_erf_with_scales_matches_formula_and_integration(a, b, rho):
    # E[erf(aZ) erf(bZ')] with Z, Z' standard of correlation rho
    # = (2/pi) arcsin(2ab rho / sqrt((1 + 2a^2)(1 + 2b^2))) (THEORY.md section 3).
    formula = (2 / math.pi) * math.asin(
        2 * a * b * rho / math.sqrt((1 + 2 * a * a) * (1 + 2 * b * b))
    )
    closed = float(nl.erf.dual(a * a, b * b, a * b * rho))
    assert closed == pytest.approx(formula, abs=1e-14)
    assert _close(closed, oracles.pair(nl.erf, nl.erf, a * a, b * b, rho))


def test_polynomial_moments_isserlis():
    # Wick/Isserlis by hand: E[u^2 u'^2] = q1 q2 + 2c^2,
    # E[u^3 u'^3] = 9 q1 q2 c + 6 c^3, E[u^4] = 3 q^2, E[u u'^3] = 3 q2 c.
    q1, q2, c = 1.7, 0.6, -0.4
    x2, x3, x1 = nl.polynomial([0, 0, 1]), nl.polynomial([0, 0, 0, 1]), nl.identity
    assert float(x2.dual(q1, q2, c)) == pytest.approx(q1 * q2 + 2 * c * c, 1e-14)
    assert float(x3.dual(q1, q2, c)) == pytest.approx(9 * q1 * q2 * c + 6 * c**3, 1e-14)
    assert float(x2.dual(q1, q1, q1)) == pytest.approx(3 * q1 * q1, 1e-14)
    assert float(nl.pair_expectation(x1, x3, q1, q2, c)) == pytest.approx(
        3 * q2 * c, 1e-14
    )
    assert float(x3.mean(q1)) == 0.0


def test_unknown_closed_forms_are_none():
    assert nl.tanh.dual(1.0, 1.0, 0.5) is None
    assert nl.sigmoid.mean(1.0) is None
    assert nl.pair_expectation(nl.relu, nl.tanh, 1.0, 1.0, 0.5) is None
    user = nl.nonlinearity(torch.nn.functional.softplus, name="softplus")
    assert user.dual(1.0, 1.0, 0.0) is None


def test_stein_rule_for_identity():
    # E[u psi(u')] = c E[psi'(u')]: for psi = user function with closed-form
    # derivative mean this falls back to the rule; here psi = erf' (terms) and a
    # user function wrapping the polynomial x^3 (no terms, autograd derivative).
    cube = nl.nonlinearity(lambda x: x**3, name="cube")
    assert nl.pair_expectation(nl.identity, cube, 1.0, 2.0, 0.5) is None
    value = nl.pair_expectation(nl.identity, nl.erf.derivative(), 1.0, 2.0, 0.5)
    assert _close(
        float(value), oracles.pair(nl.identity, nl.erf.derivative(), 1, 2, 0.5 / 2**0.5)
    )


def test_functions_match_reference_values():
    x = np.linspace(-3, 3, 13)
    xt = torch.from_numpy(x)
    phi_cdf = 0.5 * (1 + scipy.special.erf(x / math.sqrt(2)))
    references = {
        nl.relu: np.maximum(x, 0),
        nl.step: (x > 0).astype(float),
        nl.abs: np.abs(x),
        nl.sign: np.sign(x),
        nl.erf: scipy.special.erf(x),
        nl.tanh: np.tanh(x),
        nl.sigmoid: 1 / (1 + np.exp(-x)),
        nl.gelu: x * phi_cdf,
        nl.leaky_relu(0.1): np.where(x > 0, x, 0.1 * x),
        nl.abrelu(-0.5, 2.0): -0.5 * np.minimum(x, 0) + 2 * np.maximum(x, 0),
        nl.polynomial([1.0, 2.0, 3.0]): 1 + 2 * x + 3 * x * x,
    }
    for phi, ref in references.items():
        np.testing.assert_allclose(phi(xt).numpy(), ref, atol=1e-15, err_msg=str(phi))


@pytest.mark.parametrize(
    "phi",
    [
        nl.erf,
        nl.gelu,
        nl.tanh,
        nl.sigmoid,
        nl.exp,
        nl.sin,
        nl.cos,
        nl.square,
        nl.polynomial([1.0, -1.0, 0.0, 2.0]),
        nl.erf.derivative(),
        nl.gelu.derivative(),
    ],
    ids=str,
)
def test_derivatives_match_central_differences(phi):
    # Central differences with h = 1e-5 are accurate to ~h^2 |phi'''| ~ 1e-9.
    x = torch.linspace(-2.5, 2.5, 11, dtype=torch.float64)
    h = 1e-5
    numeric = (phi(x + h) - phi(x - h)) / (2 * h)
    d = phi.derivative()
    assert torch.allclose(d(x), numeric, atol=1e-8), str(phi)
    assert torch.allclose(phi.derivative_fn()(x), numeric, atol=1e-8), str(phi)


def test_derivative_names():
    assert nl.relu.derivative() == nl.step
    assert nl.step.derivative() == nl.delta
    assert nl.abs.derivative() == nl.sign
    assert nl.exp.derivative() == nl.exp
    assert nl.polynomial([1.0, 2.0, 3.0]).derivative() == nl.polynomial([2.0, 6.0])
    # The leaky relu derivative keeps its closed form: E[phi'] = (1 + alpha) / 2.
    d = nl.leaky_relu(0.3).derivative()
    assert float(d.mean(2.0)) == pytest.approx(0.65, abs=1e-15)


def test_dirac_delta_expectations():
    # Stein's lemma gives independent references: E[u step(u)] = q E[delta(u)], and
    # E[u step(u) psi(u')] = q1 E[delta(u) psi(u')] + c E[step(u) psi'(u')], the
    # left sides by 2-D integration of piecewise smooth functions, the last terms
    # by closed forms checked above.
    def x_step(x):
        return x * (x > 0).to(x.dtype)

    for q in (0.3, 2.0):
        assert _close(float(nl.delta.mean(q)), oracles.mean(x_step, q) / q)
    for psi in (nl.relu, nl.erf, nl.exp, nl.step, nl.polynomial([1.0, -1.0, 2.0])):
        for q1, q2, rho in ((1.0, 2.0, 0.5), (0.5, 1.0, -0.9), (2.0, 0.7, 0.0)):
            c = rho * math.sqrt(q1 * q2)
            lhs = oracles.pair(x_step, psi, q1, q2, rho)
            if psi == nl.step:  # psi' = delta: E[step(u) delta(u')] closed form
                rest = float(nl.pair_expectation(nl.step, nl.delta, q1, q2, c))
            else:
                rest = float(nl.pair_expectation(nl.step, psi.derivative(), q1, q2, c))
            value = float(nl.pair_expectation(nl.delta, psi, q1, q2, c))
            assert _close(value, (lhs - c * rest) / q1), (str(psi), q1, q2, rho)
    # E[delta(u) delta(u')] is the joint density at (0, 0), infinite when |rho| = 1.
    q1, q2, c = 1.0, 2.0, 0.5
    density = scipy.stats.multivariate_normal([0, 0], [[q1, c], [c, q2]]).pdf([0, 0])
    assert float(nl.delta.dual(q1, q2, c)) == pytest.approx(density, rel=1e-14)
    assert float(nl.delta.dual(1.0, 1.0, 1.0)) == math.inf
    # sign' = 2 delta, leaky_relu'' = (1 - alpha) delta.
    assert float(nl.sign.derivative().mean(1.0)) == pytest.approx(
        2 / math.sqrt(2 * math.pi)
    )
    second = nl.leaky_relu(0.2).derivative().derivative()
    assert float(second.mean(1.0)) == pytest.approx(0.8 / math.sqrt(2 * math.pi))
    # No pointwise values: evaluating it is an error, never a silent zero.
    with pytest.raises(ValueError, match="no pointwise values"):
        nl.delta(torch.zeros(3))
    with pytest.raises(ValueError, match="Stein"):
        nl.delta.derivative()


def test_user_function_and_autograd_derivative():
    softplus = nl.nonlinearity(torch.nn.functional.softplus, name="softplus")
    x = torch.linspace(-3, 3, 7, dtype=torch.float64)
    assert torch.allclose(softplus.derivative()(x), torch.sigmoid(x), atol=1e-14)
    # Higher derivatives compose through autograd.
    second = softplus.derivative().derivative()
    assert torch.allclose(second(x), torch.sigmoid(x) * torch.sigmoid(-x), atol=1e-14)
    assert softplus == nl.nonlinearity(torch.nn.functional.softplus, name="softplus")
    assert softplus != nl.nonlinearity(torch.tanh, name="softplus")
    assert nl.get(softplus) is softplus


@pytest.mark.parametrize(
    "fn, message",
    [
        (torch.log, r"'log' is not finite at the test point x = -3.0"),
        (lambda x: x.sum(), "shape-preserving"),
        (lambda x: x.numpy().tolist(), "must return a torch.Tensor"),
        (lambda x: 1 / x, r"not finite at the test point x = 0.0"),
        (lambda x: undefined_name(x), "failed on the test points"),  # noqa: F821
    ],
)
def test_bad_user_functions_are_rejected(fn, message):
    name = getattr(fn, "__name__", None)
    with pytest.raises(ValueError, match=message):
        nl.nonlinearity(fn, name=name if name == "log" else None)


def test_call_on_numbers_arrays_and_program_vectors():
    assert nl.relu(-2) == 0.0 and isinstance(nl.relu(3.0), float)
    assert nl.erf(np.float64(0.5)) == pytest.approx(math.erf(0.5), abs=1e-15)
    np.testing.assert_array_equal(nl.relu(np.array([-1.0, 2.0])), [0.0, 2.0])

    class Vector:
        def _apply_nonlinearity(self, phi):
            return ("applied", phi)

    assert nl.tanh(Vector()) == ("applied", nl.tanh)
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        nl.relu("x")


def test_registry_and_equality():
    for name in ("relu", "erf", "gelu", "identity", "step", "tanh", "sigmoid"):
        assert nl.get(name).name == name
    with pytest.raises(ValueError, match="known names: abs, cos"):
        nl.get("swish")
    assert nl.leaky_relu(0.1) == nl.leaky_relu(0.1)
    assert hash(nl.leaky_relu(0.1)) == hash(nl.leaky_relu(0.1))
    assert nl.leaky_relu(0.1) != nl.leaky_relu(0.2)
    assert str(nl.leaky_relu(0.1)) == "leaky_relu(0.1)"
    assert not nl.relu.smooth and nl.erf.smooth


def test_negative_variance_is_rejected():
    with pytest.raises(ValueError, match="variance q1 must be >= 0"):
        nl.relu.dual(-0.5, 1.0, 0.0)
    # Rounding-size negatives are clipped to zero.
    assert float(nl.relu.dual(-1e-17, 1.0, 0.0)) == 0.0
