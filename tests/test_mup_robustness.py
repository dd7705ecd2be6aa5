"""muP set-up survives copies, checkpoints, compile, DDP, FSDP and LR schedulers."""

import copy
import io
import json
import math
import pickle
import tempfile

import pytest
import torch
import torch.multiprocessing as mp
from mup_dist_worker import STEPS, build, data, train
from mup_models import MLP
from torch import nn

import tensorprograms.mup as tpm

X = torch.randn(5, 6, generator=torch.Generator().manual_seed(3))


def setup(width=64, seed=0):
    torch.manual_seed(seed)
    model = MLP(width, tpm.MuReadout)
    return tpm.set_base_shapes(
        model, MLP(16, tpm.MuReadout), delta=MLP(32, tpm.MuReadout)
    )


def hparams(model, **kw):
    return tpm.effective_hparams(tpm.MuAdam(model.parameters(), lr=0.01, **kw), model)


def test_mu_lrs_really_differ():
    hp = hparams(setup())
    assert hp["fc2.weight"]["lr"] == pytest.approx(0.01 / 4)  # hidden: 1/width_mult
    assert hp["out.weight"]["lr"] == pytest.approx(0.01)


@pytest.mark.parametrize(
    "clone",
    [
        copy.deepcopy,
        lambda m: pickle.loads(pickle.dumps(m)),
        lambda m: _torch_roundtrip(m),
    ],
    ids=["deepcopy", "pickle", "torch.save"],
)
def test_copies_keep_mup(clone):
    model = setup()
    other = clone(model)
    # code written for mup reads p.infshape directly: present on every copy
    for (n, p), q in zip(other.named_parameters(), model.parameters()):
        assert p is not q and p.infshape == q.infshape, n
    assert torch.equal(other(X), model(X))
    assert hparams(other) == hparams(model)
    assert other.fc2.weight.infshape.width_mult() == 4.0  # re-attached for mup code
    assert other.out.width_mult() == 4.0
    tpm.set_base_shapes(other, MLP(16, tpm.MuReadout), delta=MLP(32, tpm.MuReadout))
    assert torch.equal(other(X), model(X))  # idempotent on the copy too


def _torch_roundtrip(model):
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def test_state_dict_into_fresh_model():
    model = setup(seed=0)
    fresh = setup(seed=123)
    assert not torch.equal(fresh(X), model(X))
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(X), model(X))
    assert hparams(fresh) == hparams(model)


def test_base_shapes_file_replaces_base_model(tmp_path):
    path = str(tmp_path / "mlp.bsh")
    tpm.make_base_shapes(MLP(16, tpm.MuReadout), MLP(32, tpm.MuReadout), savefile=path)
    with open(path) as f:
        assert json.load(f)["fc2.weight"] == [16, 16]
    torch.manual_seed(0)
    from_file = tpm.set_base_shapes(MLP(64, tpm.MuReadout), path)
    model = setup()
    for p, q in zip(from_file.parameters(), model.parameters()):
        assert torch.equal(p, q)
    assert hparams(from_file) == hparams(model)
    yaml = pytest.importorskip("yaml")  # mup reads the file as YAML
    with open(path) as f:
        assert yaml.safe_load(f)["fc1.weight"] == [16, None]


