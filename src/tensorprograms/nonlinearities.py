"""Coordinatewise functions and their Gaussian expectations.

A :class:`Nonlinearity` carries a function ``phi`` (applied entrywise to torch
tensors), its derivative, and, where one is known, closed forms of

* ``mean(q) = E[phi(u)]`` with ``u ~ N(0, q)``,
* ``dual(q1, q2, c) = E[phi(u) phi(u')]`` with ``(u, u') ~ N(0, [[q1, c], [c, q2]])``,

the quantities that the Master Theorem (TP1 section 5, TP2 section 4) and the NNGP /
NTK recursions (THEORY.md section 3) need. Anything without a closed form is
integrated numerically by :mod:`tensorprograms.gaussian`.

Closed forms are organised as an algebra: many functions are finite sums
``sum_i coef_i * base_i(scale_i * x)`` of a few *bases* (relu, step, the Dirac
delta, erf, ``exp(-x^2)``, ``x exp(-x^2)``, ``x erf(x)``, exp, sin, cos, powers
``x^k``), and the expectation of a product of two such sums is the sum of the
pairwise base expectations (private module ``_closed_forms``). So abs, leaky relu,
ABReLU, sign, gelu (exact) and all their derivatives, and polynomials get closed
forms against each other without a table for every pair. The derivative of step
is :data:`delta`: it has no pointwise values (calling it is an error) but exact
Gaussian expectations, e.g. E[delta(u)] = 1/sqrt(2 pi q), which the ZDot terms
of programs with step or sign need. Every closed form is checked against an
independent two-dimensional integration in ``tests/test_nonlinearities.py``.

Not known in closed form (``None``; integrated numerically): tanh, sigmoid, user
functions, and a few mixed pairs (relu against cos, step against sin).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ._closed_forms import (
    SQRT_2PI,
    SQRT_PI,
    delta_fn,
    derivative_terms,
    terms_fn,
    terms_mean,
    terms_pair,
)

__all__ = [
    "Nonlinearity",
    "abrelu",
    "abs",
    "cos",
    "delta",
    "erf",
    "exp",
    "gelu",
    "get",
    "identity",
    "leaky_relu",
    "nonlinearity",
    "pair_expectation",
    "polynomial",
    "relu",
    "sigmoid",
    "sign",
    "sin",
    "square",
    "step",
    "tanh",
]

Tensor = torch.Tensor


@dataclass(frozen=True, eq=False)
class Nonlinearity:
    """A coordinatewise function phi with its derivative and Gaussian closed forms.

    Immutable; two nonlinearities are equal when their ``(name, params)`` are.

    Attributes:
        name: registry name, e.g. ``"relu"``, ``"leaky_relu"``, ``"erf'"``.
        params: parameters of the family (e.g. ``(0.1,)`` for ``leaky_relu(0.1)``).
        fn: elementwise torch function, any shape, dtype and device.
        deriv: elementwise derivative phi'; ``None`` means autograd of ``fn``.
        smooth: ``True`` when phi is infinitely differentiable (quadrature then
            converges fast); ``False`` for relu, step, abs, sign and the like.

    Calling a nonlinearity applies it: to a tensor (``fn(x)``), to a Python or
    NumPy number (a float), to a NumPy array (an array), or to any object with a
    method ``_apply_nonlinearity`` (program vectors), which receives it.

    >>> relu(torch.tensor([-1.0, 2.0]))
    tensor([0., 2.])
    >>> relu.dual(1.0, 1.0, 1.0).item()  # E[relu(u)^2] = q / 2
    0.5
    """

    name: str
    params: tuple = ()
    fn: Callable[[Tensor], Tensor] = field(default=None, repr=False)
    deriv: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)
    smooth: bool = True
    _terms: tuple | None = field(default=None, repr=False)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Nonlinearity):
            return NotImplemented
        return (self.name, self.params) == (other.name, other.params)

    def __hash__(self) -> int:
        return hash((self.name, self.params))

    def __repr__(self) -> str:
        return f"Nonlinearity({self})"

    def __str__(self) -> str:
        shown = [p for p in self.params if not callable(p)]
        if not shown:
            return self.name
        return f"{self.name}({', '.join(repr(p) for p in shown)})"

    def __call__(self, x: Any) -> Any:
        if hasattr(type(x), "_apply_nonlinearity"):
            return x._apply_nonlinearity(self)
        if isinstance(x, Tensor):
            return self.fn(x)
        if isinstance(x, np.ndarray):
            out = self.fn(torch.from_numpy(np.asarray(x, dtype=np.float64)))
            return out.detach().numpy()
        if isinstance(x, int | float | np.number):
            return float(self.fn(torch.tensor(float(x), dtype=torch.float64)))
        raise TypeError(
            f"nonlinearity {self} expected a torch.Tensor, a number, a NumPy array "
            f"or a program vector, got {type(x).__name__}"
        )

    def derivative(self) -> Nonlinearity:
        """The derivative phi' as a Nonlinearity (closed forms kept where known).

        relu -> step, abs -> sign, erf -> (2/sqrt(pi)) exp(-x^2), polynomials ->
        polynomials; functions without a known derivative use autograd of ``fn``.
        step and sign have a Dirac delta as derivative: asking for it is an error
        (use Stein's lemma, ``gaussian.expect_grad(..., smooth=False)``).

        >>> relu.derivative() == step
        True
        >>> float(erf.derivative()(0.0)) == 2 / math.sqrt(math.pi)
        True
        """
        special = _DERIVATIVES.get(self.name)
        if special is not None:
            return special(self)
        if self._terms is not None:
            terms = derivative_terms(self._terms)
            if terms is not None:
                fn = self.deriv if self.deriv is not None else terms_fn(terms)
                if any(b[0] == "delta" for _, b, _ in terms):
                    fn = delta_fn
                return Nonlinearity(
                    self.name + "'", self.params, fn, None, self.smooth, terms
                )
        if self.deriv is not None:
            d = self.deriv
        else:
            d = _autograd_derivative(self.fn, self.name)
        return Nonlinearity(self.name + "'", self.params, d, None, self.smooth)

    def derivative_fn(self) -> Callable[[Tensor], Tensor]:
        """The elementwise function phi' (``deriv``, or autograd of ``fn``)."""
        if self.deriv is not None:
            return self.deriv
        return _autograd_derivative(self.fn, self.name)

    def mean(self, q: Any) -> Tensor | None:
        """Closed form of E[phi(u)], u ~ N(0, q); ``None`` when none is known.

        Args:
            q: variances, a float64 tensor of any shape (or a number), q >= 0.

        Returns:
            float64 tensor of the shape of ``q``, or ``None``.

        >>> relu.mean(torch.tensor([1.0, 4.0]))  # sqrt(q / (2 pi))
        tensor([0.3989, 0.7979], dtype=torch.float64)
        """
        if self._terms is None:
            return None
        q = _check_variance(q, "q")
        zero = q == 0
        safe = torch.where(zero, torch.ones_like(q), q)
        value = terms_mean(self._terms, safe)
        if value is None:
            return None
        return torch.where(zero, self._at_zero(q), value)

    def dual(self, q1: Any, q2: Any, c: Any) -> Tensor | None:
        """Closed form of E[phi(u) phi(u')] (the dual kernel); ``None`` if unknown.

        (u, u') ~ N(0, [[q1, c], [c, q2]]). Arguments broadcast; ``c`` is clamped to
        [-sqrt(q1 q2), sqrt(q1 q2)] (rounding), q = 0 and |rho| = 1 are exact.

        >>> round(float(relu.dual(1.0, 1.0, 0.0)), 6)  # 1 / (2 pi)
        0.159155
        """
        return pair_expectation(self, self, q1, q2, c)

    def _at_zero(self, like: Tensor) -> Tensor:
        if self._terms is not None and any(b[0] == "delta" for _, b, _ in self._terms):
            return torch.full_like(like, math.inf)  # a point mass at 0
        value = self.fn(torch.zeros((), dtype=torch.float64, device=like.device))
        return torch.as_tensor(value, dtype=torch.float64).expand(like.shape)


def _from_terms(name: str, params: tuple, terms: tuple, smooth: bool) -> Nonlinearity:
    fn = terms_fn(terms)
    return Nonlinearity(name, params, fn, None, smooth, terms)


# --------------------------------------------------------------------------------------
# Pair expectations of two nonlinearities.


def _check_variance(q: Any, what: str) -> Tensor:
    q = torch.as_tensor(q, dtype=torch.float64)
    if q.numel() and bool((q < 0).any()):
        scale = max(1.0, float(q.abs().max()))
        if bool((q < -1e-12 * scale).any()):
            raise ValueError(
                f"variance {what} must be >= 0, got minimum {float(q.min()):.3g}"
            )
        q = q.clamp(min=0.0)
    return q


def _delta_weight(phi: Nonlinearity) -> float | None:
    """w when phi = w * delta (a sum of delta terms), else None."""
    if not phi._terms or any(b[0] != "delta" for _, b, _ in phi._terms):
        return None
    return sum(coef / math.fabs(scale) for coef, _, scale in phi._terms)


def pair_expectation(
    phi: Nonlinearity, psi: Nonlinearity, q1: Any, q2: Any, c: Any
) -> Tensor | None:
    """Closed form of E[phi(u) psi(u')], (u, u') ~ N(0, [[q1, c], [c, q2]]).

    Known cases: both functions are sums of bases with closed forms (relu family,
    step, sign, erf and its derivatives, gelu and its derivative, polynomials,
    exp, sin, cos; mixed pairs included, e.g. relu with any polynomial), or one of
    them is the identity and the other's derivative has a closed-form mean
    (Stein's lemma: E[u psi(u')] = c E[psi'(u')]). Degenerate cases: q = 0 gives
    phi(0) E[psi(u')]; c is clamped to [-sqrt(q1 q2), sqrt(q1 q2)].

    Args:
        phi, psi: nonlinearities.
        q1, q2, c: float64 tensors (or numbers) that broadcast together.

    Returns:
        float64 tensor of the broadcast shape, or ``None`` when no closed form is
        known (integrate with ``gaussian.bivariate``).

    >>> pair_expectation(identity, tanh, 1.0, 1.0, 0.5) is None
    True
    >>> round(float(pair_expectation(identity, relu, 1.0, 2.0, 0.5)), 12)  # c / 2
    0.25
    """
    q1 = _check_variance(q1, "q1")
    q2 = _check_variance(q2, "q2")
    c = torch.as_tensor(c, dtype=torch.float64)
    q1, q2, c = torch.broadcast_tensors(q1, q2, c)
    z1, z2 = q1 == 0, q2 == 0
    s1 = torch.where(z1, torch.ones_like(q1), q1)
    s2 = torch.where(z2, torch.ones_like(q2), q2)
    bound = torch.sqrt(s1 * s2)
    cs = torch.where(z1 | z2, torch.zeros_like(c), c)
    cs = torch.minimum(torch.maximum(cs, -bound), bound)

    value = None
    if phi._terms is not None and psi._terms is not None:
        value = terms_pair(phi._terms, psi._terms, s1, s2, cs)
    if value is None:
        value = _stein_pair(phi, psi, s1, s2, cs)
    if value is None:
        return None
    if bool(z1.any()) or bool(z2.any()):
        m1 = psi.mean(q2) if bool(z1.any()) else None
        m2 = phi.mean(q1) if bool(z2.any()) else None
        if (bool(z1.any()) and m1 is None) or (bool(z2.any()) and m2 is None):
            return None
        if m2 is not None:
            value = torch.where(z2, psi._at_zero(q2) * m2, value)
        if m1 is not None:
            value = torch.where(z1, phi._at_zero(q1) * m1, value)
    return value


def _stein_pair(phi, psi, q1, q2, c) -> Tensor | None:
    """E[u psi(u')] = c E[psi'(u')] when phi or psi is the identity."""
    if phi == identity or psi == identity:
        other, q = (psi, q2) if phi == identity else (phi, q1)
        try:
            d = other.derivative()
        except ValueError:
            return None
        m = d.mean(q)
        return None if m is None else c * m
    return None


# --------------------------------------------------------------------------------------
# User functions.

_TEST_POINTS = (-3.0, -1.0, -0.3, 0.0, 0.3, 1.0, 3.0)


def _autograd_derivative(fn: Callable, name: str) -> Callable[[Tensor], Tensor]:
    def d(x: Tensor) -> Tensor:
        try:
            if x.requires_grad:
                y = fn(x)
                if not y.requires_grad:
                    return torch.zeros_like(x)
                (g,) = torch.autograd.grad(
                    y.sum(), x, create_graph=True, allow_unused=True
                )
            else:
                with torch.enable_grad():
                    xx = x.detach().requires_grad_(True)
                    y = fn(xx)
                    if not y.requires_grad:
                        return torch.zeros_like(x)
                    (g,) = torch.autograd.grad(y.sum(), xx, allow_unused=True)
        except RuntimeError as err:
            raise ValueError(
                f"derivative of nonlinearity {name!r} by autograd failed ({err}); "
                "write it with torch operations or pass deriv=..."
            ) from err
        return torch.zeros_like(x) if g is None else g

    return d


def _validate(fn: Callable, name: str, what: str) -> None:
    x = torch.tensor(_TEST_POINTS, dtype=torch.float64)
    try:
        y = fn(x)
    except Exception as err:  # any failure of user code is reported the same way
        raise ValueError(
            f"{what} {name!r} failed on the test points {list(_TEST_POINTS)}: "
            f"{type(err).__name__}: {err}"
        ) from err
    if not isinstance(y, Tensor):
        raise ValueError(
            f"{what} {name!r} must return a torch.Tensor, got {type(y).__name__}"
        )
    if y.shape != x.shape:
        raise ValueError(
            f"{what} {name!r} must act elementwise (shape-preserving): input shape "
            f"{tuple(x.shape)}, output shape {tuple(y.shape)}"
        )
    bad = ~torch.isfinite(y.to(torch.float64))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{what} {name!r} is not finite at the test point x = {_TEST_POINTS[i]}: "
            f"got {float(y[i])}"
        )


