"""Write neural-tangents 0.6.5 reference kernels for the nn agreement test.

Run with the separate environment described in tools/ntenv-requirements.txt:

    /work/ntenv/bin/python tools/make_nt_reference.py

It computes, in float64, the infinite-width NNGP and NTK of every case below with
neural-tangents' ``stax`` and writes

- ``tests/data/nt_cases.json``: for each case its name, the architecture in the
  ``tensorprograms.nn`` spec format (a list of ``[layer_name, kwargs]`` pairs, read
  by ``tensorprograms.nn.from_spec``), the input shapes, the npz keys and notes on
  the neural-tangents conventions that the case depends on;
- ``tests/data/nt_reference.npz``: for case ``c`` the arrays ``c/x1`` (N1, ...),
  ``c/x2`` (N2, ...), ``c/nngp12``, ``c/ntk12`` (N1, N2) for x1 against x2 and
  ``c/nngp11``, ``c/ntk11`` (N1, N1) for x1 against itself (followed by the
  pairs of spatial axes, (H, H, W, W), when the readout keeps them).

The spec is translated to ``stax`` here, layer by layer (``to_stax``); nothing from
tensorprograms is imported, so the reference stays independent.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N1, N2 = 5, 4

# ---------------------------------------------------------------------------
# Notes on neural-tangents conventions, attached to the cases that need them.
# ---------------------------------------------------------------------------
NOTES = {
    "input": (
        "Input kernel: nngp0 = x1 . x2 / C over the channel (last) axis, per pair "
        "of spatial positions for NHWC / (N, T, C) inputs; ntk0 = 0. Kernels are "
        "those of ONE output unit of the readout: the out_dim of the last layer "
        "never enters."
    ),
    "dense_ntk": (
        "Dense, parametrization 'ntk': h = W_std/sqrt(fan_in) w x + b_std b, "
        "w, b ~ N(0, 1). nngp' = W_std^2 nngp + b_std^2 (b_std None: no term); "
        "ntk' = nngp' + W_std^2 ntk. out_dim is ignored by the limit."
    ),
    "dense_standard": (
        "Dense, parametrization 'standard': w ~ N(0, W_std^2/fan_in), "
        "b ~ N(0, b_std^2), h = w x + b; the NTK differentiates w.r.t. these w, b. "
        "nngp' = W_std^2 nngp + b_std^2 (same as 'ntk'); "
        "ntk' = fan_in * nngp + W_std^2 ntk + (1 if b_std is not None else 0), "
        "where nngp, ntk are the kernels of the layer INPUT and fan_in is the "
        "finite input width: the input dimension d for the first layer, the "
        "out_dim of the previous Dense (out_chan of the previous Conv) otherwise, "
        "H*W*C after Flatten. So hidden out_dim values change the NTK (not the "
        "NNGP), and the NTK grows like the width."
    ),
    "relu": (
        "ABRelu(a, b) = a min(x, 0) + b max(x, 0) (arc-cosine closed form); "
        "Relu = ABRelu(0, 1), LeakyRelu(alpha) = ABRelu(alpha, 1), "
        "Abs = ABRelu(-1, 1). ntk' = ntk * E[phi'(u) phi'(u')] with "
        "E = (a^2 + b^2)/2 - (a - b)^2 theta / (2 pi), theta = arccos(rho)."
    ),
    "erf": (
        "Erf is plain erf(x) (stax.Erf(a=1, b=1, c=0)): "
        "nngp' = (2/pi) arcsin(2c / sqrt((1 + 2 q1)(1 + 2 q2))), "
        "ntk' = ntk * (4/pi) / sqrt((1 + 2 q1)(1 + 2 q2) - 4 c^2)."
    ),
    "gelu": (
        "Gelu is exact x Phi(x) (stax.Gelu(approximate=False)); closed-form NNGP "
        "and derivative kernel (Tsuchida et al. 2020, arXiv 2002.08517)."
    ),
    "layernorm": (
        "LayerNorm over the channel axis, no affine, eps = 1e-12: "
        "nngp' = nngp / sqrt((q1 + eps)(q2 + eps)) and ntk' = ntk / sqrt((q1 + "
        "eps)(q2 + eps)) with q the input variances (the NTK is rescaled by the "
        "same factor; the projection term of the normaliser's Jacobian vanishes "
        "in the limit). neural-tangents only accepts LayerNorm on Gaussian "
        "(mean-zero) inputs, i.e. right after Dense/Conv/Residual, so the mean "
        "subtraction plays no role; it raises on LayerNorm after a nonlinearity."
    ),
    "residual": (
        "Residual(block, multiplier) = x + multiplier * block(x), built as "
        "serial(FanOut(2), parallel(serial(*block, DotGeneral(rhs=multiplier)), "
        "Identity()), FanInSum()). FanInSum adds the kernels of the branches "
        "(nngp' = nngp_x + m^2 nngp_block, ntk' = ntk_x + m^2 ntk_block): no cross "
        "term, which is exact because block ends with an independent Dense. "
        "neural-tangents requires both branches to be Gaussian: the residual input "
        "is the output of a Dense and the block ends with a Dense."
    ),
    "conv": (
        "Conv over NHWC with HWIO weights, fan_in = C_in * prod(filter_shape). The "
        "weights at different filter offsets t are independent, so only equal "
        "offsets pair up: nngp'(o, o') = W_std^2 / prod(filter_shape) * sum_t "
        "nngp(s o - lo + t, s o' - lo + t) + b_std^2 per spatial axis (s the "
        "stride, lo the low-side padding, terms outside the image are 0). "
        "Padding 'SAME' pads with zeros and "
        "still divides by the full filter size (no renormalisation at the edges), "
        "exactly as a finite conv net with zero padding. SAME padding follows "
        "lax: out = ceil(H / stride), total pad = max((out - 1) * stride + k - H, "
        "0), low side pad // 2, high side the rest (with stride 2 and even H the "
        "extra zero is at the END, unlike a symmetric torch padding). VALID: out "
        "= floor((H - k) / stride) + 1. Standard parametrization: ntk' = fan_in * "
        "conv(nngp) + W_std^2 conv(ntk) + 1[bias], conv without W_std^2 and bias."
    ),
    "flatten": (
        "Flatten: nngp' = mean over spatial positions p of nngp(p, p) (diagonal "
        "only), same for ntk; this is the kernel of the flattened vector divided "
        "by its length H*W (so the next Dense uses fan_in = H*W*C)."
    ),
    "gap": (
        "GlobalAvgPool: nngp' = mean over all pairs (p, p') of nngp(p, p'), same "
        "for ntk (needs the full spatial covariance)."
    ),
    "avgpool": (
        "AvgPool(window_shape, strides, padding) with neural-tangents' default "
        "normalize_edges=False: the window sum is always divided by "
        "prod(window_shape), also at SAME-padded edges (like torch's "
        "count_include_pad=True). A fixed linear map A on positions, so nngp' = A "
        "nngp A^T over ALL pairs of window positions, nngp'(o, o') = sum_{t, t'} "
        "nngp(o + t, o' + t') / prod(window_shape)^2 (unlike Conv, whose "
        "independent per-offset weights pair equal offsets only); same for ntk. "
        "strides None means stride 1 (not window_shape); SAME pads as in Conv."
    ),
    "parallel": (
        "Parallel(branches) = serial(FanOut(k), parallel(*branches), "
        "FanInConcat()) along channels: the per-unit kernel of the concatenation is "
        "the branches' kernels averaged with weights proportional to their output "
        "channels. The units of different branches are not identically "
        "distributed, so neural-tangents refuses a nonlinearity right after the "
        "concatenation; a Dense may follow (its kernel is linear in the mean)."
    ),
    "avgpool_edges": (
        "AvgPool(normalize_edges=True): with SAME padding each output is divided "
        "by the number of window positions inside the image instead of "
        "prod(window_shape) (separable: a product of per-axis counts)."
    ),
    "circular": (
        "Padding 'CIRCULAR': periodic images; the padding of 'SAME' (same lo, hi "
        "and output size ceil(H / stride)) filled with positions modulo H instead "
        "of zeros, then a 'VALID' window; for Conv and AvgPool."
    ),
    "spatial_out": (
        "The readout keeps spatial axes (no Flatten or pooling): kernels have "
        "shape (N1, N2, H, H, W, W), the two positions of each spatial axis side by "
        "side (neural-tangents' layout)."
    ),
    "sqrt_identity": (
        "GlobalSelfAttention with linear_scaling=False (logits / sqrt(n_chan_key), "
        "independent queries and keys) and attention_mechanism='IDENTITY': the "
        "logits stay Gaussian with E[s s'] = QK_std^2 K(t, t') K(s, s'), and with "
        "S(A, B) = sum over pairs of positions of A B, nngp' = (QK_std OV_std)^2 "
        "S(K, K) K + b_std^2, ntk' = (QK_std OV_std)^2 (2 S(K, Theta) K + S(K, K) "
        "(Theta + 4 K)) + b_std^2 (K, Theta of the layer input, x against x')."
    ),
    "attention": (
        "SelfAttention = stax.GlobalSelfAttention with linear_scaling=True: keys "
        "and queries share one weight matrix (tied), logits q.k / (n_in * "
        "n_chan_key) -> QK_std * nngp_in(t, s) with QK_std = W_query_std * "
        "W_key_std, attention G(x)[t, s] = softmax over s of QK_std * K(x, x)[t, "
        "s], computed from each input's OWN covariance (K(x1, x1) for x1, K(x2, "
        "x2) for x2). nngp'(t, t') = OV_std^2 sum_{s, s'} G1[t, s] nngp(s, s') "
        "G2[t', s'] + b_std^2 with OV_std = W_out_std * W_value_std; ntk' = "
        "OV_std^2 G1 ntk G2^T + 2 OV_std^2 G1 nngp G2^T + b_std^2 (value and "
        "output weights each add one nngp term; key/query weights and the "
        "dependence of G on x contribute nothing in the limit). All sub-layers "
        "use the NTK parametrization; n_chan_out, n_chan_key, n_chan_val and "
        "n_heads do not enter the limit."
    ),
}


# ---------------------------------------------------------------------------
# Spec -> stax
# ---------------------------------------------------------------------------
def _tuple(v):
    return None if v is None else tuple(int(i) for i in v)


def _dense(kw):
    return stax.Dense(
        kw["out_dim"],
        W_std=kw["W_std"],
        b_std=kw["b_std"],
        parameterization=kw["parametrization"],
    )


def _conv(kw):
    return stax.Conv(
        kw["out_chan"],
        _tuple(kw["filter_shape"]),
        strides=_tuple(kw["strides"]),
        padding=kw["padding"],
        W_std=kw["W_std"],
        b_std=kw["b_std"],
        parameterization=kw["parametrization"],
    )


def _residual(kw):
    branch = [to_stax(kw["block"])]
    if kw["multiplier"] != 1.0:
        branch.append(stax.DotGeneral(rhs=float(kw["multiplier"])))
    return stax.serial(
        stax.FanOut(2),
        stax.parallel(stax.serial(*branch), stax.Identity()),
        stax.FanInSum(),
    )


def _attention(kw):
    linear = kw.get("linear_scaling", True)
    if linear is not True and kw["attention_mechanism"] != "IDENTITY":
        raise ValueError("1/sqrt(n) logits have a closed form only for IDENTITY")
    return stax.GlobalSelfAttention(
        n_chan_out=kw["n_chan_out"],
        n_chan_key=kw["n_chan_key"],
        n_chan_val=kw["n_chan_val"],
        n_heads=kw["n_heads"],
        linear_scaling=linear,
        W_key_std=kw["W_key_std"],
        W_value_std=kw["W_value_std"],
        W_query_std=kw["W_query_std"],
        W_out_std=kw["W_out_std"],
        b_std=kw["b_std"],
        attention_mechanism=kw["attention_mechanism"],
    )


def _parallel(kw):
    branches = [to_stax(b) for b in kw["branches"]]
    return stax.serial(
        stax.FanOut(len(branches)), stax.parallel(*branches), stax.FanInConcat()
    )


LAYERS = {
    "Dense": _dense,
    "Identity": lambda kw: stax.Identity(),
    "Parallel": _parallel,
    "Relu": lambda kw: stax.Relu(),
    "LeakyRelu": lambda kw: stax.LeakyRelu(kw["alpha"]),
    "ABRelu": lambda kw: stax.ABRelu(kw["a"], kw["b"]),
    "Abs": lambda kw: stax.Abs(),
    "Erf": lambda kw: stax.Erf(),
    "Gelu": lambda kw: stax.Gelu(approximate=False),
    "LayerNorm": lambda kw: stax.LayerNorm(axis=-1),
    "Conv": _conv,
    "AvgPool": lambda kw: stax.AvgPool(
        _tuple(kw["window_shape"]),
        _tuple(kw["strides"]),
        kw["padding"],
        normalize_edges=kw.get("normalize_edges", False),
    ),
    "GlobalAvgPool": lambda kw: stax.GlobalAvgPool(),
    "Flatten": lambda kw: stax.Flatten(),
    "Residual": _residual,
    "SelfAttention": _attention,
}


def to_stax(spec):
    """Translate a list of [layer_name, kwargs] pairs into one stax.serial."""
    return stax.serial(*(LAYERS[name](kwargs) for name, kwargs in spec))


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------
def dense(out_dim, W_std, b_std, parametrization):
    return [
        "Dense",
        {
            "out_dim": out_dim,
            "W_std": W_std,
            "b_std": b_std,
            "parametrization": parametrization,
        },
    ]


def conv(out_chan, filt, strides, padding, W_std, b_std, parametrization):
    return [
        "Conv",
        {
            "out_chan": out_chan,
            "filter_shape": list(filt),
            "strides": list(strides),
            "padding": padding,
            "W_std": W_std,
            "b_std": b_std,
            "parametrization": parametrization,
        },
    ]


ACTIVATIONS = {
    # name: (layer, W_std, b_std, depths, notes key)
    "relu": (["Relu", {}], math.sqrt(2.0), 0.1, [1, 2, 3, 4, 5], "relu"),
    "erf": (["Erf", {}], 1.6, 0.2, [1, 2, 3, 4, 5], "erf"),
    "gelu": (["Gelu", {}], 1.4, 0.15, [1, 2, 4], "gelu"),
    "leaky_relu": (["LeakyRelu", {"alpha": 0.1}], 1.3, 0.3, [1, 2, 4], "relu"),
    "abrelu": (["ABRelu", {"a": -0.4, "b": 1.2}], 1.1, 0.2, [1, 2, 4], "relu"),
    "abs": (["Abs", {}], 1.2, 0.1, [2], "relu"),
}
WIDTHS = [256, 128, 512, 64, 300]  # hidden out_dim per layer (enter 'standard')


def mlp(act, depth, W_std, b_std, param, readout_W_std=1.0):
    spec = []
    for layer in range(depth):
        spec += [dense(WIDTHS[layer], W_std, b_std, param), act]
    spec.append(dense(1, readout_W_std, b_std, param))
    return spec


def mlp_cases():
    for act_name, (act, W_std, b_std, depths, note) in ACTIVATIONS.items():
        for depth in depths:
            for bias in (True, False):
                for param in ("ntk", "standard"):
                    b = b_std if bias else None
                    yield {
                        "name": f"mlp_{act_name}_d{depth}_"
                        f"{'bias' if bias else 'nobias'}_{param}",
                        "spec": mlp(act, depth, W_std, b, param),
                        "input_shape": [6],
                        "notes": ["input", f"dense_{param}", note],
                    }


def residual_cases():
    relu, erf = ["Relu", {}], ["Erf", {}]
    for param in ("ntk", "standard"):
        for mult, act, act_note in ((1.0, relu, "relu"), (0.5, erf, "erf")):
            block = [
                act,
                dense(128, 1.2, 0.1, param),
                act,
                dense(128, 0.9, None, param),
            ]
            spec = [
                dense(128, 1.0, 0.2, param),
                ["Residual", {"block": block, "multiplier": mult}],
                ["Residual", {"block": block, "multiplier": mult}],
                act,
                dense(1, 1.0, 0.2, param),
            ]
            yield {
                "name": f"resmlp_{act_note}_m{mult:g}_{param}",
                "spec": spec,
                "input_shape": [6],
                "notes": ["input", f"dense_{param}", "residual", act_note],
            }


def layernorm_cases():
    for param in ("ntk", "standard"):
        for act, note in ((["Relu", {}], "relu"), (["Gelu", {}], "gelu")):
            spec = []
            for layer in range(3):
                spec += [
                    dense(WIDTHS[layer], 1.5, 0.3, param),
                    ["LayerNorm", {}],
                    act,
                ]
            spec.append(dense(1, 1.0, 0.1, param))
            yield {
                "name": f"lnmlp_{note}_{param}",
                "spec": spec,
                "input_shape": [6],
                "notes": ["input", f"dense_{param}", "layernorm", note],
            }


def conv_cases():
    relu = ["Relu", {}]
    s2 = math.sqrt(2.0)
    # (name, layers between input and readout, input HWC, readout note)
    nets = [
        (
            "same_s1_flatten",
            [conv(16, (3, 3), (1, 1), "SAME", s2, 0.1, None), relu]
            + [conv(16, (3, 3), (1, 1), "SAME", s2, 0.1, None), relu, ["Flatten", {}]],
            "flatten",
        ),
        (
            "same_s1_gap",
            [conv(16, (3, 3), (1, 1), "SAME", s2, 0.1, None), relu]
            + [conv(16, (3, 3), (1, 1), "SAME", s2, 0.1, None), relu]
            + [["GlobalAvgPool", {}]],
            "gap",
        ),
        (
            "valid_s1_flatten",
            [conv(16, (3, 3), (1, 1), "VALID", s2, 0.1, None), relu]
            + [conv(16, (2, 2), (1, 1), "VALID", s2, 0.1, None), relu, ["Flatten", {}]],
            "flatten",
        ),
        (
            "valid_s2_gap",
            [conv(16, (3, 3), (2, 2), "VALID", s2, None, None), relu]
            + [conv(16, (2, 2), (1, 1), "VALID", s2, 0.1, None), relu]
            + [["GlobalAvgPool", {}]],
            "gap",
        ),
        (
            "same_s2_gap",
            [conv(16, (3, 3), (2, 2), "SAME", s2, 0.1, None), relu]
            + [conv(16, (3, 3), (1, 1), "SAME", s2, 0.1, None), relu]
            + [["GlobalAvgPool", {}]],
            "gap",
        ),
        (
            "same_s2_flatten_erf",
            [conv(16, (3, 2), (2, 1), "SAME", 1.5, 0.2, None), ["Erf", {}]]
            + [conv(16, (3, 3), (1, 2), "SAME", 1.5, None, None), ["Erf", {}]]
            + [["Flatten", {}]],
            "flatten",
        ),
        (
            "avgpool_valid_flatten",
            [conv(16, (3, 3), (1, 1), "SAME", s2, 0.1, None), relu]
            + [
                [
                    "AvgPool",
                    {"window_shape": [2, 2], "strides": [2, 2], "padding": "VALID"},
                ]
            ]
            + [conv(16, (3, 3), (1, 1), "VALID", s2, 0.1, None), relu]
            + [["Flatten", {}]],
            "flatten",
        ),
        (
            "avgpool_same_gap",
            [conv(16, (3, 3), (1, 1), "VALID", s2, 0.1, None), relu]
            + [
                [
                    "AvgPool",
                    {"window_shape": [3, 3], "strides": [1, 1], "padding": "SAME"},
                ]
            ]
            + [conv(16, (2, 2), (1, 1), "SAME", s2, 0.1, None), relu]
            + [["GlobalAvgPool", {}]],
            "gap",
        ),
    ]
    for param in ("ntk", "standard"):
        for name, body, readout in nets:
            spec = []
            for layer_name, kw in body:
                kw = dict(kw)
                if layer_name == "Conv":
                    kw["parametrization"] = param
                spec.append([layer_name, kw])
            spec.append(dense(1, 1.0, 0.1, param))
            notes = ["input", f"dense_{param}", "conv", readout]
            notes += ["erf" if "erf" in name else "relu"]
            if "avgpool" in name:
                notes.append("avgpool")
            yield {
                "name": f"conv_{name}_{param}",
                "spec": spec,
                "input_shape": [6, 6, 3],
                "notes": notes,
            }


def attention(W_std_qk=1.0, W_ov=1.0, b_std=None, n=64):
    return [
        "SelfAttention",
        {
            "n_chan_out": n,
            "n_chan_key": n,
            "n_chan_val": n,
            "n_heads": 2,
            "linear_scaling": True,
            "W_key_std": W_std_qk,
            "W_value_std": W_ov,
            "W_query_std": W_std_qk,
            "W_out_std": 1.0,
            "b_std": b_std,
            "attention_mechanism": "SOFTMAX",
        },
    ]


def attention_cases():
    relu = ["Relu", {}]
    nets = {
        # attention straight on the inputs (logits from x . x' / C)
        "attn_input_gap": [
            attention(1.0, 1.0, None),
            ["GlobalAvgPool", {}],
            dense(1, 1.0, None, "ntk"),
        ],
        "attn_dense_relu_flatten": [
            dense(64, 1.5, 0.1, "ntk"),
            attention(1.3, 1.1, 0.2),
            relu,
            ["Flatten", {}],
            dense(1, 1.0, 0.1, "ntk"),
        ],
        "attn_two_layers_gap": [
            dense(64, 1.2, 0.1, "ntk"),
            attention(2.0, 1.0, 0.1),
            relu,
            dense(64, 1.4, 0.1, "ntk"),
            attention(1.5, 0.8, None),
            ["GlobalAvgPool", {}],
            dense(1, 1.0, 0.1, "ntk"),
        ],
        "attn_residual_layernorm_gap": [
            dense(64, 1.0, 0.1, "ntk"),
            ["Residual", {"block": [attention(1.5, 1.0, 0.1)], "multiplier": 1.0}],
            ["LayerNorm", {}],
            relu,
            dense(64, 1.3, 0.1, "ntk"),
            ["GlobalAvgPool", {}],
            dense(1, 1.0, 0.1, "ntk"),
        ],
    }
    for name, spec in nets.items():
        notes = ["input", "dense_ntk", "attention"]
        notes += ["flatten" if "flatten" in name else "gap"]
        if "relu" in name or "two" in name:
            notes.append("relu")
        if "residual" in name:
            notes += ["residual", "layernorm"]
        yield {"name": name, "spec": spec, "input_shape": [5, 4], "notes": notes}


def _case(name, spec, input_shape, notes):
    return {"name": name, "spec": spec, "input_shape": input_shape, "notes": notes}


def standard_width_cases():
    """Standard parametrization: hidden widths (1 to 1000) and W_std enter the NTK;
    b_std = 0 differs from None there (the bias still has a gradient)."""
    erf, relu = ["Erf", {}], ["Relu", {}]
    for b_std, tag in ((0.0, "b0"), (None, "nobias"), (0.7, "bias")):
        spec = [
            dense(1, 2.5, b_std, "standard"),
            relu,
            dense(1000, 0.6, b_std, "standard"),
            erf,
            dense(3, 1.9, b_std, "standard"),
            ["Identity", {}],
            dense(2, 0.8, b_std, "standard"),
        ]
        yield _case(
            f"std_widths_{tag}",
            spec,
            [7],
            ["input", "dense_standard", "relu", "erf"],
        )


def more_residual_cases():
    relu, erf = ["Relu", {}], ["Erf", {}]
    for param in ("ntk", "standard"):
        inner = [erf, dense(32, 0.5, None, param)]
        block = [
            relu,
            dense(32, 1.5, 0.1, param),
            ["Residual", {"block": inner, "multiplier": 0.4}],
        ]
        for mult in (-1.5, 2.0):
            spec = [
                dense(32, 1.0, 0.1, param),
                ["Residual", {"block": block, "multiplier": mult}],
                [
                    "Residual",
                    {"block": [dense(32, 1.2, None, param)], "multiplier": 0.7},
                ],
                relu,
                dense(1, 1.0, 0.0, param),
            ]
            yield _case(
                f"resnest_m{mult:g}_{param}",
                spec,
                [6],
                ["input", f"dense_{param}", "residual", "relu", "erf"],
            )


def parallel_cases():
    relu, erf = ["Relu", {}], ["Erf", {}]
    for param in ("ntk", "standard"):
        branches = [
            [relu, dense(4, 1.5, 0.2, param)],
            [erf, dense(12, 0.7, None, param)],
        ]
        yield _case(
            f"parallel_dense_{param}",
            [
                dense(8, 1.2, 0.1, param),
                ["Parallel", {"branches": branches}],
                dense(6, 1.3, 0.1, param),
                relu,
                dense(1, 1.0, 0.1, param),
            ],
            [5],
            ["input", f"dense_{param}", "parallel", "relu", "erf"],
        )


def circular_cases():
    relu = ["Relu", {}]
    pool = {"window_shape": [3, 3], "strides": [1, 1], "padding": "CIRCULAR"}
    for param in ("ntk", "standard"):
        spec = [
            conv(8, (3, 3), (2, 2), "CIRCULAR", 1.3, 0.1, param),
            relu,
            ["AvgPool", pool],
            conv(8, (2, 3), (1, 1), "CIRCULAR", 1.2, 0.1, param),
            relu,
            ["Flatten", {}],
            dense(1, 1.0, 0.1, param),
        ]
        yield _case(
            f"conv_circular_{param}",
            spec,
            [6, 5, 2],
            ["input", f"dense_{param}", "conv", "circular", "avgpool"]
            + ["flatten", "relu"],
        )
    spec = [
        conv(8, (4,), (3,), "CIRCULAR", 1.3, 0.1, "ntk"),
        ["Erf", {}],
        conv(8, (3,), (1,), "CIRCULAR", 1.2, None, "ntk"),
        relu,
        ["GlobalAvgPool", {}],
        dense(1, 1.0, 0.1, "ntk"),
    ]
    yield _case(
        "conv1d_circular_gap",
        spec,
        [8, 3],
        ["input", "dense_ntk", "conv", "circular", "gap", "erf", "relu"],
    )


def spatial_output_cases():
    for param in ("ntk", "standard"):
        spec = [
            conv(8, (3, 3), (1, 1), "SAME", 1.4, 0.1, param),
            ["Relu", {}],
            conv(3, (2, 2), (1, 1), "VALID", 1.0, 0.1, param),
        ]
        yield _case(
            f"conv_spatial_output_{param}",
            spec,
            [4, 3, 2],
            ["input", f"dense_{param}", "conv", "spatial_out", "relu"],
        )


def more_attention_cases():
    relu = ["Relu", {}]
    for mech in ("IDENTITY", "ABS", "RELU"):
        att = attention(1.2, 0.9, 0.2)
        att[1] = {**att[1], "attention_mechanism": mech}
        yield _case(
            f"attn_{mech.lower()}_gap",
            [dense(64, 1.2, 0.1, "ntk"), att, relu, ["GlobalAvgPool", {}]]
            + [dense(1, 1.0, None, "ntk")],
            [5, 4],
            ["input", "dense_ntk", "attention", "gap", "relu"],
        )
    for b_std in (0.2, None):
        att = attention(1.1, 0.9, b_std)
        att[1] = {**att[1], "linear_scaling": False, "attention_mechanism": "IDENTITY"}
        yield _case(
            f"attn_sqrt_identity_{'bias' if b_std else 'nobias'}",
            [dense(64, 1.2, 0.1, "ntk"), att, relu, ["Flatten", {}]]
            + [dense(1, 1.0, 0.1, "ntk")],
            [5, 4],
            ["input", "dense_ntk", "sqrt_identity", "flatten", "relu"],
        )


def pool_edges_cases():
    relu = ["Relu", {}]
    pool = {
        "window_shape": [3, 2],
        "strides": [2, 1],
        "padding": "SAME",
        "normalize_edges": True,
    }
    spec = [
        conv(8, (3, 3), (1, 1), "SAME", 1.4, 0.1, "ntk"),
        relu,
        ["AvgPool", pool],
        conv(8, (2, 2), (1, 1), "VALID", 1.2, 0.1, "ntk"),
        relu,
        ["GlobalAvgPool", {}],
        dense(1, 1.0, 0.1, "ntk"),
    ]
    yield _case(
        "avgpool_normalize_edges_gap",
        spec,
        [6, 5, 2],
        ["input", "dense_ntk", "conv", "avgpool", "avgpool_edges", "gap", "relu"],
    )


def deep_cases():
    for act, W_std, b_std, note in (
        ("Erf", 2.5, 0.5, "erf"),
        ("Relu", 2**0.5, 0.0, "relu"),
    ):
        spec = []
        for _ in range(30):
            spec += [dense(8, W_std, b_std, "ntk"), [act, {}]]
        spec.append(dense(1, 1.0, None, "ntk"))
        yield _case(
            f"deep30_{note}",
            spec,
            [4],
            ["input", "dense_ntk", note],
        )


# In this order: a case's seed is its index, so new families go at the end.
FAMILIES = (
    mlp_cases,
    residual_cases,
    layernorm_cases,
    conv_cases,
    attention_cases,
    standard_width_cases,
    more_residual_cases,
    parallel_cases,
    circular_cases,
    spatial_output_cases,
    more_attention_cases,
    deep_cases,
    pool_edges_cases,
)


def all_cases():
    for family in FAMILIES:
        yield from family()


# ---------------------------------------------------------------------------
def compute(case, seed):
    """Inputs and the four reference kernels of one case, as float64 numpy."""
    rng = np.random.default_rng(seed)
    shape = tuple(case["input_shape"])
    x1 = rng.standard_normal((N1, *shape))
    x2 = rng.standard_normal((N2, *shape))
    # Make x2[0] a rescaled copy of x1[0]: an exactly collinear pair checks the
    # edge rho = 1 of the arc-cosine kernels away from the diagonal.
    x2[0] = 0.7 * x1[0]
    _, _, kernel_fn = to_stax(case["spec"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # linear-scaling attention init warning
        k12 = kernel_fn(jnp.asarray(x1), jnp.asarray(x2), ("nngp", "ntk"))
        k11 = kernel_fn(jnp.asarray(x1), None, ("nngp", "ntk"))
    out = {
        "x1": x1,
        "x2": x2,
        "nngp12": np.asarray(k12.nngp),
        "ntk12": np.asarray(k12.ntk),
        "nngp11": np.asarray(k11.nngp),
        "ntk11": np.asarray(k11.ntk),
    }
    for key, val in out.items():
        if val.dtype != np.float64 or not np.all(np.isfinite(val)):
            raise RuntimeError(f"{case['name']}: {key} is {val.dtype} or not finite")
    for key, n in (("nngp12", N2), ("ntk12", N2), ("nngp11", N1), ("ntk11", N1)):
        if out[key].shape[:2] != (N1, n):
            raise RuntimeError(f"{case['name']}: {key} has shape {out[key].shape}")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data")
    parser.add_argument("--only", help="substring: compute only matching cases")
    args = parser.parse_args(argv)

    import importlib.metadata as md

    meta = {
        "generator": "tools/make_nt_reference.py",
        "neural_tangents": md.version("neural-tangents"),
        "jax": jax.__version__,
        "jaxlib": md.version("jaxlib"),
        "dtype": "float64 (jax_enable_x64)",
        "N1": N1,
        "N2": N2,
        "arrays": "npz keys '<name>/x1' (N1, *input_shape), '<name>/x2' (N2, "
        "*input_shape), '<name>/nngp12', '<name>/ntk12' (N1, N2): x1 vs x2, "
        "'<name>/nngp11', '<name>/ntk11' (N1, N1): x1 vs itself; each followed by "
        "(H, H, W, W) when the output keeps spatial axes",
        "inputs": "x1, x2 iid N(0, 1) from numpy default_rng(seed), except x2[0] "
        "= 0.7 * x1[0]: an exactly collinear pair (rho = 1). There the arc-cosine "
        "kernels' angle theta ~ sqrt(1 - rho) amplifies a relative error e of the "
        "covariance into sqrt(e); computing theta = atan2(sqrt(max(q1 q2 - c^2, "
        "0)), c) from the same root that enters the NNGP (as neural-tangents "
        "does) keeps the NNGP exact to rounding (its theta-derivative vanishes at "
        "theta = 0), while theta = arccos(c / sqrt(q1 q2)) with an independent "
        "root does not, and the next layer's NTK then drifts by ~1e-5.",
        "notes": "each case's notes state the neural-tangents conventions it "
        "depends on; all formulas in them were checked by recomputing every "
        "non-Gelu case from the notes alone in numpy (agreement to 1e-8).",
        "spec": "a list of [layer_name, kwargs] pairs applied in sequence "
        "(tensorprograms.nn.from_spec); Residual's 'block' is such a list",
    }
    cases, arrays = [], {}
    t0 = time.perf_counter()
    for seed, case in enumerate(all_cases()):
        if args.only and args.only not in case["name"]:
            continue
        result = compute(case, seed)
        for key, val in result.items():
            arrays[f"{case['name']}/{key}"] = val
        notes = " | ".join(NOTES[k] for k in dict.fromkeys(case["notes"]))
        cases.append({**case, "seed": seed, "notes": notes})
        print(f"{case['name']:45s} ntk11[0,0]={result['ntk11'].flat[0]:.6g}")
    if len({c["name"] for c in cases}) != len(cases):
        raise RuntimeError("case names are not unique")
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "nt_cases.json", "w") as f:
        json.dump({"meta": meta, "cases": cases}, f, indent=1)
        f.write("\n")
    np.savez_compressed(args.out / "nt_reference.npz", **arrays)
    size = (args.out / "nt_reference.npz").stat().st_size
    print(
        f"{len(cases)} cases in {time.perf_counter() - t0:.1f} s, "
        f"npz {size / 1024:.0f} KiB, nt {meta['neural_tangents']}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
