"""Infinite-width kernels of `tensorprograms.nn` against neural-tangents 0.6.5.

The reference values in tests/data were computed by neural-tangents 0.6.5 in
float64 (tools/make_nt_reference.py, run in its own virtual environment described
by tools/ntenv-requirements.txt); neural-tangents is not needed to run this test.
Each case gives the architecture as a `tensorprograms.nn.from_spec` list, seeded
inputs x1 (5 points) and x2 (4 points), and the NNGP and NTK of x1 vs x2 and of x1
vs itself. nt_cases.json explains, per case, the neural-tangents conventions the
numbers depend on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
with open(DATA / "nt_cases.json") as _f:
    _META = json.load(_f)
CASES = _META["cases"]

# The acceptance tolerance, relative to the largest entry. Both sides are
# float64 closed forms. Away from rho = 1 they differ by rounding (~1e-15). Every
# case also has an exactly collinear pair (x2[0] = 0.7 x1[0], rho = 1), where the
# arc-cosine kernels' angle theta ~ sqrt(1 - rho) turns a relative error e of the
# previous layer's covariance into an error ~ sqrt(e) of the derivative kernel:
# ~1e-8 when the NNGP is kept exact to rounding (neural-tangents' NTK there is
# within 1e-8 of the exact value c * K(x, x), by homogeneity of bias-free relu
# nets). 1e-6 leaves a margin of 100 over that and is far below any convention
# difference (a wrong b_std or fan_in term moves entries by >= 1e-3).
RTOL = 1e-6


@pytest.fixture(scope="module")
def nn():
    return pytest.importorskip("tensorprograms.nn")


@pytest.fixture(scope="module")
def reference():
    with np.load(DATA / "nt_reference.npz") as f:
        yield {key: f[key] for key in f.files}


def _layer_names(spec):
    for name, kwargs in spec:
        yield name
        if name == "Residual":
            yield from _layer_names(kwargs["block"])


def _rel_err(got, want):
    """max |got - want| / max |want| (a norm-wise relative error)."""
    got = np.asarray(got.detach().cpu())
    if got.shape != want.shape:
        raise AssertionError(f"shape {got.shape}, expected {want.shape}")
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def test_reference_data_is_consistent():
    """The data file holds what the JSON promises, as float64 and finite."""
    with np.load(DATA / "nt_reference.npz") as f:
        keys = set(f.files)
        for case in CASES:
            name = case["name"]
            x1, x2 = f[f"{name}/x1"], f[f"{name}/x2"]
            n1, n2 = _META["meta"]["N1"], _META["meta"]["N2"]
            assert x1.shape == (n1, *case["input_shape"])
            assert x2.shape == (n2, *case["input_shape"])
            for kind in ("nngp", "ntk"):
                k11, k12 = f[f"{name}/{kind}11"], f[f"{name}/{kind}12"]
                assert k11.dtype == k12.dtype == np.float64
                assert k11.shape[:2] == (n1, n1) and k12.shape[:2] == (n1, n2)
                assert k11.shape[2:] == k12.shape[2:]  # (H, H, W, W) or ()
                assert np.all(np.isfinite(k11)) and np.all(np.isfinite(k12))
                # K(x1, x1) is a covariance over (input, positions): symmetric,
                # positive semi-definite.
                nd = (k11.ndim - 2) // 2
                rows = (0, *range(2, 2 + 2 * nd, 2))
                cols = (1, *range(3, 3 + 2 * nd, 2))
                mat = k11.transpose(*rows, *cols).reshape(
                    np.prod([k11.shape[a] for a in rows]), -1
                )
                np.testing.assert_allclose(mat, mat.T, rtol=1e-12, atol=0)
                assert np.linalg.eigvalsh(mat).min() > -1e-10 * np.abs(mat).max()
            keys -= {f"{name}/{s}" for s in ("x1", "x2", "nngp11", "nngp12")}
            keys -= {f"{name}/ntk11", f"{name}/ntk12"}
        assert not keys, f"arrays without a case: {sorted(keys)[:5]}"


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_kernel_matches_neural_tangents(case, nn, reference):
    import torch

    missing = sorted({n for n in _layer_names(case["spec"]) if not hasattr(nn, n)})
    if missing:
        pytest.skip(f"tensorprograms.nn does not provide {', '.join(missing)}")
    try:
        model = nn.from_spec(case["spec"])
    except NotImplementedError as e:
        pytest.skip(f"tensorprograms.nn does not cover this case: {e}")

    name = case["name"]
    x1 = torch.from_numpy(reference[f"{name}/x1"])
    x2 = torch.from_numpy(reference[f"{name}/x2"])
    k12 = model.kernel(x1, x2)
    k11 = model.kernel(x1)

    errors = {
        "nngp12": _rel_err(k12.nngp, reference[f"{name}/nngp12"]),
        "ntk12": _rel_err(k12.ntk, reference[f"{name}/ntk12"]),
        "nngp11": _rel_err(k11.nngp, reference[f"{name}/nngp11"]),
        "ntk11": _rel_err(k11.ntk, reference[f"{name}/ntk11"]),
    }
    for kernel in (k12.nngp, k12.ntk, k11.nngp, k11.ntk):
        assert kernel.dtype == torch.float64
    bad = {k: f"{v:.2e}" for k, v in errors.items() if not v <= RTOL}
    assert not bad, (
        f"{name}: relative error above {RTOL:g}: {bad} (the conventions this case "
        "depends on are in its 'notes' in tests/data/nt_cases.json)"
    )
