"""The language: construction, printout, immutability, and the rules it enforces."""

import dataclasses
import math

import pytest
import torch

import tensorprograms as tp
from tensorprograms.program import ProgramError


def test_issue_example_builds_and_prints():
    p = tp.Program()
    x = p.vector("x")
    W = p.matrix("W", var=1.0)
    h = W @ x
    g = W.T @ tp.relu(h)
    s = p.moment(g * g)
    text = repr(p)
    assert "Netsor-T+" in text
    assert f"{g.name} = W.T @ " in text
    assert f"{s.name} = moment(" in text
    assert p[s.name] == s and p["W"] == W


def test_instructions_are_immutable_snapshots():
    p = tp.Program()
    x = p.vector("x")
    before = p.instructions
    p.moment(x * x)
    assert len(before) == 1 and len(p.instructions) == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.instructions[0].name = "y"


def test_netsor_forbids_transpose_naming_both_instructions():
    p = tp.Program(variant="Netsor")
    x = p.vector("x")
    W = p.matrix("W")
    h = W @ x
    with pytest.raises(ProgramError) as err:
        W.T @ h
    msg = str(err.value)
    assert "W.T @" in msg and h.name in msg and "Netsor-T" in msg


def test_scalars_inside_need_netsor_t_plus():
    p = tp.Program(variant="Netsor-T")
    x = p.vector("x")
    s = p.moment(x * x)  # an output scalar is fine in Netsor-T
    with pytest.raises(ProgramError, match="Netsor-T\\+"):
        x * s
    with pytest.raises(ProgramError, match="initial scalar"):
        p.scalar("c", 1.0)


def test_unknown_variant():
    with pytest.raises(ValueError, match="variant must be one of"):
        tp.Program(variant="Netsor-X")


def test_shape_ratios_must_match():
    p = tp.Program()
    x = p.vector("x")
    W = p.matrix("W", shape=(2.0, 1.0))
    y = W @ x
    assert y.ratio == 2.0
    with pytest.raises(ProgramError, match="shape ratios do not match"):
        W @ y
    with pytest.raises(ProgramError, match="shape ratios do not match"):
        x + y


def test_initial_covariance_checks():
    p = tp.Program()
    with pytest.raises(ProgramError, match="not positive semi-definite"):
        p.vectors(["a", "b"], cov=[[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ProgramError, match="NaN or inf"):
        p.vector("c", cov=[[1.0, math.nan], [math.nan, 1.0]])
    with pytest.raises(ProgramError, match="expected a covariance of shape"):
        p.vectors(["a", "b"], cov=torch.eye(3))
    with pytest.raises(ProgramError, match="NaN or inf"):
        p.scalar("s", math.inf)


def test_lanes_must_agree():
    p = tp.Program()
    p.vector("x", cov=torch.eye(3))
    with pytest.raises(ProgramError, match="expected 3, got 2"):
        p.vector("y", cov=torch.eye(2))


def test_failing_nonlinearity_is_named():
    p = tp.Program()
    x = p.vector("x")

    def bad_log(t):
        return torch.log(t)

    with pytest.raises(ProgramError, match="bad_log.*not finite"):
        p.nonlin(bad_log, x)

    def raises(t):
        raise RuntimeError("boom")

    with pytest.raises(ProgramError, match="raises.*boom"):
        p.nonlin(raises, x)
    with pytest.raises(ProgramError, match="same shape"):
        p.nonlin(lambda t: t.sum(), x)


def test_handles_of_another_program_are_rejected():
    p, q = tp.Program(), tp.Program()
    x = p.vector("x")
    W = q.matrix("W")
    with pytest.raises(ProgramError, match="belongs to another program"):
        W @ x


def test_duplicate_names():
    p = tp.Program()
    p.vector("x")
    with pytest.raises(ProgramError, match="already used"):
        p.matrix("x")


def test_freeze_and_handles_added_after_evaluation():
    p = tp.Program()
    x = p.vector("x")
    res, out = tp.limit(p), tp.run(p, width=8)
    y = x * 2.0
    with pytest.raises(KeyError, match="added after the program was evaluated"):
        res[y]
    with pytest.raises(KeyError, match="added after the program was run"):
        out[y]
    p.freeze()
    assert p.frozen
    with pytest.raises(ProgramError, match="frozen"):
        p.moment(y)


def test_user_functions_are_checked_for_smoothness():
    # Autograd gives 0 for the derivative of a jump and a one-sided slope at a
    # kink: such functions are marked non-smooth so the limit uses Stein's lemma.
    p = tp.Program()
    x, y = p.vector("x"), p.vector("y")
    smooth = [
        p.nonlin(lambda t: torch.tanh(3 * t), x),
        p.nonlin(lambda t: t**5 - t, x),
        p.nonlin(lambda a, b: torch.sin(a) * b, x, y),
    ]
    rough = [
        p.nonlin(lambda t: (t > 0.3).to(t.dtype), x),
        p.nonlin(lambda t: torch.relu(t - 1.0), x),
        p.nonlin(lambda a, b: torch.abs(a - b), x, y),
        p.nonlin(lambda t: torch.round(t), x),
    ]
    assert all(v.instruction.func.smooth for v in smooth)
    assert not any(v.instruction.func.smooth for v in rough)
    # Registered non-smooth nonlinearities know where their kink is.
    assert tp.relu(x).instruction.func.kinks == (0.0,)


def test_division_by_a_vector_is_allowed():
    # The test points include 0, where x / y is not finite; division is not checked
    # there (its finiteness depends on the values of y).
    p = tp.Program()
    x, y = p.vector("x"), p.vector("y")
    z = x / (y * y + 1.0)
    assert z.instruction.func.name == "div"
    # and its limit is right: E[X^2 / (Y^2 + 1)] = E[1 / (1 + Y^2)]
    # = sqrt(pi / 2) e^(1/2) erfc(1 / sqrt 2) for independent standard normals.
    s = p.moment(x * z)
    exact = math.sqrt(math.pi / 2) * math.exp(0.5) * math.erfc(1 / math.sqrt(2))
    est = tp.limit(p).estimate(s)
    assert abs(float(est.value) - exact) <= float(est.error) + 1e-12