def nonlinearity(
    fn: Callable[[Tensor], Tensor] | Nonlinearity,
    deriv: Callable[[Tensor], Tensor] | None = None,
    name: str | None = None,
    smooth: bool = True,
) -> Nonlinearity:
    """Wrap any elementwise torch function as a Nonlinearity.

    The function is checked at creation on the points -3, -1, -0.3, 0, 0.3, 1, 3:
    it must return a finite tensor of the input's shape. Without ``deriv`` its
    derivative comes from torch.autograd. No closed forms are known for it:
    expectations are computed by quadrature or Monte Carlo.

    Args:
        fn: elementwise function of a torch tensor (or a Nonlinearity, returned
            unchanged).
        deriv: its derivative, optional.
        name: name shown in printouts (default: ``fn.__name__``).
        smooth: whether fn is infinitely differentiable.

    >>> softplus = nonlinearity(torch.nn.functional.softplus, name="softplus")
    >>> round(float(softplus.derivative()(0.0)), 6)
    0.5
    >>> nonlinearity(torch.log, name="log")
    Traceback (most recent call last):
    ...
    ValueError: nonlinearity 'log' is not finite at the test point x = -3.0: got nan
    """
    if isinstance(fn, Nonlinearity):
        return fn
    if not callable(fn):
        raise TypeError(f"nonlinearity expects a callable, got {type(fn).__name__}")
    if name is None:
        name = getattr(fn, "__name__", type(fn).__name__)
    _validate(fn, name, "nonlinearity")
    if deriv is not None:
        _validate(deriv, name + "'", "derivative of nonlinearity")
    return Nonlinearity(name, (fn, deriv), fn, deriv, bool(smooth))


