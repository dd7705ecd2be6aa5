"""Coordinatewise nonlinearities and their dual kernels.

For pre-activations (u, u') ~ N(0, [[q1, c], [c, q2]]) a nonlinearity phi maps
(TP1 section 3, THEORY.md section 3)

    nngp' = E[phi(u) phi(u')],    ntk' = ntk * E[phi'(u) phi'(u')].

Closed forms (vectorised over whole tiles, float64): ABRelu and its special cases
(Cho and Saul's arc-cosine kernels), Erf (Williams 1997), Gelu, Identity. Every
other function (Tanh, Sigmoid, `Elementwise`) is integrated by
`tensorprograms.gaussian.bivariate`, Gauss-Hermite quadrature refined until two
orders agree to the stated tolerance; a tile whose reported error exceeds it raises.
"""

from __future__ import annotations

import math

import torch

from .. import gaussian
from ._kernel import _State, mixed_message, pair_shapes, self_pair_shapes
from ._layer import Layer
from ._sample import Function

__all__ = [
    "ABRelu",
    "Abs",
    "Elementwise",
    "Erf",
    "Gelu",
    "Identity",
    "LeakyRelu",
    "Relu",
    "Sigmoid",
    "Tanh",
]

# |c| may exceed sqrt(q1 q2) by rounding; beyond this relative margin the covariance
# handed to a nonlinearity is not positive semi-definite and the layer raises.
_PSD_SLACK = 1e-6


class _Activation(Layer):
    """A coordinatewise nonlinearity: position-wise, shape-preserving."""

    _variance_only_ok = True

    def out_shape(self, in_shape):
        return tuple(in_shape)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _dual(self, c, qa, qb) -> tuple[torch.Tensor, torch.Tensor]:
        """(E[phi phi'], E[dphi dphi']) for covariance c and variances qa, qb."""
        raise NotImplementedError

    def _dual_self(self, q: torch.Tensor) -> torch.Tensor:
        """E[phi(u)^2], u ~ N(0, q)."""
        return self._dual(q, q, q)[0]

    # Whether `_dual_mean` avoids materialising the dual (see `_step`).
    _fuses_mean = False

    def _dual_mean(self, c, qa, qb, ntk) -> tuple[torch.Tensor, torch.Tensor]:
        """Means over the trailing (spatial) axes of a (B1, B2, ...) tile of
        E[phi phi'] and ntk E[dphi dphi']: shapes (B1, B2)."""
        nngp, dot = self._dual(c, qa, qb)
        dims = tuple(range(2, c.ndim))
        return nngp.mean(dim=dims), (dot * ntk).mean(dim=dims)

    def _step(self, s: _State, out_full: bool, spatial_mean: bool = False) -> _State:
        """The dual kernel rule; with spatial_mean (full mode, only where
        `_fuses_mean`), nngp and ntk come back as their means over all spatial
        pairs, shape (B1, B2), for a `GlobalAvgPool` that follows (the caller
        completes the state)."""
        if not s.gaussian:
            raise ValueError(
                f"{type(self).__name__}: its input units are not Gaussian in the "
                "limit (network inputs, or the output of a nonlinearity), so "
                "E[phi(u) phi(u')] over a Gaussian would be wrong; put a Dense, Conv "
                "or attention layer before it"
            )
        if s.mixed:
            raise ValueError(mixed_message(type(self).__name__))
        nd = len(s.spatial)
        q1, q2 = s.variances()
        if (q1 < 0).any() or (q2 < 0).any():
            raise ValueError(
                f"{type(self).__name__}: negative input variance "
                f"{min(float(q1.min()), float(q2.min()))}"
            )
        qa, qb = pair_shapes(q1, q2, nd, s.full)
        if spatial_mean:
            nngp, ntk = self._dual_mean(s.nngp, qa, qb, s.ntk)
        else:
            nngp, dot = self._dual(s.nngp, qa, qb)
            ntk = dot.mul_(s.ntk) if dot.shape == s.ntk.shape else dot * s.ntk

        def self_map(cov, _):
            if s.full and nd:
                q = cov if cov.ndim == 1 + nd else _variance(cov, nd)
                a, b = self_pair_shapes(q, nd, True)
                return self._dual(cov, a, b)[0]
            return self._dual_self(cov)

        cov1, cov2 = s.map_covs(self_map)
        return s.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2, gaussian=False)

    def _build(self, in_shape, ctx):
        return Function(self.fn, type(self).__name__), tuple(in_shape)


def _variance(cov: torch.Tensor, nd: int) -> torch.Tensor:
    spatial = cov.shape[1 : 1 + nd]
    p = math.prod(spatial)
    flat = cov.reshape(cov.shape[0], p, p)
    return torch.diagonal(flat, dim1=1, dim2=2).reshape(cov.shape[0], *spatial)


