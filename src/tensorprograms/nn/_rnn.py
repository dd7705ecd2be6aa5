"""A simple recurrent cell that reuses its weight matrix at every time step.

    h^t = (W_std / sqrt(n)) W s^(t-1) + (U_std / sqrt(d)) U xi^t + b_std b,
    s^t = phi(h^t),  s^0 = 0,

over sequences xi of shape (T, d) (the time axis plays the role of a spatial axis,
channels last). W is the same n x n matrix at every step, so the Master Theorem (TP1
section 4, the RNN example; TP2 for the NTK) ties all time steps together: for inputs
x, x' and steps t, t'

    Sigma^{t,t'} = W_std^2 E[phi(h^{t-1}) phi(h'^{t'-1})] + U_std^2 K_in^{t,t'} + b^2,
    Theta^{t,t'} = Sigma^{t,t'} + U_std^2 Theta_in^{t,t'}
                   + W_std^2 E[phi'(h^{t-1}) phi'(h'^{t'-1})] Theta^{t-1,t'-1},

(the W terms absent when t = 1 or t' = 1, as s^0 = 0; b = b_std), where (h, h')
are Gaussian with the variances Sigma^{t-1,t-1}(x, x), Sigma^{t'-1,t'-1}(x', x') and
covariance Sigma^{t-1,t'-1}(x, x'): a recursion over all pairs of time steps of both
sequences.
The backward pass meets TP2's gradient-independence condition (the readout after the
cell is fresh), so the NTK factorises as written. The output is the last state s^T or
the mean of the states over time, with kernels E[phi phi] and E[phi' phi'] Theta
read at (T, T) or averaged over all pairs.
"""

from __future__ import annotations

import math

import torch

from ._activations import _Activation
from ._dense import check_std
from ._kernel import _State
from ._layer import Layer, _BuildContext

__all__ = ["RNN"]


