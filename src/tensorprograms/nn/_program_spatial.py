"""Convolutions, recurrent cells and attention written into a program.

Helpers of :func:`tensorprograms.nn.network_program` (its docstring states the
translation and what was verified). Each function appends one layer's forward
instructions to the writer ``w`` (``w.vecs``: one width-n vector per position,
``w.spatial``: their grid), records the backward rules on its tape and the NTK
contributions of the layer's parameters in ``w.params``:

* ``Conv``: ``h_i = sum_o W_o a_(s i + o - lo) + b`` with one matrix ``W_o`` of
  variance ``W_std^2 / k`` per filter tap (SAME: ``ceil(n / s)`` outputs, padding
  ``lo`` before and the extra one after; padded taps contribute no term);
* ``RNN``: ``h^t = W s^(t-1) + U xi^t + b``, ``s^t = phi(h^t)``, one ``W``;
* ``GlobalSelfAttention`` (1/n logits, tied queries and keys):
  ``alpha_ij = mechanism(QK_std <K a_i, K a_j> / n)_j`` (ScalarFns of Moments),
  ``y_i = sum_heads O_h sum_j alpha_ij V_h a_j + b``.
"""

from __future__ import annotations

import itertools

import torch

from ._program import _nonlinearity_of


def _geometry(n: int, k: int, s: int, padding: str, where: str) -> tuple[int, int]:
    """(output size, padding before): SAME pads ceil-style, the extra one after;
    CIRCULAR pads the same way with positions modulo n."""
    if padding in ("SAME", "CIRCULAR"):
        out = -(-n // s)
        return out, max((out - 1) * s + k - n, 0) // 2
    if n < k:
        raise ValueError(
            f"{where} (Conv): VALID filter {k} is wider than the input {n}"
        )
    return (n - k) // s + 1, 0


_MECH = {
    "SOFTMAX": lambda z: torch.softmax(z, dim=0),
    "IDENTITY": lambda z: z,
    "ABS": lambda z: z.abs(),
    "RELU": lambda z: torch.relu(z),
}


def _weight(mech, qk, j, P):
    """``alpha_ij = mechanism(qk * logits_i)_j`` as a function of the P logits."""

    def fn(*logits):
        z = torch.stack([torch.as_tensor(s, dtype=torch.float64) for s in logits])
        return mech(qk * z)[j]

    fn.__name__ = f"attn{j}of{P}"
    return fn


def write_conv(w, layer, where):
    """``Conv``: one matrix per tap; on the inputs, initial vectors per position."""
    w._ntk_only(layer, where)
    if w.flat:
        raise ValueError(f"{where}: Flatten is only covered before the readout")
    nd = len(layer.filter_shape)
    if len(w.spatial) != nd:
        raise ValueError(f"{where} (Conv): {nd} spatial axes expected, got {w.spatial}")
    geo = [
        _geometry(n, k, s, layer.padding, where)
        for n, k, s in zip(w.spatial, layer.filter_shape, layer.strides)
    ]
    outs = list(itertools.product(*[range(g[0]) for g in geo]))
    taps = list(itertools.product(*[range(k) for k in layer.filter_shape]))
    k = len(taps)

    def source(i, o):  # flat index of input position s i + o - lo, or None
        pos = [s * ii + oo - g[1] for ii, oo, s, g in zip(i, o, layer.strides, geo)]
        if layer.padding == "CIRCULAR":
            pos = [q % n for q, n in zip(pos, w.spatial)]
        if any(q < 0 or q >= n for q, n in zip(pos, w.spatial)):
            return None
        flat = 0
        for q, n in zip(pos, w.spatial):
            flat = flat * n + q
        return flat

    b2 = 0.0 if layer.b_std is None else layer.b_std**2
    w2 = layer.W_std**2 / k
    if w.vecs is None:  # first layer: the covariance from the inputs
        xs = w.x.reshape(w.N, -1, w.x.shape[-1])
        gram = torch.einsum("aic,bjc->ijab", xs, xs) / xs.shape[-1]
        cov = torch.full((len(outs), len(outs), w.N, w.N), b2, dtype=torch.float64)
        for (i, pi), (j, pj) in itertools.product(enumerate(outs), repeat=2):
            for o in taps:
                si, sj = source(pi, o), source(pj, o)
                if si is not None and sj is not None:
                    cov[i, j] += w2 * gram[si, sj]
        w.vecs = w._input_vectors(cov, "h")
    else:
        mats = [w.p.matrix(w._name("W"), var=w2) for _ in taps]
        b = None if layer.b_std is None else w.p.vector(w._name("b"), var=b2)
        uses = [[] for _ in taps]
        out = []
        for pi in outs:
            terms = []
            for t, o in enumerate(taps):
                si = source(pi, o)
                if si is not None:
                    m = w.matmul(mats[t], w.vecs[si])
                    uses[t].append((w.vecs[si], m))
                    terms.append((m, 1.0))
            if b is not None:
                terms.append((b, 1.0))
            out.append(w.lincomb(terms) if len(terms) > 1 else terms[0][0])
        for u in uses:
            w.params.append(("matrix", w2, u))
        if b is not None:
            w.params.append(("bias", b2, out))
        w.vecs = out
    w.spatial = tuple(g[0] for g in geo)


def write_rnn(w, layer, where):
    """``RNN``: the hidden matrix reused at every step; ``U xi^t + b`` initial."""
    if len(w.spatial) != 1:
        raise ValueError(f"{where} (RNN): inputs (N, T, d) expected")
    T = w.spatial[0]
    phi = _nonlinearity(layer.phi, where)
    b2 = 0.0 if layer.b_std is None else layer.b_std**2
    u2 = layer.U_std**2
    if w.vecs is None:  # U xi^t + b as initial vectors, one per step
        gram = torch.einsum("aic,bjc->ijab", w.x, w.x) / w.x.shape[-1]
        inputs = w._input_vectors(u2 * gram + b2, "u")
    else:
        w._need_width(where)
        U = w.p.matrix(w._name("U"), var=u2)
        b = None if layer.b_std is None else w.p.vector(w._name("b"), var=b2)
        inputs, uses = [], []
        for a in w.vecs:
            m = w.matmul(U, a)
            uses.append((a, m))
            inputs.append(m if b is None else w.lincomb([(m, 1.0), (b, 1.0)]))
        w.params.append(("matrix", u2, uses))
        if b is not None:
            w.params.append(("bias", b2, inputs))
    W = w.p.matrix(w._name("W"), var=layer.W_std**2)
    states, uses = [], []
    for t in range(T):
        if t == 0:
            h = inputs[0]
        else:
            m = w.matmul(W, states[-1])
            uses.append((states[-1], m))
            h = w.lincomb([(m, 1.0), (inputs[t], 1.0)])
        states.append(w.act(phi, h))
    w.params.append(("matrix", layer.W_std**2, uses))
    if layer.readout == "last":
        w.vecs = [states[-1]]
    else:
        w.vecs = [w.lincomb([(s, 1.0 / T) for s in states])]
    w.spatial = ()


def write_attention(w, layer, where):
    """``GlobalSelfAttention`` (1/n logits): Moments, ScalarFns and Scales."""
    w._need_width(where)
    if not layer.linear_scaling:
        raise ValueError(
            f"{where} (GlobalSelfAttention): only 1/n logits (linear_scaling="
            "True) are covered; with 1/sqrt(n) logits they stay random in the "
            "limit and are not Moments"
        )
    mech = _MECH[layer.attention_mechanism]
    qk = layer.W_query_std * layer.W_key_std
    H, P = layer.n_heads, len(w.vecs)
    b2 = 0.0 if layer.b_std is None else layer.b_std**2
    wo2 = layer.W_out_std**2 / H
    heads = []
    for _ in range(H):
        K = w.p.matrix(w._name("K"), var=1.0)
        V = w.p.matrix(w._name("V"), var=layer.W_value_std**2)
        keys = [K @ a for a in w.vecs]  # no backward: logits are Moments
        vals, vuses = [], []
        for a in w.vecs:
            m = w.matmul(V, a)
            vals.append(m)
            vuses.append((a, m))
        w.params.append(("matrix", layer.W_value_std**2, vuses))
        mixed = []
        for i in range(P):
            logits = [w.p.moment(keys[i] * keys[j]) for j in range(P)]
            terms = []
            for j in range(P):
                alpha = w.p.scalar_fn(_weight(mech, qk, j, P), *logits)
                terms.append((w.scale(vals[j], alpha), 1.0))
            mixed.append(w.lincomb(terms))
        O = w.p.matrix(w._name("O"), var=wo2)
        heads.append((O, mixed))
    b = None if layer.b_std is None else w.p.vector(w._name("b"), var=b2)
    out = []
    ouses = {id(O): [] for O, _ in heads}
    for i in range(P):
        terms = []
        for O, mixed in heads:
            m = w.matmul(O, mixed[i])
            ouses[id(O)].append((mixed[i], m))
            terms.append((m, 1.0))
        if b is not None:
            terms.append((b, 1.0))
        out.append(w.lincomb(terms) if len(terms) > 1 else terms[0][0])
    for O, _ in heads:
        w.params.append(("matrix", wo2, ouses[id(O)]))
    if b is not None:
        w.params.append(("bias", b2, out))
    w.vecs = out


def _nonlinearity(layer, where):
    try:
        return _nonlinearity_of(layer, 0)
    except ValueError:
        raise ValueError(
            f"{where} ({type(layer).__name__}): no Tensor Program rule for it"
        ) from None
