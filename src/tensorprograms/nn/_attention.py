"""Global self-attention over spatial positions (tokens), neural-tangents' conventions.

Finite layer (per head h, inputs x of shape (P, C) after flattening positions):

    keys = x K_h,  queries = x Q_h  (tied: Q_h = K_h with 1/n logits),
    G_h = mechanism(QK_std / (C n_key^e) queries keys^T),   e = 1 or 1/2,
    out = OV_std / sqrt(C n_val n_heads) [G_1 x V_1, ..., G_H x V_H] W_out + b_std b,

all matrices N(0, 1), QK_std = W_query_std W_key_std, OV_std = W_out_std W_value_std.

With 1/n logits (``linear_scaling=True``) and tied queries and keys the logits converge
to the input's own per-position covariance, so the attention matrix of an input x is
the deterministic G_x = mechanism(QK_std Sigma_x) (TP1's transformer, Hron et al. 2020)
and

    nngp'(x, x') = OV_std^2 G_x nngp(x, x') G_x'^T + b_std^2,
    ntk'(x, x')  = OV_std^2 G_x (ntk + 2 nngp)(x, x') G_x'^T + b_std^2,

the 2 nngp from the value and output matrices; gradients through the logits vanish
like 1/n. With 1/sqrt(n) logits (independent queries and keys) the logits stay
Gaussian in the limit; that kernel has no closed form (except for the IDENTITY
mechanism) and is estimated by Monte Carlo over joint draws of the logits of the
whole batch (`_attention_mc`).
"""

from __future__ import annotations

import math

import torch

from ._dense import check_std
from ._kernel import _State
from ._layer import Layer, _BuildContext

__all__ = ["GlobalSelfAttention", "SelfAttention"]

_MECHANISMS = ("SOFTMAX", "IDENTITY", "ABS", "RELU")


def _mechanism(name: str, logits: torch.Tensor) -> torch.Tensor:
    if name == "SOFTMAX":
        return torch.softmax(logits, dim=-1)
    if name == "IDENTITY":
        return logits
    if name == "ABS":
        return logits.abs()
    return torch.relu(logits)