def test_torch_compile_keeps_multipliers_and_groups():
    # aot_eager traces through dynamo and AOTAutograd with fake tensors (where
    # tensor attributes are lost) without needing a C compiler; inductor is covered
    # by benchmarks/mup_overhead.py.
    model = setup()
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, backend="aot_eager")
    torch.testing.assert_close(compiled(X), eager(X), rtol=1e-6, atol=1e-7)
    assert hparams(compiled) == hparams(eager)
    opt_c = tpm.MuAdam(compiled, lr=0.01)
    opt_e = tpm.MuAdam(eager, lr=0.01)
    for m, o in ((compiled, opt_c), (eager, opt_e)):
        for _ in range(2):
            o.zero_grad()
            m(X).square().mean().backward()
            o.step()
    torch.testing.assert_close(compiled(X), eager(X), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def dist_result():
    with tempfile.TemporaryDirectory() as tmpdir:
        from mup_dist_worker import run

        mp.spawn(run, args=(2, tmpdir), nprocs=2, join=True)
        return torch.load(f"{tmpdir}/result.pt", weights_only=False)


@pytest.fixture(scope="module")
def reference():
    """Single process, full batch: what 2-process data parallelism must match."""
    model = build()
    opt = tpm.MuAdam(model, lr=0.01)
    hp = tpm.effective_hparams(opt)
    x, y = data()
    train(model, opt, x, y)
    return model, hp, x


def test_ddp_two_processes(dist_result, reference):
    model, hp, x = reference
    assert dist_result["ddp_hparams"] == hp
    assert dist_result["ddp_hparams_tensors"] == hp
    # all-reduce sums in another order than the full batch: float32 round-off
    for name, value in model.state_dict().items():
        torch.testing.assert_close(dist_result["ddp_params"][name], value, msg=name)
    torch.testing.assert_close(dist_result["ddp_output"], model(x).detach())
    assert STEPS == 3


@pytest.mark.parametrize("key", ["fsdp", "fsdp1"])
def test_fsdp_two_processes(dist_result, reference, key):
    """fsdp: FSDP2 ``fully_shard`` (DTensor parameters); fsdp1: flat parameters."""
    if f"{key}_error" in dist_result:
        pytest.skip(
            f"{key} on CPU is not supported here: {dist_result[key + '_error']}"
        )
    model, hp, x = reference
    assert dist_result[f"{key}_hparams"] == hp
    for name, value in model.named_parameters():
        torch.testing.assert_close(dist_result[f"{key}_params"][name], value, msg=name)
    torch.testing.assert_close(dist_result[f"{key}_output"], model(x).detach())


def _ratios(opt):
    eff = tpm.effective_hparams(opt)
    return {n: v["lr"] / eff["out.weight"]["lr"] for n, v in eff.items()}


SCHEDULERS = {
    "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5),
    "LambdaLR": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda t: 1 / (1 + t)),
    "OneCycleLR": lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=0.3, total_steps=10
    ),
    "CyclicLR": lambda o: torch.optim.lr_scheduler.CyclicLR(
        o, base_lr=0.01, max_lr=0.1, step_size_up=2, cycle_momentum=False
    ),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("kind", ["MuSGD", "MuAdamW"])
def test_lr_schedulers_keep_the_ratios(name, kind):
    model = setup()
    opt = getattr(tpm, kind)(model.parameters(), lr=0.1)
    ratios = _ratios(opt)
    assert len(set(ratios.values())) > 1
    sched = SCHEDULERS[name](opt)
    for _ in range(3):
        opt.zero_grad()
        model(X).square().mean().backward()
        opt.step()
        sched.step()
        assert _ratios(opt) == pytest.approx(ratios)


def test_manual_absolute_lr_keeps_ratios_and_is_what_the_step_uses():
    model = setup()
    opt = tpm.MuSGD(model.parameters(), lr=0.1)
    for g in opt.param_groups:
        g["lr"] = 0.02  # absolute value, as a hand-written schedule would set
    eff = tpm.effective_hparams(opt)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.zero_grad()
    model(X).square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        expected = before[n] - eff[n]["lr"] * grads[n]  # plain SGD: p - lr g
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-7, msg=n)
    assert eff["fc1.weight"]["lr"] == pytest.approx(0.02 * 4)  # input: x width_mult
    assert opt.param_groups[0]["lr"] == 0.02  # restored after the step


def test_step_that_raises_does_not_leave_scaled_values():
    model = setup()
    opt = tpm.MuAdam(model.parameters(), lr=0.1)

    def bad_closure():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        opt.step(bad_closure)
    before = tpm.effective_hparams(opt)
    opt.step()  # the pre-hook restores the stale values first
    assert tpm.effective_hparams(opt) == before
    assert {g["lr"] for g in opt.param_groups} == {0.1}


def test_optimizer_state_dict_roundtrip():
    model = setup()
    opt = tpm.MuAdam(model, lr=0.01)
    model(X).sum().backward()
    opt.step()
    new = tpm.MuAdam(model, lr=0.5)
    new.load_state_dict(opt.state_dict())
    assert tpm.effective_hparams(new) == tpm.effective_hparams(opt)


def test_idempotent_and_rebasable():
    model = setup()
    snapshot = copy.deepcopy(model.state_dict())
    tpm.set_base_shapes(model, MLP(16, tpm.MuReadout), delta=MLP(32, tpm.MuReadout))
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshot[k]), k
    # re-basing on 8 equals setting up on 8 directly
    torch.manual_seed(0)
    direct = MLP(64, tpm.MuReadout)
    tpm.set_base_shapes(direct, MLP(8, tpm.MuReadout))
    tpm.set_base_shapes(model, MLP(8, tpm.MuReadout))
    for (n, p), q in zip(model.named_parameters(), direct.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=0, msg=n)
    assert model.out.width_mult() == 8.0


def test_no_width_difference_is_a_clear_error():
    with pytest.raises(ValueError, match="no width can be inferred"):
        tpm.make_base_shapes(MLP(16, tpm.MuReadout), MLP(16, tpm.MuReadout))
    with pytest.raises(ValueError, match="no width can be inferred"):
        tpm.set_base_shapes(
            MLP(64, tpm.MuReadout), MLP(16, tpm.MuReadout), delta=MLP(16, tpm.MuReadout)
        )


