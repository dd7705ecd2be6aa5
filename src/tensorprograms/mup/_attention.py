"""muP attention: logits q.k / d_head instead of q.k / sqrt(d_head) (TP5 sec. 4).

In muP, queries and keys become correlated during training, so q.k grows like
d_head (law of large numbers) rather than sqrt(d_head) (central limit theorem);
the logits stay Theta(1) only with a 1/d_head scale. Relative to a base head width
d0 the scale is sqrt(d0) / d_head, which equals PyTorch's 1/sqrt(d_head) at the
base. Zero-initialising the query projection (TP5 section 7) makes the initial
attention uniform and removes the initial transient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["attention_scale", "mu_attention", "zero_query_"]


def attention_scale(d_head: int, base_d_head: int | None = None, attn_mult=1.0):
    """attn_mult * sqrt(d0) / d_head (1/d_head scaling; = 1/sqrt(d0) at d_head = d0).

    Args:
        d_head: head dimension.
        base_d_head: d0, the base model's head dimension; None gives TP5's plain
            attn_mult / d_head.
        attn_mult: constant multiplier (tunable, transferable).

    >>> attention_scale(64, 16)
    0.0625
    >>> attention_scale(16, 16) == 16**-0.5
    True
    """
    if d_head <= 0:
        raise ValueError(f"d_head must be positive, got {d_head}")
    if base_d_head is None:
        return attn_mult / d_head
    return attn_mult * math.sqrt(base_d_head) / d_head


def mu_attention(q, k, v, *, base_d_head=None, attn_mult=1.0, **kwargs):
    """``F.scaled_dot_product_attention`` with muP's 1/d_head logit scale.

    Args:
        q, k, v: (..., seq, d_head) tensors (as PyTorch's function).
        base_d_head, attn_mult: see :func:`attention_scale`.
        **kwargs: ``attn_mask``, ``dropout_p``, ``is_causal``, ...

    >>> import torch
    >>> q = torch.zeros(1, 2, 3, 8)
    >>> mu_attention(q, q, torch.ones(1, 2, 3, 8), base_d_head=8).shape
    torch.Size([1, 2, 3, 8])
    """
    scale = attention_scale(q.shape[-1], base_d_head, attn_mult)
    return F.scaled_dot_product_attention(q, k, v, scale=scale, **kwargs)


def zero_query_(weight: torch.Tensor, rows: int | None = None, bias=None):
    """Zero the query projection (its first ``rows`` output rows for a fused qkv).

    Args:
        weight: (out, in) projection weight; for a fused (3 d, d) qkv weight pass
            ``rows=d``.
        rows: number of leading rows that form the query (default all).
        bias: optional bias, zeroed on the same rows.

    >>> import torch
    >>> w = torch.ones(6, 2)
    >>> zero_query_(w, rows=2)[:3, 0].tolist()
    [0.0, 0.0, 1.0]
    """
    rows = weight.shape[0] if rows is None else rows
    if not 0 < rows <= weight.shape[0]:
        raise ValueError(f"rows must be in 1..{weight.shape[0]}, got {rows}")
    with torch.no_grad():
        weight[:rows].zero_()
        if bias is not None:
            bias[:rows].zero_()
    return weight
