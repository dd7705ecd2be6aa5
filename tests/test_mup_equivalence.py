"""Drop-in equivalence with Microsoft's ``mup`` 1.0.0 (skipped when not installed).

The same model code is built twice from the same seed, once with ``mup`` and once
with ``tensorprograms.mup``; set-up, outputs, per-parameter learning rates and a few
training steps must agree. Both libraries do the same float32 operations in the
same order (the readout may scale its weight instead of its input, which is exact
here because the width multipliers are powers of two), so parameters and outputs
agree exactly; after training steps we allow
float32 round-off (1e-6 relative), as the order of the per-group updates differs.
"""

import pytest
import torch
from mup_models import GPT, MLP

import tensorprograms.mup as tpm

mup = pytest.importorskip("mup")


def build(lib, cls, width, **kw):
    torch.manual_seed(0)
    model = cls(width, lib.MuReadout, **kw)
    base = cls(16, lib.MuReadout, **kw)
    delta = cls(32, lib.MuReadout, **kw)
    lib.set_base_shapes(model, base, delta=delta)
    return model


def inputs(cls):
    g = torch.Generator().manual_seed(1)
    if cls is MLP:
        return torch.randn(5, 6, generator=g)
    return torch.randint(0, 11, (3, 8), generator=g)


@pytest.mark.parametrize("cls", [MLP, GPT])
@pytest.mark.parametrize("width", [16, 64])
def test_same_init_and_outputs(cls, width):
    ref, ours = build(mup, cls, width), build(tpm, cls, width)
    for (n, p), (m, q) in zip(ref.named_parameters(), ours.named_parameters()):
        assert n == m
        assert torch.equal(p, q), n
    x = inputs(cls)
    assert torch.equal(ref(x), ours(x))


@pytest.mark.parametrize("cls", [MLP, GPT])
@pytest.mark.parametrize("name", ["MuSGD", "MuAdam", "MuAdamW"])
def test_same_learning_rates_and_training(cls, name):
    ref, ours = build(mup, cls, 64), build(tpm, cls, 64)
    kw = {"lr": 0.05, "weight_decay": 0.01}
    if name == "MuSGD":
        kw["momentum"] = 0.9
    opt_ref = getattr(mup, name)(ref.parameters(), **kw)
    opt = getattr(tpm, name)(ours.parameters(), **kw)

    ref_hp = {}
    by_id = {id(p): n for n, p in ref.named_parameters()}
    for g in opt_ref.param_groups:
        for p in g["params"]:
            ref_hp[by_id[id(p)]] = (g["lr"], g["weight_decay"])
    eff = tpm.effective_hparams(opt, ours)
    assert set(eff) == set(ref_hp)
    for n, (lr, wd) in ref_hp.items():
        assert eff[n]["lr"] == pytest.approx(lr, rel=1e-12), n
        assert eff[n]["weight_decay"] == pytest.approx(wd, rel=1e-12), n
    assert len({lr for lr, _ in ref_hp.values()}) > 1  # muP really scales
    # same partition into groups (for SGD, mup keeps fixed parameters apart from
    # hidden weights with the same factor 1; we merge groups with equal factors)
    if name != "MuSGD":
        ours_id = {id(p): n for n, p in ours.named_parameters()}
        part_ref = {
            frozenset(by_id[id(p)] for p in g["params"]) for g in opt_ref.param_groups
        }
        part = {
            frozenset(ours_id[id(p)] for p in g["params"]) for g in opt.param_groups
        }
        assert part == part_ref

    x = inputs(cls)
    for model, o in ((ref, opt_ref), (ours, opt)):
        for _ in range(3):
            o.zero_grad()
            model(x).square().mean().backward()
            o.step()
    for (n, p), (_, q) in zip(ref.named_parameters(), ours.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=n)


def test_tied_readout_differs_deliberately():
    """mup multiplies the tied embedding by sqrt(width_mult); we keep N(0, 1)."""
    ref = build(mup, GPT, 64, shared=mup.MuSharedReadout)
    ours = build(tpm, GPT, 64, shared=tpm.MuSharedReadout)
    ratio = ref.tok.weight.std() / ours.tok.weight.std()
    assert ratio.item() == pytest.approx((64 / 16) ** 0.5, rel=1e-5)


INITS = [
    ("normal_", {"std": 0.02}),
    ("uniform_", {"a": -0.1, "b": 0.1}),
    ("kaiming_normal_", {"nonlinearity": "relu"}),
    ("kaiming_uniform_", {"a": 5**0.5, "mode": "fan_out"}),
    ("xavier_normal_", {"gain": 2.0}),
    ("xavier_uniform_", {}),
]


@pytest.mark.parametrize("fn, kw", INITS)
def test_same_init_functions(fn, kw):
    ref, ours = build(mup, MLP, 64), build(tpm, MLP, 64)
    for name in ("fc1.weight", "fc2.weight", "out.weight", "fc2.bias"):
        if fn.startswith(("kaiming", "xavier")) and name.endswith("bias"):
            continue
        p, q = ref.get_parameter(name), ours.get_parameter(name)
        torch.manual_seed(7)
        getattr(mup.init, fn)(p, **kw)
        torch.manual_seed(7)
        getattr(tpm.init, fn)(q, **kw)
        torch.testing.assert_close(p, q, rtol=1e-6, atol=0, msg=name)