class RNN(Layer):
    """Recurrent cell with a tied hidden matrix; NTK parametrization.

    Args:
        out_dim: hidden width n (the readout's width if it is the last layer).
        phi: the activation, a `tensorprograms.nn` nonlinearity layer (default Erf).
        W_std: scale of the hidden-to-hidden matrix W (n x n, reused every step).
        U_std: scale of the input matrix U.
        b_std: bias scale (None: no bias).
        readout: "last" (s^T) or "mean" (average of s^1..s^T).

    Inputs have shape (N, T, d); outputs (N, n).

    Example:
        >>> import torch
        >>> from tensorprograms import nn
        >>> x = torch.ones(2, 3, 1, dtype=torch.float64)  # 2 sequences of 3 steps
        >>> k = nn.serial(nn.RNN(8, nn.Relu(), W_std=1.0), nn.Dense(1)).kernel(x)
        >>> k.nngp.shape
        torch.Size([2, 2])
    """

    parametric = True

    def __init__(
        self,
        out_dim: int,
        phi: Layer | None = None,
        W_std: float = 1.0,
        U_std: float = 1.0,
        b_std: float | None = None,
        readout: str = "last",
    ):
        from ._activations import Erf

        if isinstance(out_dim, bool) or int(out_dim) != out_dim or out_dim < 1:
            raise ValueError(
                f"RNN: out_dim must be a positive integer, got {out_dim!r}"
            )
        phi = Erf() if phi is None else phi
        if not isinstance(phi, _Activation):
            raise TypeError(
                f"RNN: phi must be a nonlinearity layer such as nn.Erf(), got {phi!r}"
            )
        if readout not in ("last", "mean"):
            raise ValueError(f"RNN: readout must be 'last' or 'mean', got {readout!r}")
        self.out_dim = int(out_dim)
        self.phi = phi
        self.W_std = check_std(W_std, "W_std", "RNN")
        self.U_std = check_std(U_std, "U_std", "RNN")
        self.b_std = check_std(b_std, "b_std", "RNN", allow_none=True)
        self.readout = readout

    def out_shape(self, in_shape):
        if len(in_shape) != 2:
            raise ValueError(
                f"RNN: expected sequences of shape (T, d), got per-example shape "
                f"{tuple(in_shape)}"
            )
        return (self.out_dim,)

    def _in_full(self, out_full):
        return True

    def _step(self, s: _State, out_full: bool) -> _State:
        if not s.full or len(s.spatial) != 1:
            raise ValueError("RNN: expected a full kernel over one time axis")
        steps = s.spatial[0]
        w2, u2 = self.W_std**2, self.U_std**2
        b2 = 0.0 if self.b_std is None else self.b_std**2
        dual = self.phi._dual
        # Step 1 has no W term (s^0 = 0); later pairs are filled shell by shell:
        # entry (t, t') needs (t-1, t'-1) and the variances at t-1 and t'-1, all in
        # earlier shells max(t, t') - 1.
        sig = u2 * s.nngp + b2  # (B1, B2, T, T)
        theta = sig + u2 * s.ntk
        sides = [] if s.symmetric else [u2 * c + b2 for c in s.covs()]  # (B, T, T)
        for m in range(1, steps):
            for side in sides:
                q = torch.diagonal(side, dim1=1, dim2=2)
                e, _ = dual(side[:, m - 1, :m], q[:, m - 1 : m], q[:, :m])
                side[:, m, 1 : m + 1] += w2 * e
                side[:, 1:m, m] = side[:, m, 1:m]
            q1, q2 = self._variances(sig, sides)
            e, ed = dual(sig[:, :, m - 1, :m], q1[:, None, m - 1 : m], q2[None, :, :m])
            sig[:, :, m, 1 : m + 1] += w2 * e
            theta[:, :, m, 1 : m + 1] += w2 * (e + ed * theta[:, :, m - 1, :m])
            if m > 1:
                e, ed = dual(
                    sig[:, :, : m - 1, m - 1],
                    q1[:, None, : m - 1],
                    q2[None, :, m - 1 : m],
                )
                sig[:, :, 1:m, m] += w2 * e
                theta[:, :, 1:m, m] += w2 * (e + ed * theta[:, :, : m - 1, m - 1])

        # Post-activation kernels of the states s^t, then the readout over time.
        qa, qb = self._variances(sig, sides)
        if self.readout == "last":
            nngp, ed = dual(sig[:, :, -1, -1], qa[:, None, -1], qb[None, :, -1])
            ntk = ed * theta[:, :, -1, -1]
            selfs = [self.phi._dual_self(q[:, -1]) for q in (qa, qb)]
        else:
            nngp, ed = dual(sig, qa[:, None, :, None], qb[None, :, None, :])
            ntk = (ed * theta).mean(dim=(2, 3))
            nngp = nngp.mean(dim=(2, 3))
            selfs = [
                dual(c, q[:, :, None], q[:, None, :])[0].mean(dim=(1, 2))
                for c, q in zip(sides, (qa, qb))
            ]
        return s.replace(
            nngp=nngp,
            ntk=ntk,
            cov1=None if s.symmetric else selfs[0],
            cov2=None if s.symmetric else selfs[1],
            spatial=(),
            full=False,
            channels=self.out_dim,
            gaussian=False,
            mixed=False,
        )

    @staticmethod
    def _variances(sig, sides):
        """Per-step variances (B1, T), (B2, T) of the pre-activations."""
        if not sides:
            q = torch.diagonal(torch.diagonal(sig, dim1=0, dim2=1), dim1=0, dim2=1)
            return q, q
        return tuple(torch.diagonal(c, dim1=1, dim2=2) for c in sides)

    def _build(self, in_shape, ctx: _BuildContext):
        n = ctx.size(self, self.out_dim)
        return _RNNModule(self, ctx, in_shape[-1], n), (n,)


class _RNNModule(torch.nn.Module):
    def __init__(self, layer: RNN, ctx: _BuildContext, d: int, n: int):
        super().__init__()
        self.layer = layer
        self.W = torch.nn.Parameter(ctx.normal(n, n))
        self.U = torch.nn.Parameter(ctx.normal(n, d))
        self.b = None if layer.b_std is None else torch.nn.Parameter(ctx.normal(n))
        self.w_mult = layer.W_std / math.sqrt(n)
        self.u_mult = layer.U_std / math.sqrt(d)

    def forward(self, x):  # x: (N, T, d)
        state = x.new_zeros(x.shape[0], self.W.shape[0])
        states = []
        for t in range(x.shape[1]):
            h = self.w_mult * state @ self.W.T + self.u_mult * x[:, t] @ self.U.T
            if self.b is not None:
                h = h + self.layer.b_std * self.b
            state = self.layer.phi.fn(h)
            states.append(state)
        if self.layer.readout == "last":
            return state
        return torch.stack(states).mean(0)
