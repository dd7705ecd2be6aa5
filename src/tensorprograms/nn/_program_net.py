"""Networks of many layer types as Tensor Programs: kernels by the Master Theorem.

``network_program(model, x)`` writes ``model`` applied to a data set ``x`` as one
Netsor-T+ program with one lane per input (TP1 section 3, TP2, TP3): every
spatial position, time step or token is a separate vector, every weight matrix a
matrix of the program, reused wherever the network reuses it (a convolution's
filter taps across positions, an RNN's hidden matrix across time steps, attention's
value and output matrices across tokens). Layers covered (NTK parametrization):

* ``Dense`` (per position), coordinatewise activations, ``Residual``;
* ``LayerNorm``: ``(h - mu) * theta`` with the Moments ``mu = <h>/n``,
  ``theta = (<h h>/n - mu^2 + eps)^(-1/2)`` (a Nonlin+, TP3);
* ``RNN``: ``h^t = W s^(t-1) + U xi^t + b``, the same ``W`` at every step;
* ``Conv`` (1-D, 2-D; SAME/VALID, strides): one matrix per filter tap of variance
  ``W_std^2 / k``, zero padding contributing no term;
* ``Flatten`` (a readout with one matrix per position, variance ``W_std^2 / P``)
  and ``GlobalAvgPool`` (the mean of the positions' vectors);
* ``GlobalSelfAttention`` with 1/n logits (tied queries and keys): logits are the
  Moments ``QK_std <K x_i, K x_j> / n`` (scalars per lane), attention weights
  scalar functions of them, the output ``sum_j alpha_ij V x_j`` a sum of Scale
  instructions, one value and output matrix per head.

The backward pass is written into the same program (TP2): the readout vector
``v`` enters once, matrices are multiplied transposed, activations by their
derivative, Scale instructions by their scalar. Gradients through the Moments
(LayerNorm's statistics, attention logits) are not written: they are
``O(n^(-1/2))`` in ``sqrt(n) df/dh`` and vanish in the limit. With ``G_h`` the
backward vector of ``h`` (``sqrt(n) df/dh``), every parameter contributes

    matrix W (variance sigma^2), used as h_u = W a_u:
        sigma^2 sum_{u,u'} (<a_u, a'_u'>/n) (<G_{h_u}, G'_{h_u'}>/n),
    bias b (variance b_std^2), added to h_u:  b_std^2 sum_{u,u'} <G_u, G'_u'>/n,
    first layer on the inputs (initial vectors h_i):
        sum_{i,j} Cov(h_i, h'_j) <G_{h_i}, G'_{h_j}>/n,

and ``ntk = nngp + sum of the contributions`` (the readout's own). Every
``<., .>/n`` is read off :func:`tensorprograms.limit`, ZDot terms included.
Verified against ``model.kernel`` (NNGP and NTK) in ``tests/test_nn_program.py``.

Example:
    >>> import torch
    >>> from tensorprograms import nn
    >>> net = nn.serial(nn.Conv(4, (2,)), nn.Relu(), nn.Flatten(), nn.Dense(1))
    >>> x = torch.eye(3, dtype=torch.float64)[:, :, None]  # (N, W, C) = (3, 3, 1)
    >>> k = nn.network_program(net, x).kernel()
    >>> bool(torch.allclose(k.ntk, net.kernel(x).ntk, atol=1e-12))
    True
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..limit import limit
from ..program import Program, Vector
from ._activations import _Activation
from ._attention import GlobalSelfAttention
from ._combinators import Residual, Serial
from ._conv import Conv, Flatten, GlobalAvgPool
from ._dense import Dense
from ._kernel import Kernel
from ._norm import LayerNorm
from ._program_spatial import _nonlinearity, write_attention, write_conv, write_rnn
from ._rnn import RNN

__all__ = ["NetworkProgram", "network_program"]


@dataclass(frozen=True)
class NetworkProgram:
    """A network on a data set as a program, with what its kernels need.

    Attributes:
        program: the Netsor-T+ program (``N`` lanes, one per input).
        output: the readout's pre-activation (a vector with lanes).
        params: NTK contributions, each ``(kind, var_or_cov, uses)``: kind
            ``"matrix"`` with uses ``[(a, h)]``, ``"bias"`` with uses ``[h]``,
            ``"input"`` with a ``(P, P, N, N)`` covariance and uses ``[h_i]``.
        grads: backward vector ``G_h`` of every vector ``h`` that has one.
    """

    program: Program
    output: Vector
    params: tuple
    grads: dict

    def kernel(self, **limit_options) -> Kernel:
        """NNGP and NTK ``(N, N)`` (float64) from :func:`tensorprograms.limit`."""
        res = limit(self.program, **limit_options)
        cache: dict = {}

        def k(x, y):
            key = (x.index, y.index)
            if key not in cache:
                cache[key] = res.kernel(x, y)
            return cache[key]

        nngp = k(self.output, self.output)
        ntk = nngp.clone()
        for kind, var, uses in self.params:
            if kind == "matrix":
                for (a, h), (a2, h2) in itertools.product(uses, uses):
                    if h in self.grads and h2 in self.grads:
                        g = k(self.grads[h], self.grads[h2])
                        ntk = ntk + var * k(a, a2) * g
            elif kind == "bias":
                for h, h2 in itertools.product(uses, uses):
                    if h in self.grads and h2 in self.grads:
                        ntk = ntk + var * k(self.grads[h], self.grads[h2])
            else:  # input layer: Cov(h_i, h_j) are the parameter inner products
                for (i, h), (j, h2) in itertools.product(enumerate(uses), repeat=2):
                    if h in self.grads and h2 in self.grads:
                        ntk = ntk + var[i, j] * k(self.grads[h], self.grads[h2])
        return Kernel(nngp=nngp, ntk=ntk)


def network_program(model, x: torch.Tensor) -> NetworkProgram:
    """Write ``model`` applied to the inputs ``x`` as a Tensor Program with its
    backward pass (module docstring: the layers covered and the NTK formula).

    Args:
        model: a ``tensorprograms.nn`` layer or ``serial`` of layers, NTK
            parametrization, ending with a ``Dense`` readout on a flat value.
        x: ``(N, d)``, ``(N, P, d)`` or ``(N, H, W, d)`` inputs, channels last.

    Raises:
        ValueError: a layer or configuration that this translation does not
            cover, named by its position in the network.
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.ndim < 2:
        raise ValueError(f"network_program takes inputs (N, ..., d), got {x.shape}")
    layers = _flatten_serial(model)
    if not layers or not isinstance(layers[-1], Dense):
        raise ValueError("network_program needs a Dense readout as the last layer")
    w = _Writer(x)
    for i, layer in enumerate(layers[:-1]):
        w.layer(layer, f"layer {i}")
    out = w.readout(layers[-1], f"layer {len(layers) - 1}")
    grads = w.backward()
    return NetworkProgram(w.p, out, tuple(w.params), grads)