# --------------------------------------------------------------------------------------
# The registry.


def _step_fn(x: Tensor) -> Tensor:
    return (x > 0).to(x.dtype)


def _sigmoid_deriv(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1 - s)


def _gelu_fn(x: Tensor) -> Tensor:
    return x * 0.5 * (1 + torch.erf(x / math.sqrt(2.0)))


def _gelu_deriv(x: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2.0))) + x * torch.exp(-x * x / 2) / (
        SQRT_2PI
    )


_RELU = ((1.0, ("relu",), 1.0),)
_STEP = ((1.0, ("step",), 1.0),)

identity = Nonlinearity(
    "identity", (), lambda x: x, torch.ones_like, True, ((1.0, ("pow", 1), 1.0),)
)
relu = Nonlinearity("relu", (), torch.relu, _step_fn, False, _RELU)
step = Nonlinearity("step", (), _step_fn, torch.zeros_like, False, _STEP)
abs = Nonlinearity(
    "abs",
    (),
    torch.abs,
    torch.sign,
    False,
    ((1.0, ("relu",), 1.0), (1.0, ("relu",), -1.0)),
)
sign = Nonlinearity(
    "sign",
    (),
    torch.sign,
    torch.zeros_like,
    False,
    ((1.0, ("step",), 1.0), (-1.0, ("step",), -1.0)),
)
erf = Nonlinearity(
    "erf",
    (),
    torch.erf,
    lambda x: (2 / SQRT_PI) * torch.exp(-x * x),
    True,
    ((1.0, ("erf",), 1.0),),
)
tanh = Nonlinearity("tanh", (), torch.tanh, lambda x: 1 - torch.tanh(x) ** 2, True)
sigmoid = Nonlinearity("sigmoid", (), torch.sigmoid, _sigmoid_deriv, True)
gelu = Nonlinearity(
    "gelu",
    (),
    _gelu_fn,
    _gelu_deriv,
    True,
    # x Phi(x) = x / 2 + x erf(x / sqrt 2) / 2 = x / 2 + xerf(x / sqrt 2) / sqrt 2.
    ((0.5, ("pow", 1), 1.0), (1 / math.sqrt(2.0), ("xerf",), 1 / math.sqrt(2.0))),
)
sin = Nonlinearity("sin", (), torch.sin, torch.cos, True, ((1.0, ("sin",), 1.0),))
cos = Nonlinearity(
    "cos", (), torch.cos, lambda x: -torch.sin(x), True, ((1.0, ("cos",), 1.0),)
)
exp = Nonlinearity("exp", (), torch.exp, torch.exp, True, ((1.0, ("exp",), 1.0),))


