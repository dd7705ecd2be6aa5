"""abc(d) tables and TP4's classification against THEORY.md sections 5-9."""

import itertools

import pytest

from tensorprograms.parametrization import (
    DEPTH_MUP,
    MEAN_FIELD,
    MUP,
    MUP_ADAM,
    NTP,
    SPECTRAL,
    SPECTRAL_ADAM,
    Exponents,
    Parametrization,
    classify,
    get_parametrization,
    scaling,
    standard,
)


def theory_r(p: Parametrization, depth: int) -> float:
    """THEORY.md section 5's r, written out for a global learning-rate exponent c."""
    layers = [p.input] + [p.hidden] * (depth - 1) + [p.output]
    cs = {e.c for e in layers}
    assert len(cs) == 1, "this oracle needs one global c"
    c = cs.pop()
    out = layers[-1]
    inner = min(2 * e.a + (1 if i == 0 else 0) for i, e in enumerate(layers[:-1]))
    return min(out.a + out.b, 2 * out.a + c) + c - 1 + inner


# (parametrization, L, regime, r) quoted from THEORY.md section 5.
CASES = [
    (MUP, 3, "feature_learning", 0.0),
    (NTP, 3, "kernel", 0.5),
    (standard(1.0), 3, "kernel", 0.5),
    (standard(0.0), 3, "unstable", -1.0),
    (MEAN_FIELD, 1, "feature_learning", 0.0),
]


@pytest.mark.parametrize("p, depth, regime, r", CASES)
def test_verdicts_and_r_from_theory(p, depth, regime, r):
    c = classify(p, depth)
    assert c.regime == regime
    assert c.r == pytest.approx(r, abs=1e-12)
    assert c.stable == (regime != "unstable")


def test_feature_learning_in_every_layer_for_mup_only():
    assert classify(MUP, 4).r_layers == (0.0, 0.0, 0.0, 0.0)
    assert all(r == pytest.approx(0.5) for r in classify(NTP, 4).r_layers)


def test_unstable_sp_names_the_failed_condition():
    failed = classify(standard(0.0), 2).failed
    assert "r >= 0" in failed and "2 a_{L+1} + c >= 1" in failed


def test_trivial_parametrization():
    # output layer scaled down too much, c = 1: r = min(1, 2) + 0 + min(1, 0) = 1,
    # a+b+r = 2 > 1 and 2a + c = 2 > 1: stable but the output never moves.
    p = Parametrization(
        "t", "sgd", Exponents(0, 0, 1), Exponents(0, 0.5, 1), Exponents(0.5, 0.5, 1),
        Exponents(0, 0, 1),
    )  # fmt: skip
    c = classify(p, 2)
    assert c.r == theory_r(p, 2) == 1.0
    assert (c.stable, c.nontrivial, c.regime) == (True, False, "trivial")


@pytest.mark.parametrize("t", [-1.0, -0.5, 0.25, 1.0])
@pytest.mark.parametrize("p, depth", [(MUP, 3), (NTP, 2), (standard(1.0), 3)])
def test_symmetry_leaves_verdict_and_r_unchanged(p, depth, t):
    shifted = Parametrization(
        "shifted",
        "sgd",
        *(p.layer(r).shift(t, "sgd") for r in ("input", "hidden", "output", "vector")),
    )
    assert shifted.input.c == p.input.c - 2 * t
    before, after = classify(p, depth), classify(shifted, depth)
    assert after.regime == before.regime
    assert after.r == pytest.approx(before.r, abs=1e-12)
    # the formula as written in THEORY.md agrees, and is itself invariant
    assert theory_r(shifted, depth) == pytest.approx(before.r, abs=1e-12)
    assert theory_r(p, depth) == pytest.approx(before.r, abs=1e-12)


def test_per_layer_learning_rates_classify_like_their_global_form():
    # Table 3's multiplier-free muP has per-layer c; classification must agree.
    table3 = MUP.shifted({r: 0.0 for r in ("input", "hidden", "output", "vector")})
    assert (table3.input.c, table3.hidden.c, table3.output.c) == (-1.0, 0.0, 1.0)
    c = classify(table3, 3)
    assert c.regime == "feature_learning" and c.r == 0.0


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("n", [1.0, 2.0, 8.0, 64.0])
def test_spectral_equals_mup_for_fixed_input_and_output_dims(optimizer, n):
    spectral = SPECTRAL if optimizer == "sgd" else SPECTRAL_ADAM
    mup = MUP if optimizer == "sgd" else MUP_ADAM
    for role in ("input", "hidden", "output", "vector"):
        fi = 1.0 if role == "input" else n
        fo = 1.0 if role == "output" else n
        kw = {"fan_in_mult": fi, "fan_out_mult": fo}
        a = scaling(role, parametrization=spectral, **kw)
        b = scaling(role, parametrization=mup, **kw)
        assert a == pytest.approx(b), role
    if optimizer == "sgd":
        assert classify(SPECTRAL, 3).regime == "feature_learning"


