"""Closed-form Gaussian expectations of the bases of nonlinearities (private).

A nonlinearity with closed forms is a finite sum of terms ``coef * base(scale * x)``
(see :mod:`tensorprograms.nonlinearities`). This module knows, for every base,
its value, derivative, parity, moments E[u^i base(u)] (u ~ N(0, q)) and the pair
expectations E[b1(u) b2(u')] of two bases; sums follow by bilinearity. Each
formula is derived in a comment and checked against two-dimensional integration
in tests/test_nonlinearities.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Tensor = torch.Tensor

SQRT_PI = math.sqrt(math.pi)
SQRT_2PI = math.sqrt(2.0 * math.pi)

# A term is (coef, base, scale): coef * base(scale * x). A base is a tuple
# (name,) or ("pow", k); ("pow", 0) is the constant 1.
_Base = tuple


def delta_fn(x: Tensor) -> Tensor:
    raise ValueError(
        "the Dirac delta (the derivative of step and sign) has no pointwise values: "
        "its Gaussian expectations are known in closed form (delta.mean, "
        "pair_expectation with closed-form partners, gaussian.bivariate) and "
        "derivatives of functions with jumps are integrated by Stein's lemma "
        "(gaussian.expect_grad(..., smooth=False))"
    )


def _base_eval(base: _Base, x: Tensor) -> Tensor:
    name = base[0]
    if name == "pow":
        return x ** base[1] if base[1] else torch.ones_like(x)
    if name == "relu":
        return torch.relu(x)
    if name == "step":
        return (x > 0).to(x.dtype)
    if name == "erf":
        return torch.erf(x)
    if name == "gauss":
        return torch.exp(-x * x)
    if name == "xgauss":
        return x * torch.exp(-x * x)
    if name == "xerf":
        return x * torch.erf(x)
    if name == "exp":
        return torch.exp(x)
    if name == "sin":
        return torch.sin(x)
    if name == "cos":
        return torch.cos(x)
    if name == "delta":
        delta_fn(x)
    raise KeyError(base)


def _base_derivative(base: _Base) -> tuple | None:
    """d/dx base(x) as terms, None when unknown or a Dirac delta."""
    name = base[0]
    if name == "pow":
        k = base[1]
        return ((float(k), ("pow", k - 1), 1.0),) if k else ()
    table = {
        "relu": ((1.0, ("step",), 1.0),),
        "step": ((1.0, ("delta",), 1.0),),
        "erf": ((2.0 / SQRT_PI, ("gauss",), 1.0),),
        "gauss": ((-2.0, ("xgauss",), 1.0),),
        "xerf": ((1.0, ("erf",), 1.0), (2.0 / SQRT_PI, ("xgauss",), 1.0)),
        "exp": ((1.0, ("exp",), 1.0),),
        "sin": ((1.0, ("cos",), 1.0),),
        "cos": ((-1.0, ("sin",), 1.0),),
    }
    return table.get(name)


def _parity(base: _Base) -> int | None:
    """+1 for even, -1 for odd bases, None otherwise."""
    name = base[0]
    if name == "pow":
        return 1 if base[1] % 2 == 0 else -1
    parities = {"erf": -1, "sin": -1, "xgauss": -1, "gauss": 1, "cos": 1, "xerf": 1}
    return 1 if name == "delta" else parities.get(name)


def _double_factorial(n: int) -> int:
    return math.prod(range(n, 0, -2)) if n > 0 else 1


def _gauss_moment(n: int, q: Tensor) -> Tensor:
    """E[v^n], v ~ N(0, q)."""
    if n % 2:
        return torch.zeros_like(q)
    return _double_factorial(n - 1) * q ** (n // 2)


def _abs_moment(n: int, q: Tensor) -> Tensor:
    """E[|v|^n], v ~ N(0, q)."""
    const = 2.0 ** (n / 2) * math.gamma((n + 1) / 2) / SQRT_PI
    return const * q ** (n / 2)


def _moment(base: _Base, i: int, q: Tensor) -> Tensor | None:
    """E[u^i base(u)], u ~ N(0, q), q > 0."""
    name = base[0]
    if name == "pow":
        return _gauss_moment(i + base[1], q)
    if name == "delta":  # E[u^i delta(u)] = 0^i * density of N(0, q) at 0
        return torch.zeros_like(q) if i else 1 / torch.sqrt(2 * math.pi * q)
    if name == "relu":
        return 0.5 * _abs_moment(i + 1, q)
    if name == "step":
        return 0.5 * _abs_moment(i, q)
    if name == "gauss":
        # e^{-u^2} N(0, q) = N(0, q / (1 + 2q)) / sqrt(1 + 2q).
        return _gauss_moment(i, q / (1 + 2 * q)) / torch.sqrt(1 + 2 * q)
    if name == "xgauss":
        return _moment(("gauss",), i + 1, q)
    if name == "erf":
        if i % 2 == 0:
            return torch.zeros_like(q)
        # Stein: E[u^i erf u] = q ((i-1) E[u^(i-2) erf u] + E[u^(i-1) erf'(u)]).
        rest = _moment(("gauss",), i - 1, q) * (2 / SQRT_PI)
        if i > 1:
            rest = rest + (i - 1) * _moment(("erf",), i - 2, q)
        return q * rest
    if name == "xerf":
        return _moment(("erf",), i + 1, q)
    if name == "exp":
        # Tilting: e^u N(0, q) = e^{q/2} N(q, q).
        total = sum(
            math.comb(i, l) * q ** (i - l) * _gauss_moment(l, q) for l in range(i + 1)
        )
        return torch.exp(q / 2) * total
    if name in ("sin", "cos"):
        # E[u^i e^{iu}] = e^{-q/2} E[(v + i q)^i]; real part cos, imaginary sin.
        real = torch.zeros_like(q)
        imag = torch.zeros_like(q)
        for l in range(i + 1):
            p = i - l
            term = math.comb(i, l) * q**p * _gauss_moment(l, q)
            sign = (-1) ** (p // 2)
            if p % 2 == 0:
                real = real + sign * term
            else:
                imag = imag + sign * term
        return torch.exp(-q / 2) * (real if name == "cos" else imag)
    return None


def _rho(q1: Tensor, q2: Tensor, c: Tensor) -> Tensor:
    return (c / torch.sqrt(q1 * q2)).clamp(-1.0, 1.0)


def _delta_pair(b: _Base, q1: Tensor, q2: Tensor, c: Tensor) -> Tensor | None:
    """E[delta(u) b(u')] = density of u at 0 * E[b(u') | u = 0] (q1 > 0)."""
    density = 1 / torch.sqrt(2 * math.pi * q1)
    if b[0] == "delta":  # the joint density at (0, 0); infinite when |rho| = 1
        return 1 / (2 * math.pi * torch.sqrt((q1 * q2 - c * c).clamp(min=0.0)))
    v = (q2 - c * c / q1).clamp(min=0.0)  # Var(u' | u = 0)
    m = _moment(b, 0, torch.where(v > 0, v, torch.ones_like(v)))
    if m is None:
        return None
    at_zero = _base_eval(b, torch.zeros_like(v))
    return density * torch.where(v > 0, m, at_zero)


def _relu_step_pair(n1: str, b: _Base, q1, q2, c) -> Tensor | None:
    """E[relu(u) b(u')] or E[step(u) b(u')] for a smooth base b (q1, q2 > 0).

    step = 1/2 + sign/2 and relu = x/2 + |x|/2, so against an even b only the even
    half survives and against an odd b the odd half (symmetry (u, u') -> -(u, u')).
    """
    parity, n2 = _parity(b), b[0]
    if n1 == "step" and parity == 1:
        return 0.5 * _moment(b, 0, q2)
    if n1 == "relu" and parity == -1:
        return 0.5 * _pow_pair(1, b, q1, q2, c)
    if n1 == "step" and n2 == "erf":
        # erf(x) = E[sign(sqrt 2 x - w)], w ~ N(0, 1): an arcsine law.
        arg = math.sqrt(2.0) * c / torch.sqrt(q1 * (1 + 2 * q2))
        return torch.arcsin(arg.clamp(-1.0, 1.0)) / math.pi
    if n1 == "relu" and n2 == "xerf":
        # Stein on u': E[|u| u' erf u'] = c E[sign(u) erf u'] + q2 E[|u| erf'(u')].
        sign_erf = 2 * _relu_step_pair("step", ("erf",), q1, q2, c)
        abs_gauss = 2 * _relu_step_pair("relu", ("gauss",), q1, q2, c)
        return 0.5 * (c * sign_erf + q2 * (2 / SQRT_PI) * abs_gauss)
    if n2 in ("gauss", "xgauss"):
        # Tilt by exp(-u'^2): weight 1/sqrt(1 + 2 q2), covariance C' with
        # C'11 = q1 - 2c^2/(1 + 2 q2), C'12 = c / (1 + 2 q2).
        z = 1 / torch.sqrt(1 + 2 * q2)
        v11 = q1 - 2 * c * c / (1 + 2 * q2)
        v12 = c / (1 + 2 * q2)
        if n1 == "relu":  # even: E[|u|] / 2 under the tilt
            return 0.5 * z * torch.sqrt(2 * v11 / math.pi)
        return 0.5 * z * v12 * torch.sqrt(2 / (math.pi * v11))  # step x xgauss
    if n2 == "exp":
        # Tilt by e^{u'}: weight e^{q2/2}, u ~ N(c, q1).
        s = torch.sqrt(q1)
        cdf = 0.5 * (1 + torch.erf(c / (s * math.sqrt(2.0))))
        if n1 == "step":
            return torch.exp(q2 / 2) * cdf
        pdf = torch.exp(-c * c / (2 * q1)) / SQRT_2PI
        return torch.exp(q2 / 2) * (c * cdf + s * pdf)
    return None


def _pair_table(n1: str, n2: str, q1: Tensor, q2: Tensor, c: Tensor) -> Tensor | None:
    """E[b1(u) b2(u')] for bases named n1, n2 (q1, q2 > 0, c clamped)."""
    if n1 == "relu" and n2 == "relu":
        rho = _rho(q1, q2, c)
        theta = torch.arccos(rho)
        s = torch.sqrt(q1 * q2)
        return s * (torch.sqrt(1 - rho * rho) + (math.pi - theta) * rho) / (2 * math.pi)
    if n1 == "step" and n2 == "step":
        return (math.pi - torch.arccos(_rho(q1, q2, c))) / (2 * math.pi)
    if n1 == "relu" and n2 == "step":
        # Stein: E[u 1{u>0} 1{u'>0}] = sqrt(q1) (1 + rho) / (2 sqrt(2 pi)).
        return torch.sqrt(q1) * (1 + _rho(q1, q2, c)) / (2 * SQRT_2PI)
    det = (1 + 2 * q1) * (1 + 2 * q2) - 4 * c * c  # det(I + 2C) > 0
    if n1 == "erf" and n2 == "erf":
        arg = 2 * c / torch.sqrt((1 + 2 * q1) * (1 + 2 * q2))
        return (2 / math.pi) * torch.arcsin(arg.clamp(-1.0, 1.0))
    if n1 == "gauss" and n2 == "gauss":
        return 1 / torch.sqrt(det)
    if n1 == "xgauss" and n2 == "xgauss":
        # Tilted covariance C (I + 2C)^{-1} has off-diagonal c / det.
        return c / det**1.5
    if n1 == "erf" and n2 == "xgauss":
        # Stein on u': X = c E[erf'(u) g(u')] - 2 q2 X with g = exp(-u'^2).
        return c * (2 / SQRT_PI) / (torch.sqrt(det) * (1 + 2 * q2))
    if n1 == "xerf" and n2 == "xerf":
        # Two Stein steps (E[u u' erf(u) erf(u')]); derivation in the module notes.
        b = (4 / math.pi) / torch.sqrt(det)
        f = _pair_table("erf", "erf", q1, q2, c)
        c2 = c * c
        return b * (q1 * q2 - c2 + c2 / (1 + 2 * q1) + c2 / (1 + 2 * q2)) + c * f
    if n1 == "exp" and n2 == "exp":
        return torch.exp((q1 + q2) / 2 + c)
    if n1 in ("sin", "cos") and n2 in ("sin", "cos"):
        # E[cos(u - u')] = e^{-(q1+q2)/2 + c} etc.; written without overflow.
        plus = torch.exp(c - (q1 + q2) / 2)
        minus = torch.exp(-c - (q1 + q2) / 2)
        if n1 == n2 == "sin":
            return (plus - minus) / 2
        if n1 == n2 == "cos":
            return (plus + minus) / 2
        return torch.zeros_like(c)
    if n1 == "exp" and n2 in ("sin", "cos"):
        # E[e^{u + i u'}] = exp((q1 - q2)/2 + i c).
        trig = torch.sin(c) if n2 == "sin" else torch.cos(c)
        return torch.exp((q1 - q2) / 2) * trig
    return None


def _pow_pair(j: int, base: _Base, q1: Tensor, q2: Tensor, c: Tensor) -> Tensor | None:
    """E[u^j b(u')] by regression u = (c/q2) u' + w, w independent of u'."""
    beta = c / q2
    var_w = (q1 - c * beta).clamp(min=0.0)
    total = torch.zeros_like(c)
    for i in range(j + 1):
        if (j - i) % 2:
            continue
        m = _moment(base, i, q2)
        if m is None:
            return None
        total = total + math.comb(j, i) * beta**i * _gauss_moment(j - i, var_w) * m
    return total


def _base_pair(
    b1: _Base, b2: _Base, q1: Tensor, q2: Tensor, c: Tensor
) -> Tensor | None:
    p1, p2 = _parity(b1), _parity(b2)
    if p1 is not None and p2 is not None and p1 != p2:
        return torch.zeros_like(c)  # odd times even under (u, u') -> (-u, -u')
    for x, y, a, b in ((b1, b2, q1, q2), (b2, b1, q2, q1)):
        value = _pair_table(x[0], y[0], a, b, c)
        if value is None and x[0] == "delta":
            value = _delta_pair(y, a, b, c)
        if value is None and x[0] in ("relu", "step") and y[0] != "pow":
            value = _relu_step_pair(x[0], y, a, b, c)
        if value is not None:
            return value
    if b1[0] == "pow":
        return _pow_pair(b1[1], b2, q1, q2, c)
    if b2[0] == "pow":
        return _pow_pair(b2[1], b1, q2, q1, c)
    return None


def terms_mean(terms: tuple, q: Tensor) -> Tensor | None:
    total = torch.zeros_like(q)
    for coef, base, scale in terms:
        m = _moment(base, 0, scale * scale * q)
        if m is None:
            return None
        total = total + coef * m
    return total


def terms_pair(t1: tuple, t2: tuple, q1: Tensor, q2: Tensor, c: Tensor):
    total = torch.zeros_like(c)
    for coef1, base1, a1 in t1:
        for coef2, base2, a2 in t2:
            value = _base_pair(base1, base2, a1 * a1 * q1, a2 * a2 * q2, a1 * a2 * c)
            if value is None:
                return None
            total = total + coef1 * coef2 * value
    return total


def terms_fn(terms: tuple) -> Callable[[Tensor], Tensor]:
    def fn(x: Tensor) -> Tensor:
        out = torch.zeros_like(x)
        for coef, base, scale in terms:
            out = out + coef * _base_eval(base, scale * x)
        return out

    return fn


def derivative_terms(terms: tuple) -> tuple | None:
    out = []
    for coef, base, scale in terms:
        d = _base_derivative(base)
        if d is None:
            return None
        out.extend((coef * scale * c2, b2, scale * s2) for c2, b2, s2 in d)
    return tuple(out)