def leaky_relu(alpha: float) -> Nonlinearity:
    """Leaky relu x -> max(x, 0) + alpha min(x, 0), i.e. ``abrelu(alpha, 1)``.

    Closed forms through relu: phi(x) = relu(x) - alpha relu(-x).

    >>> leaky_relu(0.1)(torch.tensor([-2.0, 3.0]))
    tensor([-0.2000,  3.0000])
    """
    alpha = float(alpha)
    fn = lambda x: torch.where(x > 0, x, alpha * x)  # noqa: E731
    terms = ((1.0, ("relu",), 1.0), (-alpha, ("relu",), -1.0))
    deriv = lambda x: torch.where(x > 0, 1.0, torch.full_like(x, alpha))  # noqa: E731
    return Nonlinearity("leaky_relu", (alpha,), fn, deriv, alpha == 1.0, terms)


def abrelu(a: float, b: float) -> Nonlinearity:
    """x -> a min(x, 0) + b max(x, 0) (neural-tangents' ABRelu).

    Closed forms through relu: phi(x) = b relu(x) - a relu(-x); relu is
    ``abrelu(0, 1)``, abs is ``abrelu(-1, 1)``.

    >>> abrelu(-1.0, 1.0).dual(2.0, 2.0, 2.0).item()  # E[|u|^2] = q
    2.0
    """
    a, b = float(a), float(b)

    def fn(x: Tensor) -> Tensor:
        return a * torch.clamp(x, max=0) + b * torch.clamp(x, min=0)

    def deriv(x: Tensor) -> Tensor:
        zero = torch.zeros_like(x)
        return torch.where(x > 0, zero + b, torch.where(x < 0, zero + a, zero))

    terms = ((b, ("relu",), 1.0), (-a, ("relu",), -1.0))
    return Nonlinearity("abrelu", (a, b), fn, deriv, a == b, terms)