def _check_psd(rho: torch.Tensor, layer: str) -> bool:
    """Raise if |rho| exceeds 1 by more than rounding (one pass over rho); return
    whether rho needs clamping to [-1, 1] (or holds NaN)."""
    if not rho.numel():
        return False
    lo, hi = torch.aminmax(rho)
    worst = max(float(hi), -float(lo))
    if worst > 1 + _PSD_SLACK:
        raise ValueError(
            f"{layer}: the input covariance is not positive semi-definite "
            f"(|c| / sqrt(q1 q2) = {worst:.6g} > 1); the kernel lost positive "
            "semi-definiteness in an earlier layer"
        )
    return not worst <= 1.0


def _correlation(c, qa, qb, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """rho = c / sqrt(qa qb) clamped to [-1, 1], and sqrt(qa qb) (a fresh tensor of
    the broadcast shape); raises if |rho| > 1.

    sqrt is taken of the rounded product qa qb, so that rho = 1 exactly where
    c = qa = qb (an input with itself)."""
    norm = torch.mul(qa, qb).sqrt_()
    # The guard against 0 / 0 costs a pass; skip it when no product can be below.
    low = float(qa.min()) * float(qb.min()) if qa.numel() and qb.numel() else 1.0
    rho = c / (norm if low > 1e-290 else norm.clamp_min(1e-300))
    if _check_psd(rho, layer):
        rho.clamp_(-1.0, 1.0)
    return rho, norm


class ABRelu(_Activation):
    """phi(x) = a min(x, 0) + b max(x, 0) (neural-tangents' ABRelu).

    Arc-cosine closed form (Cho and Saul 2009; TP1 section 3): with
    rho = c / sqrt(q1 q2), theta = arccos(rho),

        E[phi' phi'] = ((a^2 + b^2)(pi - theta) + 2 a b theta) / (2 pi),
        E[phi phi] = sqrt(q1 q2) ((a - b)^2 sin(theta) / (2 pi) + rho E[phi' phi']).

    Args:
        a: slope for x < 0.
        b: slope for x > 0.

    Example:
        >>> import torch
        >>> from tensorprograms import nn
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> k = nn.serial(nn.Dense(1), nn.ABRelu(0.0, 1.0)).kernel(x)
        >>> round(float(k.nngp[0, 1]), 6)  # relu of orthogonal inputs, q = 1/2
        0.079577
    """

    def __init__(self, a: float, b: float):
        self.a, self.b = float(a), float(b)

    def fn(self, x):
        return self.a * torch.clamp(x, max=0) + self.b * torch.clamp(x, min=0)

    def _dual(self, c, qa, qb):
        rho, norm = _correlation(c, qa, qb, type(self).__name__)
        part, dot = self._dual_parts(rho)
        return part.mul_(norm), dot

    def _dual_parts(self, rho):
        """(rho dot + (a - b)^2 sin(theta) / (2 pi), dot), overwriting rho.

        E[phi phi'] = norm (rho dot + (a - b)^2 sin(theta) / (2 pi)) is a smooth
        function of rho even at rho = 1 (d/drho = 2 pi dot); sin(theta) is taken
        from the same rounded rho as theta, so collinear inputs stay exact to
        rounding. One fresh tensor per result; the rest is in place."""
        a, b = self.a, self.b
        theta = torch.acos(rho)
        sine = torch.sin(theta) if a != b else None
        slope = (2 * a * b - a * a - b * b) / (2 * math.pi)
        k0 = theta.new_tensor((a * a + b * b) / 2)
        dot = torch.add(k0, theta, alpha=slope, out=theta)  # k0 + slope theta
        part = rho.mul_(dot)
        if sine is not None:
            part.add_(sine, alpha=(a - b) ** 2 / (2 * math.pi))
        return part, dot

    _fuses_mean = True

    def _dual_mean(self, c, qa, qb, ntk):
        """As `_dual`, but E[phi phi'] = norm * (rho dot + ...) and ntk * dot are
        reduced by dot products (BLAS, read-only) instead of being written."""
        rho, norm = _correlation(c, qa, qb, type(self).__name__)
        part, dot = self._dual_parts(rho)
        b, p = c.shape[0] * c.shape[1], math.prod(c.shape[2:])

        def mean_of_product(x, y):
            y = y.expand(c.shape).reshape(b, p, 1)
            return torch.bmm(x.reshape(b, 1, p), y).reshape(c.shape[:2]).div_(p)

        return mean_of_product(part, norm), mean_of_product(dot, ntk)

    def _dual_self(self, q):
        return (self.a**2 + self.b**2) / 2 * q


class Relu(ABRelu):
    """phi(x) = max(x, 0); see `ABRelu` (a = 0, b = 1) for the kernel.

    Example:
        >>> from tensorprograms import nn
        >>> nn.Relu().fn(__import__("torch").tensor([-1.0, 2.0])).tolist()
        [0.0, 2.0]
    """

    def __init__(self):
        super().__init__(0.0, 1.0)

    def __repr__(self):
        return "Relu()"


class LeakyRelu(ABRelu):
    """phi(x) = max(x, 0) + alpha min(x, 0); see `ABRelu` (a = alpha, b = 1).

    Example:
        >>> from tensorprograms import nn
        >>> nn.LeakyRelu(0.1).fn(__import__("torch").tensor([-1.0, 2.0])).tolist()
        [-0.10000000149011612, 2.0]
    """

    def __init__(self, alpha: float):
        super().__init__(float(alpha), 1.0)
        self.alpha = float(alpha)

    def __repr__(self):
        return f"LeakyRelu(alpha={self.alpha})"


class Abs(ABRelu):
    """phi(x) = |x|; see `ABRelu` (a = -1, b = 1).

    Example:
        >>> from tensorprograms import nn
        >>> nn.Abs().fn(__import__("torch").tensor([-1.5])).tolist()
        [1.5]
    """

    def __init__(self):
        super().__init__(-1.0, 1.0)

    def __repr__(self):
        return "Abs()"


class Erf(_Activation):
    """phi(x) = erf(x), closed form (Williams 1997; THEORY.md section 3):

        E[phi phi] = (2/pi) arcsin(2c / sqrt((1 + 2 q1)(1 + 2 q2))),
        E[phi' phi'] = (4/pi) / sqrt((1 + 2 q1)(1 + 2 q2) - 4 c^2).

    Example:
        >>> import torch
        >>> from tensorprograms import nn
        >>> x = torch.ones(1, 1, dtype=torch.float64)
        >>> round(float(nn.serial(nn.Dense(1), nn.Erf()).kernel(x).nngp), 6)
        0.464559
    """

    def fn(self, x):
        return torch.erf(x)

    def _dual(self, c, qa, qb):
        _correlation(c, qa, qb, "Erf")
        prod = (1 + 2 * qa) * (1 + 2 * qb)
        nngp = torch.asin((2 * c) / prod.sqrt()).mul_(2 / math.pi)
        dot = (prod - 4 * c * c).rsqrt_().mul_(4 / math.pi)
        return nngp, dot

    def _dual_self(self, q):
        return torch.asin(2 * q / (1 + 2 * q)) * (2 / math.pi)

    def __repr__(self):
        return "Erf()"


class Gelu(_Activation):
    """phi(x) = x Phi(x) (exact GELU), closed form (Tsuchida et al. 2021): with
    D^2 = (1 + q1)(1 + q2) - c^2 and t = arctan(c / D),

        E[phi phi] = c/4 + ((c^2 + q1 q2 D^2) / ((1 + q1)(1 + q2) D) + c t) / (2 pi),
        E[phi' phi'] = 1/4 + t / (2 pi)
                       + c (1/D^2 + (1 - q1 q2) / ((1 + q1)(1 + q2)) + 1) / (2 pi D).

    Both verified against two-dimensional numerical integration in the tests.

    Example:
        >>> import torch
        >>> from tensorprograms import nn
        >>> nn.Gelu().fn(torch.tensor([0.0, 1.0], dtype=torch.float64)).tolist()
        [0.0, 0.8413447460685429]
    """

    def fn(self, x):
        return x * 0.5 * (1 + torch.erf(x / math.sqrt(2)))

    def _dual(self, c, qa, qb):
        _correlation(c, qa, qb, "Gelu")
        p1 = (1 + qa) * (1 + qb)
        prod = qa * qb
        d2 = p1 - c * c
        d = d2.sqrt()
        t = torch.atan2(c, d)
        nngp = ((c * c + prod * d2) / (p1 * d) + c * t) / (2 * math.pi) + c / 4
        dot = 0.25 + t / (2 * math.pi)
        dot = dot + c * (1 / d2 + (1 - prod) / p1 + 1) / (2 * math.pi * d)
        return nngp, dot

    def __repr__(self):
        return "Gelu()"


class Identity(_Activation):
    """phi(x) = x: nngp and ntk pass unchanged.

    Example:
        >>> from tensorprograms import nn
        >>> nn.Identity().out_shape((3,))
        (3,)
    """

    def fn(self, x):
        return x

    def _dual(self, c, qa, qb):
        return c.clone(), torch.ones_like(c)

    def _dual_self(self, q):
        return q

    def _step(self, s, out_full):
        return s

    def __repr__(self):
        return "Identity()"


class _Numerical(_Activation):
    """Dual kernels by `tensorprograms.gaussian.bivariate` to a stated tolerance.

    Each entry E[f(u) f(u')] (f = phi, then phi') is computed to an error of at most
    ``tol * max(1, s)``, s = sqrt(E[f(u)^2] E[f(u')^2]) over the largest variances
    of the tile, which bounds |E[f(u) f(u')]| (Cauchy-Schwarz): absolute for kernels
    of order one, relative to the kernel's size for large ones (an absolute 1e-9 on
    E[exp(u) exp(u')] ~ 1e7 is below its own rounding).
    """

    tol = 1e-9

    def _nonlinearity(self):
        raise NotImplementedError

    def _dual(self, c, qa, qb):
        phi = self._nonlinearity()
        dphi = phi.derivative()
        _correlation(c, qa, qb, type(self).__name__)
        out = []
        for f in (phi, dphi):
            atol = self.tol * max(1.0, _size(f, qa, qb))
            est = gaussian.bivariate(f, f, qa, qb, c, atol=atol, rtol=0.0)
            worst = float(est.error.max()) if est.error.numel() else 0.0
            if not worst <= atol:
                raise ValueError(
                    f"{type(self).__name__}: Gaussian integral did not reach the "
                    f"tolerance {atol:.3g} = tol * max(1, kernel size) (estimated "
                    f"error {worst:.3g}); pass a larger tol"
                )
            out.append(est.value.to(c.dtype))
        return out[0], out[1]


def _size(f, qa: torch.Tensor, qb: torch.Tensor) -> float:
    """sqrt(E[f(u)^2] E[f(u')^2]) at the largest variances of both sides, which
    bounds every |E[f(u) f(u')]| of the tile when E[f(u)^2] grows with the variance
    (checked at both ends of each side: the largest of these)."""
    ends = []
    for q in (qa, qb):
        q = q.reshape(-1)
        pts = torch.stack([q.min(), q.max()]) if q.numel() else q.new_ones(1)
        est = gaussian.bivariate(f, f, pts, pts, pts, atol=1e-6, rtol=1e-6)
        ends.append(float(est.value.abs().max()))
    return math.sqrt(ends[0] * ends[1])


class Tanh(_Numerical):
    """phi(x) = tanh(x); no closed form: quadrature to error `tol`.

    Args:
        tol: error allowed for each E[phi phi'] and E[phi' phi'] entry (absolute for
            kernels of order one, relative beyond; see `_Numerical`).

    Example:
        >>> import torch
        >>> from tensorprograms import nn
        >>> nn.Tanh().fn(torch.zeros(1)).tolist()
        [0.0]
    """

    def __init__(self, tol: float = 1e-9):
        self.tol = float(tol)

    def fn(self, x):
        return torch.tanh(x)

    def _nonlinearity(self):
        from .. import nonlinearities

        return nonlinearities.tanh


class Sigmoid(_Numerical):
    """phi(x) = 1 / (1 + exp(-x)) (the logistic function, not neural-tangents'
    erf-based Sigmoid_like); quadrature to error `tol`.

    Example:
        >>> import torch
        >>> from tensorprograms import nn
        >>> nn.Sigmoid().fn(torch.zeros(1)).tolist()
        [0.5]
    """

    def __init__(self, tol: float = 1e-9):
        self.tol = float(tol)

    def fn(self, x):
        return torch.sigmoid(x)

    def _nonlinearity(self):
        from .. import nonlinearities

        return nonlinearities.sigmoid


class Elementwise(_Numerical):
    """Any coordinatewise torch function; kernels by quadrature to error `tol`.

    Args:
        fn: elementwise function of a torch tensor (must be finite on the reals).
        deriv: its derivative (autograd of fn when None); used by the NTK.
        tol: error allowed for each dual-kernel entry (absolute for kernels of
            order one, relative beyond).
        name: name shown in messages.

    Example:
        >>> import torch
        >>> from tensorprograms import nn
        >>> layer = nn.Elementwise(torch.sin, deriv=torch.cos)
        >>> x = torch.ones(1, 1, dtype=torch.float64)
        >>> k = nn.serial(nn.Dense(1), layer).kernel(x)  # (1 - exp(-2)) / 2
        >>> round(float(k.nngp), 8)
        0.43233236
    """

    def __init__(self, fn, deriv=None, tol: float = 1e-9, name: str | None = None):
        if not callable(fn):
            raise TypeError(
                f"Elementwise: fn must be callable, got {type(fn).__name__}"
            )
        self._fn, self.deriv, self.tol = fn, deriv, float(tol)
        self.name = name or getattr(fn, "__name__", "fn")

    def fn(self, x):
        return self._fn(x)

    def _nonlinearity(self):
        from .. import nonlinearities

        return nonlinearities.nonlinearity(self._fn, deriv=self.deriv, name=self.name)

    def __repr__(self):
        return f"Elementwise({self.name})"