class GlobalSelfAttention(Layer):
    """Self-attention across all spatial positions, channels last.

    Args:
        n_chan_out: output channels.
        n_chan_key: key/query channels per head.
        n_chan_val: value channels per head.
        n_heads: number of heads.
        linear_scaling: True for 1/n logits with tied queries and keys (closed-form
            kernel); False for 1/sqrt(n) logits with independent queries: the kernel
            is a Monte Carlo estimate over `mc_samples` draws of the Gaussian logits,
            defined on one batch (``kernel(x)``), raising if its relative standard
            error exceeds `mc_tol` (closed form, any x2, for the "IDENTITY"
            mechanism); the finite network's NTK concentrates on it only
            as both n_chan_key and n_heads grow.
        W_key_std, W_value_std, W_query_std, W_out_std: weight scales; the kernel
            depends on W_query_std W_key_std and W_out_std W_value_std.
        b_std: bias scale (None: no bias).
        attention_mechanism: "SOFTMAX", "IDENTITY", "ABS" or "RELU".
        mc_samples, mc_seed, mc_tol: Monte Carlo draws, seed and largest relative
            standard error for ``linear_scaling=False``.

    Example:
        >>> import torch
        >>> from tensorprograms import nn
        >>> x = torch.eye(3, dtype=torch.float64)[None]  # one input, 3 tokens
        >>> k = nn.GlobalSelfAttention(4, 4, 4, 1).kernel(x)
        >>> k.nngp.shape  # (N1, N2, P, P)
        torch.Size([1, 1, 3, 3])
    """

    parametric = True

    def __init__(
        self,
        n_chan_out: int,
        n_chan_key: int,
        n_chan_val: int,
        n_heads: int,
        linear_scaling: bool = True,
        W_key_std: float = 1.0,
        W_value_std: float = 1.0,
        W_query_std: float = 1.0,
        W_out_std: float = 1.0,
        b_std: float | None = None,
        attention_mechanism: str = "SOFTMAX",
        mc_samples: int = 16384,
        mc_seed: int = 0,
        mc_tol: float = 0.05,
    ):
        name = "GlobalSelfAttention"
        for key, v in (
            ("n_chan_out", n_chan_out),
            ("n_chan_key", n_chan_key),
            ("n_chan_val", n_chan_val),
            ("n_heads", n_heads),
        ):
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"{name}: {key} must be a positive integer, got {v!r}")
        self.n_chan_out, self.n_chan_key = int(n_chan_out), int(n_chan_key)
        self.n_chan_val, self.n_heads = int(n_chan_val), int(n_heads)
        self.linear_scaling = bool(linear_scaling)
        self.W_key_std = check_std(W_key_std, "W_key_std", name)
        self.W_value_std = check_std(W_value_std, "W_value_std", name)
        self.W_query_std = check_std(W_query_std, "W_query_std", name)
        self.W_out_std = check_std(W_out_std, "W_out_std", name)
        self.b_std = check_std(b_std, "b_std", name, allow_none=True)
        mech = str(attention_mechanism).upper()
        if mech not in _MECHANISMS:
            raise ValueError(
                f"{name}: attention_mechanism must be one of {_MECHANISMS}, got "
                f"{attention_mechanism!r}"
            )
        self.attention_mechanism = mech
        self.mc_samples, self.mc_seed, self.mc_tol = (
            int(mc_samples),
            int(mc_seed),
            mc_tol,
        )

    def out_shape(self, in_shape):
        if len(in_shape) < 2:
            raise ValueError(
                f"GlobalSelfAttention: inputs need at least one spatial (token) axis "
                f"and channels last, got per-example shape {tuple(in_shape)}"
            )
        return (*in_shape[:-1], self.n_chan_out)

    def _in_full(self, out_full):
        return True

    def _whole_batch(self):
        return not self.linear_scaling and self.attention_mechanism != "IDENTITY"

    def _step(self, s: _State, out_full: bool) -> _State:
        if not self.linear_scaling:
            if self.attention_mechanism == "IDENTITY":
                return self._step_sqrt_identity(s, out_full)
            return self._step_sqrt(s, out_full)
        p = math.prod(s.spatial)
        qk = self.W_query_std * self.W_key_std
        ov2 = (self.W_out_std * self.W_value_std) ** 2
        b2 = 0.0 if self.b_std is None else self.b_std**2
        cov1, cov2 = s.covs()
        b1n, b2n = s.nngp.shape[:2]
        g1 = _mechanism(self.attention_mechanism, qk * cov1.reshape(b1n, p, p))
        g2 = (
            g1
            if s.symmetric
            else _mechanism(self.attention_mechanism, qk * cov2.reshape(b2n, p, p))
        )

        def mix(k, ga, gb):  # (B1, B2, P, P) -> G_a k G_b^T
            return torch.einsum("aij,abjk,blk->abil", ga, k.reshape(b1n, b2n, p, p), gb)

        nngp_mixed = mix(s.nngp, g1, g2)
        ntk = ov2 * (mix(s.ntk, g1, g2) + 2 * nngp_mixed) + b2
        shape = (b1n, b2n, *s.spatial, *s.spatial)

        def self_mix(c, g):
            b = c.shape[0]
            out = torch.einsum("aij,ajk,alk->ail", g, c.reshape(b, p, p), g)
            return (ov2 * out + b2).reshape(b, *s.spatial, *s.spatial)

        out = s.replace(
            nngp=(ov2 * nngp_mixed + b2).reshape(shape),
            ntk=ntk.reshape(shape),
            cov1=None if s.symmetric else self_mix(cov1, g1),
            cov2=None if s.symmetric else self_mix(cov2, g2),
            channels=self.n_chan_out,
            gaussian=True,
            mixed=False,
        )
        return out if out_full else out.to_diagonal()

    def _step_sqrt_identity(self, s: _State, out_full: bool) -> _State:
        """1/sqrt(n) logits, G = logits: the Gaussian expectations are closed.

        E[s(x)[i, j] s(x')[i', j']] = QK_std^2 K[i, i'] K[j, j'] (K = K(x, x')), so
        with S(A, B) = sum_{j, j'} A[j, j'] B[j, j'] over pairs of positions,

            nngp' = c K S(K, K) + b_std^2,
            ntk'  = c (2 S(K, Theta) K + S(K, K) (Theta + 4 K)) + b_std^2,

        c = (QK_std OV_std)^2: query, key, value and output weights give the 4 K,
        backpropagation through queries the Theta S(K, K), through keys and values
        the 2 S(K, Theta) K (the `_attention_mc` formula with J = identity; also
        neural-tangents' closed form for this case).
        """
        p = math.prod(s.spatial)
        c = (self.W_query_std * self.W_key_std * self.W_out_std * self.W_value_std) ** 2
        b2 = 0.0 if self.b_std is None else self.b_std**2
        lead = s.nngp.shape[:2]
        k = s.nngp.reshape(*lead, p, p)
        theta = s.ntk.reshape(*lead, p, p)
        skk = (k * k).sum(dim=(2, 3), keepdim=True)
        skt = (k * theta).sum(dim=(2, 3), keepdim=True)
        shape = (*lead, *s.spatial, *s.spatial)
        nngp = (c * skk * k + b2).reshape(shape)
        ntk = (c * (2 * skt * k + skk * (theta + 4 * k)) + b2).reshape(shape)

        def self_map(cov, _):
            m = cov.reshape(cov.shape[0], p, p)
            sq = (m * m).sum(dim=(1, 2), keepdim=True)
            return (c * sq * m + b2).reshape(cov.shape[0], *s.spatial, *s.spatial)

        cov1, cov2 = s.map_covs(self_map)
        out = s.replace(
            nngp=nngp,
            ntk=ntk,
            cov1=cov1,
            cov2=cov2,
            channels=self.n_chan_out,
            gaussian=True,
            mixed=False,
        )
        return out if out_full else out.to_diagonal()

    def _step_sqrt(self, s: _State, out_full: bool) -> _State:
        from ._attention_mc import sqrt_attention_kernel

        if not s.symmetric:
            raise ValueError(
                "GlobalSelfAttention: with 1/sqrt(n) logits the kernel is a Monte "
                "Carlo estimate over one batch; call kernel(x) with x2=None"
            )
        b, p = s.nngp.shape[0], math.prod(s.spatial)
        nngp, ntk, rel = sqrt_attention_kernel(
            s.nngp.reshape(b, b, p, p),
            s.ntk.reshape(b, b, p, p),
            self.W_query_std * self.W_key_std,
            (self.W_out_std * self.W_value_std) ** 2,
            0.0 if self.b_std is None else self.b_std**2,
            self.attention_mechanism,
            self.mc_samples,
            self.mc_seed,
        )
        if rel > self.mc_tol:
            raise ValueError(
                f"GlobalSelfAttention: Monte Carlo relative standard error {rel:.3g} "
                f"exceeds mc_tol={self.mc_tol}; raise mc_samples"
            )
        shape = (b, b, *s.spatial, *s.spatial)
        out = s.replace(
            nngp=nngp.reshape(shape),
            ntk=ntk.reshape(shape),
            channels=self.n_chan_out,
            gaussian=True,
            mixed=False,
        )
        return out if out_full else out.to_diagonal()

    def _build(self, in_shape, ctx: _BuildContext):
        n_out = ctx.size(self, self.n_chan_out)
        width = ctx.width
        n_key = self.n_chan_key if width is None else width
        n_val = self.n_chan_val if width is None else width
        module = _AttentionModule(self, ctx, in_shape[-1], n_key, n_val, n_out)
        return module, (*in_shape[:-1], n_out)