def polynomial(coeffs: Any) -> Nonlinearity:
    """The polynomial x -> sum_k coeffs[k] x^k, with exact Gaussian moments (Wick).

    >>> p = polynomial([1.0, 0.0, 3.0])  # 1 + 3 x^2
    >>> p.dual(1.0, 1.0, 1.0).item()  # E[(1 + 3u^2)^2] = 1 + 6 + 9 * 3
    34.0
    """
    coeffs = tuple(float(a) for a in np.asarray(coeffs, dtype=np.float64).ravel())
    if not coeffs:
        raise ValueError("polynomial needs at least one coefficient, got none")

    def fn(x: Tensor) -> Tensor:
        out = torch.full_like(x, coeffs[-1])
        for a in coeffs[-2::-1]:
            out = out * x + a
        return out

    terms = tuple((a, ("pow", k), 1.0) for k, a in enumerate(coeffs) if a != 0.0)
    return Nonlinearity("polynomial", coeffs, fn, None, True, terms)


def _polynomial_derivative(p: Nonlinearity) -> Nonlinearity:
    coeffs = p.params
    if len(coeffs) == 1:
        return polynomial([0.0])
    return polynomial([k * a for k, a in enumerate(coeffs)][1:])


def _no_derivative(phi: Nonlinearity) -> Nonlinearity:
    raise ValueError(
        f"the derivative of {phi} is not a measure with known Gaussian expectations "
        "here; use gaussian.expect_grad(..., smooth=False) (Stein's lemma)"
    )


