"""The finite-width reader against direct torch computations."""

import pytest
import torch

import tensorprograms as tp


def _program():
    p = tp.Program()
    x = p.vector("x", var=2.0)
    W = p.matrix("W", var=1.5, shape=(2.0, 1.0))
    h = W @ x
    g = W.T @ tp.tanh(h)
    s = p.moment(g * x)
    return p, x, W, h, g, s


def test_run_matches_hand_computation():
    p, x, W, h, g, s = _program()
    out = tp.run(p, width=64, seed=3)
    xv = out[x]
    assert xv.shape == (64,) and out[h].shape == (128,)
    # Recover W from h = W x is impossible; instead check the algebra between values.
    gv = out[g]
    assert torch.allclose(out[s], (gv * xv).mean())
    assert out[s].shape == ()


def test_seeds_stack_and_are_reproducible():
    p, *_, s = _program()
    a = tp.run(p, width=32, seeds=[0, 1, 2])
    b = tp.run(p, width=32, seed=1)
    assert a[s].shape == (3,)
    assert torch.equal(a[s][1], b[s])


def test_matrix_entries_have_variance_var_over_fan_in():
    # W e_1 is the first column of W: n_out iid N(0, var / n_in) entries.
    p = tp.Program()
    e = p.vector("e", var=0.0)
    W = p.matrix("W", var=3.0, shape=(4.0, 1.0))
    col = W @ (e + 1.0)  # W @ ones: each entry ~ N(0, var) exactly
    out = tp.run(p, width=500, seed=0)
    v = out[col].var()
    # 2000 samples of N(0, 3): the sample variance has relative sd sqrt(2/2000) ~ 3%.
    assert abs(float(v) - 3.0) < 0.15 * 3.0


def test_lanes_and_float32():
    cov = torch.tensor([[1.0, 0.5], [0.5, 2.0]])
    p = tp.Program()
    x = p.vector("x", cov=cov)
    y = tp.relu(x)
    s = p.moment(y * y)
    out = tp.run(p, width=20000, seed=1, dtype=torch.float32)
    assert out[x].shape == (2, 20000) and out[x].dtype == torch.float32
    emp = out.kernel(x)
    # Entries of a 2x2 sample covariance from 20000 draws: sd <= sqrt(8/20000) = 0.02.
    assert torch.allclose(emp.double(), cov.double(), atol=0.08)
    assert out[s].shape == (2,)


def test_bad_arguments():
    p, *_ = _program()
    with pytest.raises(ValueError, match="width"):
        tp.run(p, width=0)
    with pytest.raises(ValueError, match="dtype"):
        tp.run(p, width=8, dtype=torch.int64)
    with pytest.raises(TypeError, match="Program"):
        tp.run("p", width=8)
