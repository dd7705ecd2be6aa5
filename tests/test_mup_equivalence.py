"""Drop-in equivalence with Microsoft's ``mup`` 1.0.0 (skipped when not installed).

The same model code is built twice from the same seed, once with ``mup`` and once
with ``tensorprograms.mup``; set-up, outputs, per-parameter learning rates and a few
training steps must agree. Both libraries do the same float32 operations in the
same order (the readout may scale its weight instead of its input, which is exact
here because the width multipliers are powers of two), so parameters and outputs
agree exactly; after training steps we allow
float32 round-off (1e-6 relative), as the order of the per-group updates differs.
"""

import tempfile

import pytest
import torch
from mup_models import GPT, MLP
from torch import nn

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
@pytest.mark.parametrize("decay", [0.01, None])  # None: the optimizer's default
def test_same_learning_rates_and_training(cls, name, decay):
    ref, ours = build(mup, cls, 64), build(tpm, cls, 64)
    kw = {"lr": 0.05} if decay is None else {"lr": 0.05, "weight_decay": decay}
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

    train_and_compare(ref, opt_ref, ours, opt, inputs(cls))


def train_and_compare(ref, opt_ref, ours, opt, x, steps=3):
    """Train both models on the same batch; parameters agree to float32 round-off
    (the per-group updates are taken in another order)."""
    for model, o in ((ref, opt_ref), (ours, opt)):
        for _ in range(steps):
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


class Zoo(nn.Module):
    """PyTorch layers whose hidden weights are not ``nn.Linear``: attention's packed
    in-projection, a GRU, a custom parameter drawn like PyTorch's default, and a
    transposed convolution from a fixed number of channels into the width."""

    def __init__(self, width, readout):
        super().__init__()
        self.up = nn.ConvTranspose1d(2, width, 2, stride=2)
        self.attn = nn.MultiheadAttention(width, 2, batch_first=True)
        self.gru = nn.GRU(width, width, batch_first=True)
        self.mix = nn.Parameter(torch.randn(width, width) / width**0.5)
        self.out = readout(width, 3)

    def forward(self, x):  # x: (batch, 2, length)
        h = torch.relu(self.up(x)).transpose(1, 2)  # (batch, 2 length, width)
        h = h + self.attn(h, h, h)[0]
        h = self.gru(h)[0] @ self.mix.T
        return self.out(h.mean(1))


def test_same_init_and_training_for_non_linear_hidden_weights():
    """mup leaves every weight but a readout's alone, whatever layer drew it."""
    models = {}
    for lib in (mup, tpm):
        torch.manual_seed(0)
        model = Zoo(64, lib.MuReadout)
        lib.set_base_shapes(model, Zoo(16, lib.MuReadout), delta=Zoo(32, lib.MuReadout))
        models[lib] = model
    ref, ours = models[mup], models[tpm]
    for (n, p), (_, q) in zip(ref.named_parameters(), ours.named_parameters()):
        assert torch.equal(p, q), n
    x = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ref(x), ours(x))
    opt_ref = mup.MuAdam(ref.parameters(), lr=0.01)
    train_and_compare(ref, opt_ref, ours, tpm.MuAdam(ours.parameters(), lr=0.01), x)


def test_base_shapes_from_mup():
    """mup's make_base_shapes result (a dict of its InfShapes) and its YAML file,
    also when saved from a DistributedDataParallel-wrapped model ("module.")."""
    base, delta = MLP(16, mup.MuReadout), MLP(32, mup.MuReadout)
    wrapped = {"module." + n: s for n, s in mup.get_shapes(base).items()}
    wrapped_delta = {"module." + n: s for n, s in mup.get_shapes(delta).items()}
    with tempfile.TemporaryDirectory() as tmp:
        path, ddp_path = f"{tmp}/mlp.bsh", f"{tmp}/ddp.bsh"
        mup.make_base_shapes(base, delta, path)
        mup.make_base_shapes(wrapped, wrapped_delta, ddp_path)
        sources = [mup.make_base_shapes(base, delta), path, ddp_path]
        expected = build(tpm, MLP, 64)
        for source in sources:
            torch.manual_seed(0)
            model = tpm.set_base_shapes(MLP(64, tpm.MuReadout), source)
            assert tpm.get_state(model).infos == tpm.get_state(expected).infos
            for p, q in zip(model.parameters(), expected.parameters()):
                assert torch.equal(p, q)


def test_mup_submodule_names_and_helpers():
    """Names users import from mup's submodules, and the helpers they call."""
    from tensorprograms.mup.infshape import InfShape
    from tensorprograms.mup.layer import MuReadout, MuSharedReadout
    from tensorprograms.mup.optim import MuAdam, MuAdamW, MuSGD
    from tensorprograms.mup.shape import get_infshapes, set_base_shapes

    assert (MuReadout, MuSharedReadout) == (tpm.MuReadout, tpm.MuSharedReadout)
    assert (MuAdam, MuAdamW, MuSGD) == (tpm.MuAdam, tpm.MuAdamW, tpm.MuSGD)
    ref = build(mup, MLP, 64)
    torch.manual_seed(0)
    ours = MLP(64, MuReadout)
    set_base_shapes(ours, MLP(16, MuReadout), delta=MLP(32, MuReadout))
    theirs = mup.get_infshapes(ref)
    for name, shape in get_infshapes(ours).items():
        assert isinstance(shape, InfShape)
        assert shape.base_shape() == theirs[name].base_shape(), name
        assert shape.width_mult() == theirs[name].width_mult(), name
        assert shape.main_idx == theirs[name].main_idx, name
    assert tpm.normal_ is tpm.init.normal_

    # the readout's one-off rescaling, after set-up without rescaling
    torch.manual_seed(0)
    ref = mup.set_base_shapes(MLP(64, mup.MuReadout), MLP(16, mup.MuReadout))
    torch.manual_seed(0)
    ours = tpm.set_base_shapes(
        MLP(64, tpm.MuReadout), MLP(16, tpm.MuReadout), rescale_params=False
    )
    ours.out._rescale_parameters()
    for p, q in zip(ref.out.parameters(), ours.out.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(RuntimeError, match="already rescaled"):
        ours.out._rescale_parameters()
    with pytest.raises(RuntimeError, match="already rescaled"):
        build(tpm, MLP, 64).out._rescale_parameters()
    tpm.init.ones_(ours.ln.weight)
    with pytest.raises(ValueError, match="hidden weight 'fc2.weight'"):
        tpm.init.ones_(ours.fc2.weight)


def test_same_coord_data_as_mup():
    """mup.coord_check.get_coord_data's record, row for row (SGD, 2 seeds)."""
    from mup.coord_check import get_coord_data

    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(4))
    y = torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(5))
    frames = {}
    for lib, get in ((mup, get_coord_data), (tpm, tpm.get_coord_data)):
        models = {w: (lambda w=w, lib=lib: build(lib, MLP, w)) for w in (16, 64)}
        frames[lib] = get(
            models, [(x, y)], nsteps=3, nseeds=2, cuda=False, show_progress=False
        )
    ref, ours = frames[mup], frames[tpm]
    assert list(ours.columns) == list(ref.columns)
    assert ours[["width", "module", "t"]].equals(ref[["width", "module", "t"]])
    # the same float32 computations (tests above): equal up to the round-off of
    # three SGD steps
    torch.testing.assert_close(
        torch.tensor(ours["l1"].values),
        torch.tensor(ref["l1"].values),
        rtol=1e-5,
        atol=0,
    )