def _flatten_serial(model):
    if isinstance(model, Serial):
        return [ly for layer in model.layers for ly in _flatten_serial(layer)]
    return [model]


class _Writer:
    """Forward program with a tape for the backward pass."""

    def __init__(self, x):
        self.p = Program()
        self.x = x  # raw inputs while no layer has been applied
        self.N = x.shape[0]
        self.spatial = tuple(x.shape[1:-1])
        self.vecs: list | None = None  # width-n vectors, positions row-major
        self.flat = False
        self.tape: list = []
        self.params: list = []
        self.count = 0

    def _name(self, stem):
        self.count += 1
        return f"{stem}_{self.count}"

    # ---- recorded operations ---
    def matmul(self, W, a):
        h = W @ a
        self.tape.append(("mm", W, a, h))
        return h

    def lincomb(self, pairs):
        out = self.p.lincomb([v for v, _ in pairs], [c for _, c in pairs])
        self.tape.append(("lin", pairs, out))
        return out

    def act(self, phi, h):
        a = phi(h)
        self.tape.append(("act", phi, h, a))
        return a

    def scale(self, x, theta, out=None):
        y = x * theta if out is None else out
        self.tape.append(("scale", theta, x, y))
        return y

    # ---- layers ---
    def layer(self, layer, where):
        if isinstance(layer, Serial):
            for i, sub in enumerate(layer.layers):
                self.layer(sub, f"{where}.{i}")
        elif isinstance(layer, Dense):
            self._dense(layer, where)
        elif isinstance(layer, _Activation):
            self._need_width(where)
            phi = _nonlinearity(layer, where)
            self.vecs = [self.act(phi, h) for h in self.vecs]
        elif isinstance(layer, Residual):
            self._residual(layer, where)
        elif isinstance(layer, LayerNorm):
            self._layernorm(layer, where)
        elif isinstance(layer, Conv):
            write_conv(self, layer, where)
        elif isinstance(layer, GlobalAvgPool):
            self._need_width(where)
            pool = self.lincomb([(v, 1.0 / len(self.vecs)) for v in self.vecs])
            self.vecs, self.spatial = [pool], ()
        elif isinstance(layer, Flatten):
            self._need_width(where)
            self.flat = bool(self.spatial)
            self.spatial = ()
        elif isinstance(layer, RNN):
            write_rnn(self, layer, where)
        elif isinstance(layer, GlobalSelfAttention):
            write_attention(self, layer, where)
        else:
            raise ValueError(
                f"{where} ({type(layer).__name__}): no Tensor Program translation "
                "(covered: Dense, activations, Residual, LayerNorm, Conv, Flatten, "
                "GlobalAvgPool, RNN, GlobalSelfAttention with 1/n logits)"
            )

    def _need_width(self, where):
        if self.vecs is None:
            raise ValueError(
                f"{where}: network_program needs a Dense, Conv or RNN layer first "
                "(the inputs are not width-n vectors)"
            )
        if self.flat:
            raise ValueError(f"{where}: after Flatten only the Dense readout follows")

    def _ntk_only(self, layer, where):
        if getattr(layer, "parametrization", "ntk") != "ntk":
            raise ValueError(
                f"{where} ({type(layer).__name__}): network_program covers the NTK "
                f"parametrization, got {layer.parametrization!r}"
            )

    def _input_vectors(self, cov, stem):
        """Initial vectors h_i, jointly Gaussian, from a (P, P, N, N) covariance."""
        P, N = cov.shape[0], self.N
        flat = cov.permute(0, 2, 1, 3).reshape(P * N, P * N)
        names = [self._name(stem) for _ in range(P)]
        vecs = self.p.vectors(names, cov=flat, lanes=N)
        self.params.append(("input", cov, vecs))
        return vecs

    def _affine(self, mats_and_args, b_std, where):
        """``sum_k W_k a_k + b`` (matmuls recorded, bias added once)."""
        terms = [self.matmul(W, a) for W, a in mats_and_args]
        if b_std is None:
            pairs = [(t, 1.0) for t in terms]
        else:
            b = self.p.vector(self._name("b"), var=b_std**2)
            pairs = [(t, 1.0) for t in terms] + [(b, 1.0)]
        return self.lincomb(pairs) if len(pairs) > 1 else terms[0]

    def _dense(self, layer, where):
        self._ntk_only(layer, where)
        if self.flat:
            raise ValueError(f"{where}: Flatten is only covered before the readout")
        b2 = 0.0 if layer.b_std is None else layer.b_std**2
        if self.vecs is None:  # first layer: Cov = W^2 x_i . x'_j / d + b^2
            xs = self.x.reshape(self.N, -1, self.x.shape[-1])
            cov = torch.einsum("aic,bjc->ijab", xs, xs) * layer.W_std**2
            self.vecs = self._input_vectors(cov / xs.shape[-1] + b2, "h")
            return
        W = self.p.matrix(self._name("W"), var=layer.W_std**2)
        uses, out, bias_uses = [], [], []
        b = None if layer.b_std is None else self.p.vector(self._name("b"), var=b2)
        for a in self.vecs:
            m = self.matmul(W, a)
            h = m if b is None else self.lincomb([(m, 1.0), (b, 1.0)])
            uses.append((a, m))
            bias_uses.append(h)
            out.append(h)
        self.params.append(("matrix", layer.W_std**2, uses))
        if b is not None:
            self.params.append(("bias", b2, bias_uses))
        self.vecs = out

    def _residual(self, layer, where):
        self._need_width(where)
        x, spatial = list(self.vecs), self.spatial
        self.layer(layer.block, f"{where}.block")
        if self.spatial != spatial or len(self.vecs) != len(x) or self.flat:
            raise ValueError(f"{where} (Residual): the block must keep the shape")
        m = layer.multiplier
        self.vecs = [self.lincomb([(a, 1.0), (y, m)]) for a, y in zip(x, self.vecs)]

    def _layernorm(self, layer, where):
        self._need_width(where)
        eps = layer.eps
        out = []
        for h in self.vecs:
            mu = self.p.moment(h)
            m2 = self.p.moment(h * h)
            theta = self.p.scalar_fn(lambda s, q: (q - s * s + eps) ** -0.5, mu, m2)
            y = self.p.nonlin(_centre_scale, h, scalars=[mu, theta])
            out.append(self.scale(h, theta, out=y))
        self.vecs = out

    # ---- readout and backward ---
    def readout(self, layer, where):
        self._ntk_only(layer, where)
        if self.vecs is None:
            raise ValueError(f"{where}: a single Dense layer has no program to write")
        if self.spatial:
            raise ValueError(
                f"{where}: the readout needs a flat value (Flatten, GlobalAvgPool or "
                f"an RNN before it), got spatial shape {self.spatial}"
            )
        P = len(self.vecs)
        w2 = layer.W_std**2 / P
        mats = [self.p.matrix(self._name("Wout"), var=w2) for _ in range(P)]
        terms = [W @ a for W, a in zip(mats, self.vecs)]
        if layer.b_std is not None:
            terms.append(self.p.vector(self._name("bout"), var=layer.b_std**2))
        out = self.p.lincomb(terms, [1.0] * len(terms)) if len(terms) > 1 else terms[0]
        self.seeds = [(a, self.p.vector(self._name("v"), var=w2)) for a in self.vecs]
        return out

    def backward(self) -> dict:
        """Append the backward pass; return ``{vector: G_vector}``."""
        pending: dict = {}
        for a, v in self.seeds:
            pending.setdefault(a, []).append(v)
        grads: dict = {}

        def grad(h):
            if h in grads:
                return grads[h]
            parts = pending.pop(h, None)
            if not parts:
                return None
            g = (
                parts[0]
                if len(parts) == 1
                else self.p.lincomb(parts, [1.0] * len(parts))
            )
            grads[h] = g
            return g

        def push(x, g):
            pending.setdefault(x, []).append(g)

        for entry in reversed(self.tape):
            kind, out = entry[0], entry[-1]
            g = grad(out)
            if g is None:
                continue
            if kind == "mm":
                push(entry[2], entry[1].T @ g)
            elif kind == "lin":
                for x, c in entry[1]:
                    push(x, g if c == 1.0 else c * g)
            elif kind == "act":
                phi, h = entry[1], entry[2]
                push(h, g * phi.derivative()(h))
            else:  # scale
                push(entry[2], g * entry[1])
        for h in list(pending):  # initial vectors: their gradients end here
            grad(h)
        return grads


def _centre_scale(x, mu, theta):
    return (x - mu) * theta