def test_model_at_base_width_is_plain_pytorch():
    torch.manual_seed(0)
    plain = MLP(16, tpm.MuReadout)
    torch.manual_seed(0)
    model = tpm.set_base_shapes(
        MLP(16, tpm.MuReadout), MLP(16, tpm.MuReadout), delta=MLP(32, tpm.MuReadout)
    )
    plain.out._mu_width_mult = 1.0  # a MuReadout at multiplier 1 is nn.Linear
    for p, q in zip(plain.parameters(), model.parameters()):
        assert torch.equal(p, q)
    opt_plain = torch.optim.AdamW(plain.parameters(), lr=0.01, weight_decay=0.01)
    opt = tpm.MuAdamW(model.parameters(), lr=0.01, weight_decay=0.01)
    for m, o in ((plain, opt_plain), (model, opt)):
        for _ in range(3):
            o.zero_grad()
            m(X).square().mean().backward()
            o.step()
    assert torch.equal(plain(X), model(X))
    linear = nn.Linear(16, 3)
    linear.load_state_dict(model.out.state_dict())
    h = torch.randn(4, 16)
    assert torch.equal(linear(h), model.out(h))


def test_errors_name_the_parameter():
    class Bad(nn.Module):
        def __init__(self, w):
            super().__init__()
            self.fc = nn.Linear(3, w)
            self.head = nn.Linear(w, 2)  # should be MuReadout

    with pytest.raises(ValueError, match="'head.weight'.*use MuReadout"):
        tpm.set_base_shapes(Bad(32), Bad(8))

    class TiedLinear(nn.Module):  # mup raises here too
        def __init__(self, w):
            super().__init__()
            self.emb = nn.Embedding(11, w)
            self.head = nn.Linear(w, 11, bias=False)
            self.head.weight = self.emb.weight  # should be MuSharedReadout

    with pytest.raises(ValueError, match="'emb.weight'.*MuSharedReadout"):
        tpm.set_base_shapes(TiedLinear(32), TiedLinear(8))

    class Odd(nn.Module):
        def __init__(self, w):
            super().__init__()
            self.fc = nn.Linear(w, w)
            self.kernel = nn.Parameter(torch.zeros(2, w, w))

    with pytest.raises(
        ValueError, match="cannot infer the muP role of parameter 'kernel'"
    ):
        tpm.set_base_shapes(Odd(32), Odd(8))
    odd = tpm.set_base_shapes(Odd(32), Odd(8), roles={"kernel": "hidden"})
    assert tpm.get_state(odd).infos["kernel"].role is tpm.Role.HIDDEN

    with pytest.raises(ValueError, match="only in model: \\['extra'\\]"):
        model = MLP(32, tpm.MuReadout)
        model.extra = nn.Parameter(torch.zeros(3))
        tpm.set_base_shapes(model, MLP(16, tpm.MuReadout))
    with pytest.raises(RuntimeError, match="call tensorprograms.mup.set_base_shapes"):
        MLP(32, tpm.MuReadout)(X)
    with pytest.raises(ValueError, match="belongs to no model set up"):
        tpm.MuAdam(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="weight_decay_scaling must be one of"):
        tpm.MuAdamW(setup(), lr=0.1, weight_decay_scaling="mup")


def test_tied_readout_init_is_width_independent():
    from mup_models import GPT

    stds = []
    for width in (16, 64, 256):
        torch.manual_seed(0)
        model = GPT(width, tpm.MuReadout, shared=tpm.MuSharedReadout)
        tpm.set_base_shapes(model, GPT(16, tpm.MuReadout, shared=tpm.MuSharedReadout))
        assert model.head.weight is model.tok.weight
        info = tpm.get_state(model).infos["tok.weight"]
        if width > 16:
            assert info.role is tpm.Role.OUTPUT and info.tied
        stds.append(model.tok.weight.std().item())
    # N(0, 1) entries; 11 * width samples: standard error of the std < 1/sqrt(2 * 176)
    for s in stds:
        assert s == pytest.approx(1.0, abs=4 / math.sqrt(2 * 11 * 16))


@pytest.mark.parametrize(
    "clone", [copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o))]
)
def test_optimizer_copies_keep_the_factors(clone):
    model = setup()
    opt = tpm.MuSGD(model, lr=0.1)
    assert isinstance(opt, torch.optim.SGD)
    other = clone(opt)
    assert tpm.effective_hparams(other) == tpm.effective_hparams(opt)
    # the copy's step really applies the factors: p <- p - lr_eff g
    eff = tpm.effective_hparams(other)
    names = [n for g in other.param_groups for n in g["mu_names"]]
    params = [p for g in other.param_groups for p in g["params"]]
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.ones_like(p)
    other.step()
    for n, p, b in zip(names, params, before):
        torch.testing.assert_close(p.detach(), b - eff[n]["lr"], msg=n)
    assert len({eff[n]["lr"] for n in names}) > 1