# THEORY.md section 8 (TP5 Table 3), relative to a base of fan multiplier 1:
# init variance 1/fan_in (input, hidden), 1/fan_in^2 (output); SGD LR fan_out
# (input, biases), 1/fan_in (output), 1 (hidden); Adam LR 1 (input, biases),
# 1/fan_in (output, hidden).
@pytest.mark.parametrize("k", [0.5, 1.0, 4.0, 32.0])
def test_mup_scaling_is_tp5_table3(k):
    sgd = {r: scaling(r, fan_in_mult=k, fan_out_mult=k, parametrization=MUP) for r in
           ("hidden", "output")}  # fmt: skip
    sgd["input"] = scaling("input", fan_out_mult=k, parametrization=MUP)
    sgd["vector"] = scaling("vector", fan_out_mult=k, parametrization=MUP)
    adam = {
        r: scaling(r, fan_in_mult=k, fan_out_mult=k, parametrization=MUP_ADAM)
        for r in ("input", "hidden", "output", "vector")
    }
    assert sgd["input"].init_std == 1.0  # 1/fan_in with fan_in fixed
    assert sgd["hidden"].init_std == pytest.approx(k**-0.5)
    assert sgd["output"].init_std == pytest.approx(1 / k)
    assert sgd["input"].lr == pytest.approx(k)
    assert sgd["vector"].lr == pytest.approx(k)
    assert sgd["output"].lr == pytest.approx(1 / k)
    assert sgd["hidden"].lr == pytest.approx(1.0)
    assert adam["input"].lr == adam["vector"].lr == 1.0
    assert adam["hidden"].lr == pytest.approx(1 / k)
    assert adam["output"].lr == pytest.approx(1 / k)
    for role in adam:
        assert adam[role].multiplier == 1.0 and sgd[role].multiplier == 1.0
        assert adam[role].init_std == pytest.approx(sgd[role].init_std)


@pytest.mark.parametrize("k", [2.0, 16.0])
def test_table8_readout_is_table3_through_the_multiplier(k):
    """Multiplier theta: std / theta, SGD LR / theta^2, Adam LR / theta (sec. 8)."""
    for p, power in ((MUP, 2), (MUP_ADAM, 1)):
        t3 = scaling("output", fan_in_mult=k, parametrization=p)
        t8 = scaling("output", fan_in_mult=k, parametrization=p, multiplier_exponent=1)
        theta = t8.multiplier
        assert theta == pytest.approx(1 / k)
        assert t8.init_std == pytest.approx(t3.init_std / theta)
        assert t8.lr == pytest.approx(t3.lr / theta**power)


def test_rectangular_hidden_sgd_lr_follows_spectral_condition():
    s = scaling("hidden", fan_in_mult=2.0, fan_out_mult=8.0, parametrization=MUP)
    assert s.lr == pytest.approx(8.0 / 2.0)  # n_l / n_{l-1}
    s = scaling("hidden", fan_in_mult=2.0, fan_out_mult=8.0, parametrization=NTP)
    assert s.lr == pytest.approx(1 / 2.0)  # NTP: LR 1/n through the symmetry


def test_at_base_everything_is_one():
    for name, opt in itertools.product(["mup", "sp", "spectral"], ["sgd", "adam"]):
        p = get_parametrization(name, opt)
        for role in ("input", "hidden", "output", "vector"):
            s = scaling(role, parametrization=p, multiplier_exponent=1.0)
            assert (s.init_std, s.multiplier, s.lr, s.eps) == (1.0, 1.0, 1.0, 1.0)


def test_depth_mup_section_9():
    assert DEPTH_MUP.branch_multiplier(32, 2) == pytest.approx(0.25)
    assert DEPTH_MUP.lr_factor("sgd", 32, 2) == 1.0
    assert DEPTH_MUP.lr_factor("adam", 32, 2) == pytest.approx(0.25)
    s = scaling("hidden", parametrization=MUP_ADAM, depth_mult=4.0, depth=DEPTH_MUP)
    assert s.lr == pytest.approx(0.5)


def test_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="role must be one of"):
        MUP.layer("embedding")
    with pytest.raises(ValueError, match="one hidden layer only"):
        classify(MEAN_FIELD, 3)
    with pytest.raises(ValueError, match="Adam"):
        classify(MUP_ADAM)
    with pytest.raises(ValueError, match="no table for parametrization 'ntp'"):
        get_parametrization("ntp", "adam")
    with pytest.raises(ValueError, match="optimizer must be one of"):
        get_parametrization("mup", "lion")
    with pytest.raises(ValueError, match="positive"):
        DEPTH_MUP.branch_multiplier(0, 4)


@pytest.mark.parametrize("width", [256, 1024, 4096])
def test_param_scaling_absolute_values_table3(width):
    """THEORY.md section 8 with base width 256, input dim 32, output dim 10."""
    from tensorprograms.parametrization import param_scaling

    base = 256
    k = width / base
    hid = param_scaling("hidden", width, width, base, base, parametrization=MUP)
    inp = param_scaling("input", 32, width, 32, base, parametrization=MUP)
    out = param_scaling("output", width, 10, base, 10, parametrization=MUP)
    bias = param_scaling("vector", 1, width, 1, base, parametrization=MUP)
    assert hid.init_std**2 == pytest.approx(1 / width)  # var 1/fan_in
    assert inp.init_std**2 == pytest.approx(1 / 32)  # var 1/fan_in, fan_in fixed
    assert out.init_std**2 == pytest.approx(base / width**2)  # ~ 1/fan_in^2
    assert bias.init_std == 1.0
    assert (inp.lr_factor, bias.lr_factor) == pytest.approx((k, k))  # SGD: fan_out
    assert out.lr_factor == pytest.approx(1 / k)  # SGD: 1/fan_in
    assert hid.lr_factor == pytest.approx(1.0)
    adam = {
        r: param_scaling(r, width, width, base, base, parametrization=MUP_ADAM)
        for r in ("hidden", "output")
    }
    assert adam["hidden"].lr_factor == adam["output"].lr_factor == pytest.approx(1 / k)
    deep = param_scaling(
        "hidden", width, width, base, base, parametrization=MUP_ADAM, depth=64,
        base_depth=4,
    )  # fmt: skip
    assert deep.branch_multiplier == pytest.approx(0.25)
    assert deep.lr_factor == pytest.approx(0.25 / k)  # Adam: 1/sqrt(L / L0)
    with pytest.raises(ValueError, match="both depth and base_depth"):
        param_scaling("hidden", 8, 8, depth=4)
