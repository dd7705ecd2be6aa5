"""Self-attention with 1/sqrt(n) logits: the limit kernel by Monte Carlo.

With independent query and key matrices and logits q.k / (C sqrt(n_key)), the logits
of every head converge (n_key -> infinity, CLT) to a centred Gaussian field, jointly
over all inputs of the batch, with

    Cov(s(x)[i, j], s(x')[i', j']) = QK_std^2 K(x, x')[i, i'] K(x, x')[j, j'],

K the per-unit covariance of the layer's input (the logits stay random: TP1's
"1/sqrt(n) attention"). Averaging over infinitely many heads, with G = softmax(s)
row-wise and J[i, j, l] = dG[i, j] / ds[i, l] = G[i, j] (delta_jl - G[i, l]):

    nngp' = OV_std^2 E[G K G'^T] + b_std^2,
    ntk'  = OV_std^2 E[G (Theta + 2 K) G'^T] + b_std^2
            + OV_std^2 E[sum_{j j' l l'} J[i,j,l] J'[i',j',l'] K[j,j'] Xi[i,l,i',l']],
    Xi    = QK_std^2 (2 K[i,i'] K[l,l'] + Theta[i,i'] K[l,l'] + K[i,i'] Theta[l,l']),

where Theta is the input NTK: the value and output matrices give the 2 K, the
query and key matrices the 2 K K in Xi, and backpropagation into earlier layers the
Theta terms (cross terms between the paths average out over the independent
matrices). The expectations are estimated with `samples` joint draws of the logits
of the whole batch (so K(x1, x1) stays a covariance matrix), from a seeded generator.
"""

from __future__ import annotations

import torch

__all__ = ["sqrt_attention_kernel"]


def _mechanism(name: str, logits: torch.Tensor) -> torch.Tensor:
    if name == "SOFTMAX":
        return torch.softmax(logits, dim=-1)
    if name == "IDENTITY":
        return logits
    if name == "ABS":
        return logits.abs()
    return torch.relu(logits)


def _mechanism_grad(name: str, logits: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """J[..., i, j, l] = dG[i, j] / ds[i, l] (only the row i of s enters row i of G)."""
    p = g.shape[-1]
    eye = torch.eye(p, dtype=g.dtype, device=g.device)
    if name == "SOFTMAX":
        return g[..., :, :, None] * (eye - g[..., :, None, :])
    if name == "IDENTITY":
        d = torch.ones_like(logits)
    elif name == "ABS":
        d = torch.sign(logits)
    else:
        d = (logits > 0).to(logits.dtype)
    return d[..., :, :, None] * eye


def sqrt_attention_kernel(
    k: torch.Tensor,
    theta: torch.Tensor,
    qk: float,
    ov2: float,
    b2: float,
    mechanism: str,
    samples: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Monte Carlo NNGP and NTK of 1/sqrt(n) attention over one batch.

    Args:
        k, theta: input nngp and ntk of the whole batch, (B, B, P, P).
        qk, ov2, b2: QK_std, OV_std^2, b_std^2.
        mechanism: "SOFTMAX", "IDENTITY", "ABS" or "RELU".
        samples: number of joint draws of the logits; seed: their seed.

    Returns:
        (nngp', ntk', relative standard error of the estimates).
    """
    b, _, p, _ = k.shape
    n = b * p
    cov = k.permute(0, 2, 1, 3).reshape(n, n)
    cov = (cov + cov.T) / 2
    lam, vec = torch.linalg.eigh(cov)
    root = vec * lam.clamp_min(0).sqrt()  # cov = root root^T
    rows = root.reshape(b, p, n)  # rows of input a
    gen = torch.Generator(device="cpu").manual_seed(seed)

    # Xi[a, b, i, i', l, l'] = QK^2 (2 K[i,i'] K[l,l'] + Theta[i,i'] K[l,l'] + ...)
    xi = qk**2 * (
        2 * torch.einsum("abij,ablm->abijlm", k, k)
        + torch.einsum("abij,ablm->abijlm", theta, k)
        + torch.einsum("abij,ablm->abijlm", k, theta)
    )
    mix = theta + 2 * k

    chunk = max(1, min(samples, 2**22 // max(n * n, b * b * p**4)))
    sums = [torch.zeros(b, b, p, p, dtype=k.dtype, device=k.device) for _ in range(2)]
    squares = [torch.zeros_like(sums[0]) for _ in range(2)]
    done = 0
    while done < samples:
        m = min(chunk, samples - done)
        z = torch.randn(m, n, n, generator=gen, dtype=k.dtype).to(k.device)
        # s_a = rows_a z rows_a^T: the diagonal blocks of root z root^T.
        s = qk * torch.einsum("aip,mpq,ajq->maij", rows, z, rows)  # (M, B, P, P)
        g = _mechanism(mechanism, s)
        jac = _mechanism_grad(mechanism, s, g)  # (M, B, P, P, P): i, j, l
        nngp = torch.einsum("maij,abjk,mblk->mabil", g, k, g)
        ntk = torch.einsum("maij,abjk,mblk->mabil", g, mix, g)
        # sum_{j j'} J[a,i,j,l] K[a,b,j,j'] J[b,i',j',l'], then against Xi.
        t = torch.einsum("maijl,abjk,mbnkq->mabinlq", jac, k, jac)
        ntk = ntk + torch.einsum("mabinlq,abinlq->mabin", t, xi)
        for acc, sq, val in ((sums[0], squares[0], nngp), (sums[1], squares[1], ntk)):
            acc += val.sum(0)
            sq += (val * val).sum(0)
        done += m
    means = [acc / samples for acc in sums]
    var = [sq / samples - mu * mu for sq, mu in zip(squares, means)]
    rel = max(
        float(v.clamp_min(0).max().sqrt() / mu.abs().max().clamp_min(1e-300))
        for v, mu in zip(var, means)
    )
    return ov2 * means[0] + b2, ov2 * means[1] + b2, rel / samples**0.5