delta = Nonlinearity("delta", (), delta_fn, None, False, ((1.0, ("delta",), 1.0),))


square = Nonlinearity(
    "square", (), torch.square, lambda x: 2 * x, True, ((1.0, ("pow", 2), 1.0),)
)

_DERIVATIVES: dict[str, Callable[[Nonlinearity], Nonlinearity]] = {
    "identity": lambda _: polynomial([1.0]),
    "relu": lambda _: step,
    "abs": lambda _: sign,
    "step": lambda _: delta,
    "delta": _no_derivative,
    "square": lambda _: polynomial([0.0, 2.0]),
    "exp": lambda _: exp,
    "sin": lambda _: cos,
    "polynomial": _polynomial_derivative,
    "leaky_relu": lambda p: _from_terms(
        "leaky_relu'",
        p.params,
        ((1.0, ("step",), 1.0), (p.params[0], ("step",), -1.0)),
        False,
    ),
    "abrelu": lambda p: _from_terms(
        "abrelu'",
        p.params,
        ((p.params[1], ("step",), 1.0), (p.params[0], ("step",), -1.0)),
        False,
    ),
}

_REGISTRY = {
    phi.name: phi
    for phi in (
        identity,
        relu,
        step,
        delta,
        abs,
        sign,
        erf,
        tanh,
        sigmoid,
        gelu,
        sin,
        cos,
        exp,
        square,
    )
}


def get(name_or_nonlinearity: str | Nonlinearity | Callable) -> Nonlinearity:
    """Look up a nonlinearity by name; Nonlinearity objects pass through.

    A plain callable is wrapped with :func:`nonlinearity`.

    >>> get("relu") is relu
    True
    >>> get("swish")
    Traceback (most recent call last):
    ...
    ValueError: unknown nonlinearity 'swish'; known names: abs, cos, delta, erf, exp, \
gelu, identity, relu, sigmoid, sign, sin, square, step, tanh (or pass a function)
    """
    if isinstance(name_or_nonlinearity, Nonlinearity):
        return name_or_nonlinearity
    if isinstance(name_or_nonlinearity, str):
        phi = _REGISTRY.get(name_or_nonlinearity)
        if phi is None:
            raise ValueError(
                f"unknown nonlinearity {name_or_nonlinearity!r}; known names: "
                f"{', '.join(sorted(_REGISTRY))} (or pass a function)"
            )
        return phi
    if callable(name_or_nonlinearity):
        return nonlinearity(name_or_nonlinearity)
    raise TypeError(
        "expected a nonlinearity name, a Nonlinearity or a function, got "
        f"{type(name_or_nonlinearity).__name__}"
    )
