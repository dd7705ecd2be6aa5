"""The Master Theorem, instruction by instruction (ZHat, ZDot, Nonlin, Moment)."""

from __future__ import annotations

import itertools
import math

import torch

from .. import gaussian, nonlinearities
from ..gaussian import Estimate
from ..program import (
    InitMatrix,
    InitScalar,
    InitVector,
    LinComb,
    MatMul,
    Moment,
    Nonlin,
    Program,
    ScalarFn,
    Scale,
)
from ..program._func import MUL, func_of_nonlinearity
from ._z import (
    _F64,
    _METHODS,
    _ZERO1,
    _Apply,
    _as_lin,
    _Atom,
    _combine,
    _exact,
    _lane_sel,
    _Lin,
    _lipschitz,
    _scaled,
)

# ----------------------------------------------------------------------------
# The evaluator


class LimitError(FloatingPointError, ValueError):
    """The limit of an instruction could not be evaluated (an integral that is
    infinite, a scalar limit that is not finite, a covariance that is not positive
    semi-definite). Both a ``FloatingPointError`` (numerical trouble) and a
    ``ValueError`` (what the evaluator raised underneath, e.g. for bad values)."""


class _Evaluator:
    def __init__(self, program: Program, tol: float, mc_samples: int, seed: int):
        self.program = program
        self.tol, self.mc_samples, self.seed = tol, mc_samples, seed
        self.cov: dict = {}  # (atom id, atom id) -> (La, Lb) covariance
        self.cov_err: dict = {}  # the same keys -> (error, method) when not exact
        self.atoms: list[_Atom] = []
        self.families: dict = {}  # (matrix, transpose) -> [(atom, Z of the argument)]
        self.Z: dict[int, _Lin] = {}
        self.scalars: dict[int, Estimate] = {}
        self._grad_cache: dict = {}

    # ---- atoms ---
    def _new_atom(self, lanes, label):
        atom = _Atom(len(self.atoms), lanes, label)
        self.atoms.append(atom)
        return atom

    def _set_cov(self, a: _Atom, b: _Atom, est: Estimate):
        """Store the covariance block of two atoms, with its error and method."""
        self.cov[(a.id, b.id)] = est.value
        self.cov[(b.id, a.id)] = est.value.T
        if est.method != "exact":
            self.cov_err[(a.id, b.id)] = (est.error, est.method)
            self.cov_err[(b.id, a.id)] = (est.error.T, est.method)

    def _one(self, lanes):
        return torch.ones(max(lanes, 1), dtype=_F64)

    # ---- instructions ---
    def run(self):
        groups: dict = {}
        names = self.program.names()
        for i, ins in enumerate(self.program.instructions):
            try:
                self._step(i, ins, groups)
            except (ValueError, FloatingPointError) as exc:
                what = f"{type(ins).__name__} {ins.name} = {ins.describe(names)}"
                raise LimitError(f"{what}: {exc}") from exc
            est = self.scalars.get(i)
            if est is not None and not bool(torch.isfinite(est.value).all()):
                raise LimitError(
                    f"{type(ins).__name__} {ins.name} = {ins.describe(names)}: the "
                    f"limit is not finite ({est.value.tolist()})"
                )
        return self

    def _step(self, i, ins, groups):
        """Add the limit of instruction ``i`` (Z of a vector, value of a scalar)."""
        if isinstance(ins, InitVector):
            atom = self._new_atom(ins.lanes, f"Z[{ins.name}]")
            L = max(ins.lanes, 1)
            members = groups.setdefault(ins.group, [])
            members.append((ins.member, atom))
            for m, other in members:
                block = ins.group_cov[
                    ins.member * L : (ins.member + 1) * L, m * L : (m + 1) * L
                ]
                self._set_cov(atom, other, _exact(block.clone()))
            self.Z[i] = _Lin(
                [(atom, self._one(ins.lanes))], self._zero(ins.lanes), ins.lanes
            )
        elif isinstance(ins, InitMatrix):
            pass
        elif isinstance(ins, InitScalar):
            self.scalars[i] = _exact(ins.value.reshape(-1).to(_F64))
        elif isinstance(ins, MatMul):
            self.Z[i] = self._matmul(ins)
        elif isinstance(ins, LinComb):
            lanes = self.program._lanes[i]
            terms, const = [], self._zero(lanes) + ins.const
            method, err = 0, 0.0
            for a, c in zip(ins.args, ins.coefs):
                z = self.Z[a]
                terms += [(t, c * v) for t, v in z.terms]
                const = const + c * z.const
                method, err = max(method, z.method), err + abs(c) * z.err
            self.Z[i] = _Lin(terms, const, lanes, method, err)
        elif isinstance(ins, Scale):
            th = self.scalars[ins.scalar]
            z = self.Z[ins.arg]
            err = float(th.value.abs().max()) * z.err
            if bool((th.error > 0).any()):
                err += float(th.error.max()) * self.norm(z)
            self.Z[i] = z.scaled(
                th.value, self.program._lanes[i], _METHODS.index(th.method), err
            )
        elif isinstance(ins, Nonlin):
            self.Z[i] = self._nonlin(ins, self.program._lanes[i])
        elif isinstance(ins, Moment):
            z = self.Z[ins.arg]
            lanes = torch.arange(max(z.lanes, 1))
            self.scalars[i] = self.mean(z, lanes)
        elif isinstance(ins, ScalarFn):
            self.scalars[i] = self._scalar_fn(ins)
        else:  # pragma: no cover
            raise TypeError(f"unknown instruction {ins!r}")

    def _zero(self, lanes):
        return torch.zeros(max(lanes, 1), dtype=_F64)

    def _nonlin(self, ins: Nonlin, lanes: int) -> _Lin:
        args = [self.Z[a] for a in ins.args]
        nl = ins.func.nonlinearity
        if nl is not None and getattr(nl, "name", None) == "identity":
            return args[0]
        ests = [self.scalars[s] for s in ins.scalars]
        scal = tuple(e.value for e in ests)
        method = max((_METHODS.index(e.method) for e in ests), default=0)
        err = math.inf if any(bool((e.error > 0).any()) for e in ests) else 0.0
        if any(a.err for a in args):  # first-order propagation of argument errors
            if ins.func is MUL:
                x, y = args
                err += x.err * (self.norm(y) + y.err) + y.err * self.norm(x)
            else:
                err += sum(a.err for a in args) * _lipschitz(ins.func)
        app = _Apply(ins.func, tuple(args), scal, lanes, method, err)
        return _Lin([(app, self._one(lanes))], self._zero(lanes), lanes)

    def _scalar_fn(self, ins: ScalarFn) -> Estimate:
        ests = [self.scalars[a] for a in ins.args]
        vals = [e.value for e in ests]
        value = torch.as_tensor(ins.func.fn(*vals), dtype=_F64).reshape(-1)
        error = torch.zeros_like(value)
        method = max((_METHODS.index(e.method) for e in ests), default=0)
        for k, e in enumerate(ests):  # first-order propagation of each error
            if bool((e.error > 0).any()):
                bumped = list(vals)
                bumped[k] = vals[k] + e.error
                moved = torch.as_tensor(ins.func.fn(*bumped), dtype=_F64).reshape(-1)
                error = error + (moved - value).abs()
        return Estimate(value, error, _METHODS[method])

    def _matmul(self, ins: MatMul) -> _Lin:
        mat = self.program.instructions[ins.matrix]
        x = self.Z[ins.arg]
        lam = mat.out_ratio / mat.in_ratio
        sigma2 = mat.var * (lam if ins.transpose else 1.0)
        atom = self._new_atom(x.lanes, f"ZHat[{ins.name}]")

        family = self.families.setdefault((ins.matrix, ins.transpose), [])
        for other, y in family + [(atom, x)]:
            k = self.kernel(x, y)
            self._set_cov(
                atom, other, Estimate(sigma2 * k.value, sigma2 * k.error, k.method)
            )
        self._check_psd(atom, family, where=f"MatMul {ins.name}")
        family.append((atom, x))

        terms = [(atom, self._one(x.lanes))]
        const = self._zero(x.lanes)
        method, err = 0, 0.0
        for other, y in self.families.get((ins.matrix, not ins.transpose), []):
            if other.id not in x.deps:
                continue
            d = self.grad(x, other)  # E[dZ^x / dZHat^{other}] per lane of x
            method = max(method, _METHODS.index(d.method))
            if bool((d.error > 0).any()):
                err += sigma2 * float(d.error.max()) * self.norm(y)
            # A coefficient within its integration error of zero is zero (TP2's
            # gradient independence makes such terms vanish exactly).
            coef = torch.where(d.value.abs() <= d.error + 1e-13, 0.0, d.value)
            if not bool((coef != 0).any()):
                continue
            zy = y.scaled(sigma2 * coef, max(x.lanes, y.lanes))
            terms += list(zy.terms)
            const = const + zy.const
        return _Lin(terms, const, x.lanes, method, err)

    def _check_psd(self, atom, family, where):
        c = self.cov[(atom.id, atom.id)]
        if not torch.isfinite(c).all():
            raise LimitError(f"{where}: the limit covariance is not finite")
        if c.shape[0] > 1:
            ev = torch.linalg.eigvalsh((c + c.T) / 2)
            if float(ev.min()) < -1e-8 * max(float(ev.abs().max()), 1e-300):
                raise LimitError(
                    f"{where}: the limit covariance is not positive semi-definite "
                    f"(smallest eigenvalue {float(ev.min()):.3g})"
                )

    # ---- expectations ---
    def norm(self, z: _Lin) -> float:
        """``sqrt(max over lanes of E[Z^2])``, for error bounds."""
        lanes = torch.arange(max(z.lanes, 1))
        k = self.bilinear(z, lanes, z, lanes, quality=False).value
        return math.sqrt(max(float(k.max()), 0.0))

    def _quality(self, z: _Lin, P: int) -> Estimate:
        """A zero whose method and error are those of the coefficients of ``z``."""
        zero = torch.zeros(P, dtype=_F64)
        return Estimate(zero, zero + z.err, _METHODS[z.method])

    def mean(self, z: _Lin, lanes: torch.Tensor) -> Estimate:
        """``E[Z]`` at each lane of ``lanes`` (shape ``(P,)``)."""
        one = torch.ones(1, dtype=_F64)
        parts = [(one, _exact(_lane_sel(z.const, lanes).clone()))]
        if z.method or z.err:
            parts.append((one, self._quality(z, lanes.shape[0])))
        for t, c in z.terms:
            if isinstance(t, _Atom):
                continue
            parts.append((_lane_sel(c, lanes), self._mean_apply(t, lanes)))
        return _combine(parts)

    def _mean_apply(self, t: _Apply, lanes) -> Estimate:
        if t.func is MUL:
            return self.bilinear(t.args[0], lanes, t.args[1], lanes)
        g = self._gauss1(t)
        if g is not None:
            nl, arg = g
            q = self._var(arg, lanes)
            closed = nl.mean(q) if hasattr(nl, "mean") else None
            if closed is not None:
                return Estimate(closed.to(_F64), torch.zeros_like(q), "closed form")
        return self._generic([(t, lanes)], lambda v: v[0])

    def kernel(self, x: _Lin, y: _Lin) -> Estimate:
        """``E[Z^x_a Z^y_b]`` over all pairs of lanes: shape ``(Lx, Ly)``."""
        La, Lb = max(x.lanes, 1), max(y.lanes, 1)
        la, lb = torch.meshgrid(torch.arange(La), torch.arange(Lb), indexing="ij")
        est = self.bilinear(x, la.reshape(-1), y, lb.reshape(-1))
        return Estimate(
            est.value.reshape(La, Lb), est.error.reshape(La, Lb), est.method
        )

    def bilinear(self, x: _Lin, lx, y: _Lin, ly, quality=True) -> Estimate:
        """``E[Z^x Z^y]`` for the lane pairs ``(lx[p], ly[p])``."""
        parts = []
        one = torch.ones(1, dtype=_F64)
        cx, cy = _lane_sel(x.const, lx), _lane_sel(y.const, ly)
        if bool((cx != 0).any()) or bool((cy != 0).any()):
            parts.append((one, _exact(cx * cy)))
            if bool((cx != 0).any()):
                parts.append((cx, self.mean(y, ly)))
            if bool((cy != 0).any()):
                parts.append((cy, self.mean(x, lx)))
        for (s, a), (t, b) in itertools.product(x.terms, y.terms):
            coef = _lane_sel(a, lx) * _lane_sel(b, ly)
            parts.append((coef, self._pair(s, lx, t, ly)))
        for a, b in ((x, y), (y, x)) if quality else ():
            if a.method or a.err:  # Cauchy-Schwarz: |E[dA B]| <= |dA| |B|
                bound = a.err * (self.norm(b) + b.err) if a.err else 0.0
                q = self._quality(a, lx.shape[0])
                bound = torch.full_like(q.error, bound)  # inf stays inf, never nan
                parts.append((one, Estimate(q.value, bound, q.method)))
        if not parts:
            return _exact(torch.zeros(lx.shape[0], dtype=_F64))
        return _combine(parts)

    def _pair(self, s, ls, t, lt) -> Estimate:
        """``E[s t]`` for two terms (atoms or applications)."""
        if isinstance(s, _Atom) and isinstance(t, _Atom):
            value = self._atom_cov(s, ls, t, lt)
            err = self.cov_err.get((s.id, t.id))
            if err is None:
                return _exact(value)
            ia = ls if s.lanes else torch.zeros_like(ls)
            ib = lt if t.lanes else torch.zeros_like(lt)
            return Estimate(value, err[0][ia, ib], err[1])
        gs, gt = self._gauss1(s), self._gauss1(t)
        if gs is not None and gt is not None:
            (phi, u), (psi, v) = gs, gt
            q1, q2 = self._var(u, ls), self._var(v, lt)
            c = self._cross(u, ls, v, lt)
            # closed form, Mehler series or 2-D quadrature (tensorprograms.gaussian)
            return gaussian.bivariate(phi, psi, q1, q2, c, **self._opts())
        return self._product([(s, ls), (t, lt)])

    # ---- products of independent factors ------------------------------------------
    def _factors(self, node, lanes, out, coef):
        """Flatten products: ``node`` = ``coef * prod(out)``; returns ``coef``."""
        if isinstance(node, _Apply) and node.func is MUL:
            for arg in node.args:
                if len(arg.terms) == 1 and not bool((arg.const != 0).any()):
                    term, c = arg.terms[0]
                    coef = coef * _lane_sel(c, lanes)
                    coef = self._factors(term, lanes, out, coef)
                else:
                    out.append((arg, lanes))
            return coef
        out.append((node, lanes))
        return coef

    def _correlated(self, a: frozenset, b: frozenset) -> bool:
        for i in a:
            for j in b:
                c = self.cov.get((i, j))
                if c is not None and bool((c != 0).any()):
                    return True
        return False

    def _product(self, roots) -> Estimate:
        """``E[prod roots]``, factorised over groups of independent factors."""
        factors: list = []
        coef = torch.ones(roots[0][1].shape[0], dtype=_F64)
        for node, lanes in roots:
            coef = self._factors(node, lanes, factors, coef)
        groups: list[list] = []  # connected components of correlated factors
        for f in factors:
            joined = [
                g
                for g in groups
                if any(self._correlated(f[0].deps, h[0].deps) for h in g)
            ]
            merged = [f] + [h for g in joined for h in g]
            groups = [g for g in groups if not any(g is j for j in joined)] + [merged]
        if len(groups) == 1 and len(factors) == len(roots) == 2:
            return _scaled(coef, self._generic(roots, lambda v: v[0] * v[1]))
        parts = [self._group_expect(g) for g in groups]
        value, error = coef.clone(), torch.zeros_like(coef)
        for est in parts:  # |d(prod)| <= sum of |err_i| * prod of the others
            error = error * est.value.abs() + value.abs() * est.error
            value = value * est.value
        method = max((_METHODS.index(e.method) for e in parts), default=0)
        return Estimate(value, error, _METHODS[method])

    def _group_expect(self, group) -> Estimate:
        if len(group) == 1:
            node, lanes = group[0]
            if isinstance(node, _Atom):
                return _exact(torch.zeros(lanes.shape[0], dtype=_F64))
            if isinstance(node, _Lin):
                return self.mean(node, lanes)
            return self._mean_apply(node, lanes)
        if len(group) == 2:
            (a, la), (b, lb) = group
            if isinstance(a, _Lin) or isinstance(b, _Lin):
                return self.bilinear(_as_lin(a), la, _as_lin(b), lb)
            return self._pair(a, la, b, lb)

        def prod(vals):
            out = vals[0]
            for v in vals[1:]:
                out = out * v
            return out

        return self._generic(group, prod)

    def _gauss1(self, t):
        """``(phi, u)`` when the term is ``phi(u)`` of a centred Gaussian form ``u``."""
        if isinstance(t, _Atom):
            return nonlinearities.identity, _Lin(
                [(t, torch.ones(1, dtype=_F64))], _ZERO1, t.lanes
            )
        nl = t.func.nonlinearity
        if nl is None or t.func.n_scalars:
            return None
        (u,) = t.args
        if not u.gaussian or bool((u.const != 0).any()):
            return None
        return nl, u

    def _atom_cov(self, a: _Atom, la, b: _Atom, lb) -> torch.Tensor:
        c = self.cov.get((a.id, b.id))
        if c is None:
            return torch.zeros(la.shape[0], dtype=_F64)
        ia = la if a.lanes else torch.zeros_like(la)
        ib = lb if b.lanes else torch.zeros_like(lb)
        return c[ia, ib]

    def _cross(self, u: _Lin, lu, v: _Lin, lv) -> torch.Tensor:
        """Covariance of two Gaussian forms at lanes ``lu``, ``lv``."""
        out = torch.zeros(lu.shape[0], dtype=_F64)
        for (a, ca), (b, cb) in itertools.product(u.terms, v.terms):
            out = out + _lane_sel(ca, lu) * _lane_sel(cb, lv) * self._atom_cov(
                a, lu, b, lv
            )
        return out

    def _var(self, u: _Lin, lanes) -> torch.Tensor:
        return self._cross(u, lanes, u, lanes)

    # ---- generic integration ---
    def _integrand(self, roots, combine):
        ctx = _Context(self, roots)

        def f(g, rows):
            vals = [ctx.value(node, r, g, rows) for r, (node, _) in enumerate(roots)]
            return combine(vals)

        return ctx, f

    def _opts(self):
        return dict(atol=self.tol, mc_samples=self.mc_samples, seed=self.seed)

    def _generic(self, roots, combine) -> Estimate:
        """``E[combine(roots)]`` by quadrature or Monte Carlo over the leaves."""
        ctx, f = self._integrand(roots, combine)
        if not ctx.leaves:  # deterministic: no Gaussian input at all
            rows = torch.arange(ctx.P)
            return _exact(f(torch.zeros(ctx.P, 1, 0, dtype=_F64), rows)[:, 0])
        opts = {**self._opts(), **ctx.kink_options()}
        return gaussian.expect(f, ctx.covariance(), indexed=True, **opts)

    def _generic_grad(self, root):
        """``E[d root / d leaf]`` for every Gaussian leaf of ``root``."""
        ctx, f = self._integrand([root], lambda v: v[0])
        smooth = root[0].smooth
        opts = {**self._opts(), **ctx.kink_options()}
        est = gaussian.expect_grad(
            f, ctx.covariance(), indexed=True, smooth=smooth, **opts
        )
        return est, ctx

    def grad(self, z: _Lin, atom: _Atom) -> Estimate:
        """``E[dZ / d atom]`` at every lane of ``z``: shape ``(Lz,)``."""
        Lz = max(z.lanes, 1)
        lanes = torch.arange(Lz)
        parts = [(torch.ones(1, dtype=_F64), _exact(torch.zeros(Lz, dtype=_F64)))]
        for t, c in z.terms:
            if atom.id not in t.deps:
                continue
            if isinstance(t, _Atom):
                parts.append((c.expand(Lz), _exact(torch.ones(Lz, dtype=_F64))))
            else:
                grads, method, err = self._grad_apply(t, lanes)
                parts.append((c.expand(Lz), Estimate(grads[atom.id], err, method)))
        return _combine(parts)

    def _grad_apply(self, t: _Apply, lanes):
        """``({atom id: E[d t / d atom]}, method, error)``, lane-matched."""
        key = (id(t), lanes.shape[0])
        if key in self._grad_cache:
            return self._grad_cache[key][1]
        g1 = self._gauss1(t)
        out: dict = {}
        if g1 is not None:  # E[d phi(u) / d a] = coef_a(u) E[phi'(u)]
            phi, u = g1
            d = phi.derivative()
            q = self._var(u, lanes)
            m = d.mean(q)
            if m is None:
                dt = _Apply(_func_of(d), (u,), (), t.lanes)
                est = self._generic([(dt, lanes)], lambda v: v[0])
            else:
                est = Estimate(m.to(_F64), torch.zeros_like(q), "closed form")
            err = torch.zeros_like(q)
            for a, c in u.terms:
                c = _lane_sel(c, lanes)
                out[a.id] = out.get(a.id, 0) + c * est.value
                err = err + c.abs() * est.error
        else:
            est, ctx = self._generic_grad((t, lanes))
            err = est.error.abs().sum(-1)
            for j, (terms, _) in enumerate(ctx.leaves):
                for a, c in terms:
                    out[a.id] = out.get(a.id, 0) + c * est.value[:, j]
        result = (out, est.method, err)
        self._grad_cache[key] = (t, result)  # keep t alive so its id stays unique
        return result