class _AttentionModule(torch.nn.Module):
    def __init__(self, layer: GlobalSelfAttention, ctx, c, n_key, n_val, n_out):
        super().__init__()
        h = layer.n_heads
        self.layer = layer
        self.key = torch.nn.Parameter(ctx.normal(h, c, n_key))
        self.query = (
            None
            if layer.linear_scaling
            else torch.nn.Parameter(ctx.normal(h, c, n_key))
        )
        self.value = torch.nn.Parameter(ctx.normal(h, c, n_val))
        self.out = torch.nn.Parameter(ctx.normal(h * n_val, n_out))
        self.bias = (
            None if layer.b_std is None else torch.nn.Parameter(ctx.normal(n_out))
        )
        e = 1.0 if layer.linear_scaling else 0.5
        self.logit_mult = layer.W_query_std * layer.W_key_std / (c * n_key**e)
        self.out_mult = layer.W_out_std * layer.W_value_std / math.sqrt(c * n_val * h)

    def forward(self, x):  # (N, *S, C)
        n, spatial, c = x.shape[0], x.shape[1:-1], x.shape[-1]
        tokens = x.reshape(n, -1, c)  # (N, P, C)
        keys = torch.einsum("npc,hck->nhpk", tokens, self.key)
        queries = (
            keys
            if self.query is None
            else torch.einsum("npc,hck->nhpk", tokens, self.query)
        )
        values = torch.einsum("npc,hcv->nhpv", tokens, self.value)
        logits = self.logit_mult * queries @ keys.transpose(-1, -2)  # (N, H, P, P)
        g = _mechanism(self.layer.attention_mechanism, logits)
        heads = (g @ values).permute(0, 2, 1, 3).reshape(n, tokens.shape[1], -1)
        out = self.out_mult * heads @ self.out
        if self.bias is not None:
            out = out + self.layer.b_std * self.bias
        return out.reshape(n, *spatial, -1)


class SelfAttention(GlobalSelfAttention):
    """Another name of `GlobalSelfAttention` (same arguments).

    Example:
        >>> from tensorprograms import nn
        >>> nn.SelfAttention(8, 8, 8, 2).out_shape((5, 3))
        (5, 8)
    """