class _Context:
    """Gaussian leaves of a set of roots, and the roots' values at given points."""

    def __init__(self, ev: _Evaluator, roots):
        self.ev = ev
        self.P = roots[0][1].shape[0]
        self.leaves: list = []  # ([(atom, coef (P,))], lanes of each atom (P,) list)
        self.leaf_of: dict = {}
        self.lanes_of: list = [lanes for _, lanes in roots]
        # Kinks g_leaf + offset = 0 of the non-smooth functions (None: unknown).
        self.planes: list | None = []
        seen: set = set()
        for r, (node, _) in enumerate(roots):
            self._collect(node, r, seen)

    def _collect(self, node, r, seen):
        key = (id(node), r)
        if key in seen:
            return
        seen.add(key)
        lanes = self.lanes_of[r]
        if isinstance(node, _Atom):
            self.leaf_of[key] = len(self.leaves)
            self.leaves.append(([(node, torch.ones(self.P, dtype=_F64))], lanes))
        elif isinstance(node, _Lin):
            gauss = [
                (t, _lane_sel(c, lanes)) for t, c in node.terms if isinstance(t, _Atom)
            ]
            if gauss:
                self.leaf_of[key] = len(self.leaves)
                self.leaves.append((gauss, lanes))
            for t, _ in node.terms:
                if not isinstance(t, _Atom):
                    self._collect(t, r, seen)
        else:
            for a in node.args:
                self._collect(a, r, seen)
            if not node.func.smooth:
                self._note_kinks(node, r)

    def _note_kinks(self, node, r):
        """phi(u) with kinks t_i and u = leaf + const: planes leaf + const - t_i."""
        kinks = node.func.kinks
        if self.planes is None or kinks is None or node.scalars:
            self.planes = None
            return
        (u,) = node.args
        if not all(isinstance(t, _Atom) for t, _ in u.terms):
            self.planes = None  # a kink on a curved surface: not resolved
            return
        leaf = self.leaf_of.get((id(u), r))
        if leaf is None:
            return  # a constant argument: no kink
        const = _lane_sel(u.const, self.lanes_of[r])
        self.planes += [(leaf, const - t) for t in kinks]

    def kink_options(self) -> dict:
        """``kinks``/``offsets`` for gaussian.expect when some kink is off 0."""
        if not self.planes or all(not bool(b.any()) for _, b in self.planes):
            return {}  # smooth, unknown kinks, or all on coordinate planes
        rows = torch.zeros(len(self.planes), len(self.leaves), dtype=_F64)
        for j, (leaf, _) in enumerate(self.planes):
            rows[j, leaf] = 1.0
        offsets = torch.stack([b for _, b in self.planes], dim=-1)  # (P, j)
        return dict(kinks=rows, offsets=offsets)

    def covariance(self) -> torch.Tensor:
        k = len(self.leaves)
        C = torch.zeros(self.P, k, k, dtype=_F64)
        for i, j in itertools.combinations_with_replacement(range(k), 2):
            (ti, li), (tj, lj) = self.leaves[i], self.leaves[j]
            c = torch.zeros(self.P, dtype=_F64)
            for (a, ca), (b, cb) in itertools.product(ti, tj):
                c = c + ca * cb * self.ev._atom_cov(a, li, b, lj)
            C[:, i, j] = c
            C[:, j, i] = c
        return C

    def value(self, node, r, g, rows, memo=None):
        """Value of ``node`` (root ``r``) at points ``g`` of shape ``(p, Q, k)``."""
        if memo is None:
            memo = {}
        key = (id(node), r)
        if key in memo:
            return memo[key]
        lanes = self.lanes_of[r][rows]
        if isinstance(node, _Atom):
            out = g[..., self.leaf_of[key]]
        elif isinstance(node, _Lin):
            out = _lane_sel(node.const, lanes)[:, None].expand(g.shape[0], g.shape[1])
            if key in self.leaf_of:
                out = out + g[..., self.leaf_of[key]]
            for t, c in node.terms:
                if not isinstance(t, _Atom):
                    out = out + _lane_sel(c, lanes)[:, None] * self.value(
                        t, r, g, rows, memo
                    )
        else:
            args = [self.value(a, r, g, rows, memo) for a in node.args]
            scal = [_lane_sel(s.reshape(-1), lanes)[:, None] for s in node.scalars]
            out = node.func.fn(*args, *scal)
        memo[key] = out
        return out


def _func_of(nl):
    return func_of_nonlinearity(nl)
