"""The muP set-up against THEORY.md section 8 (TP5 Table 3), checked independently.

Two kinds of oracle: the init statistics measured at several widths against
PyTorch's known default init (kaiming-uniform with bound 1/sqrt(fan_in), std =
bound / sqrt(3)) and Table 3; and training dynamics compared with a model written
directly in Table 3's multiplier-free form (plain ``nn.Linear`` readout with init
variance ~ 1/fan_in^2 and per-layer learning rates typed in from the table).
"""

import copy
import math

import pytest
import torch
from mup_models import MLP
from torch import nn

import tensorprograms.mup as tpm

BASE = 32
X = torch.randn(16, 6, generator=torch.Generator().manual_seed(5))
Y = torch.randn(16, 3, generator=torch.Generator().manual_seed(6))


def setup(width, parametrization="mup", d_out=3, seed=0):
    torch.manual_seed(seed)
    model = MLP(width, tpm.MuReadout, d_out=d_out)
    base = MLP(BASE, tpm.MuReadout, d_out=d_out)
    delta = MLP(2 * BASE, tpm.MuReadout, d_out=d_out)
    return tpm.set_base_shapes(
        model, base, delta=delta, parametrization=parametrization
    )


def uniform_std(bound):
    return bound / math.sqrt(3)


@pytest.mark.parametrize("width", [32, 128, 512])
def test_init_stds_follow_table3(width):
    k = width / BASE
    model = setup(width, d_out=64)
    # (tensor, expected std, number of samples)
    cases = {
        "hidden weight var 1/fan_in": (model.fc2.weight, uniform_std(width**-0.5)),
        "input weight var 1/fan_in (fixed)": (model.fc1.weight, uniform_std(6**-0.5)),
        "hidden bias width-independent": (model.fc2.bias, uniform_std(BASE**-0.5)),
        # effective readout weight W / width_mult: variance ~ 1/fan_in^2, equal to
        # PyTorch's 1/(3 fan_in) at the base width
        "readout var 1/fan_in^2": (
            model.out.weight / model.out.width_mult(),
            uniform_std(BASE**-0.5) / k,
        ),
    }
    for what, (t, expected) in cases.items():
        n = t.numel()
        # uniform: Var(sample variance) = 0.8 sigma^4 / n -> std rel. s.e. sqrt(0.2/n)
        tol = 5 * math.sqrt(0.2 / n)
        assert t.std().item() == pytest.approx(expected, rel=tol), what
    assert model.out.width_mult() == k


def table3_reference(model, optimizer, lr, eps=1e-8):
    """Plain PyTorch model in Table 3's form with Table 3's learning rates."""
    k = model.out.width_mult()
    ref = copy.deepcopy(model)
    out = nn.Linear(ref.out.in_features, ref.out.out_features)
    with torch.no_grad():
        out.weight.copy_(model.out.weight / k)  # Table 3: no multiplier
        out.bias.copy_(model.out.bias)
    ref.out = out
    biases_gains = [ref.fc1.bias, ref.fc2.bias, ref.ln.weight, ref.ln.bias]
    if optimizer == "sgd":  # SGD LR: input & biases fan_out, output 1/fan_in, hidden 1
        groups = [
            {"params": [ref.fc1.weight, *biases_gains], "lr": lr * k},
            {"params": [ref.fc2.weight, ref.fc3.weight], "lr": lr},
            {"params": [ref.out.weight], "lr": lr / k},
            {"params": [ref.out.bias], "lr": lr},
        ]
        return ref, torch.optim.SGD(groups, lr=lr)
    # Adam LR: input & biases 1, output 1/fan_in, hidden 1/fan_in; eps n^-d with the
    # gradient entries: Theta(1/n) except the readout's Theta(1) (TP4b, derived)
    groups = [
        {"params": [ref.fc1.weight, *biases_gains], "lr": lr, "eps": eps / k},
        {"params": [ref.fc2.weight, ref.fc3.weight], "lr": lr / k, "eps": eps / k},
        {"params": [ref.out.weight], "lr": lr / k, "eps": eps},
        {"params": [ref.out.bias], "lr": lr, "eps": eps},
    ]
    return ref, torch.optim.Adam(groups, lr=lr)


def train(model, opt, steps=4):
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(X), Y).backward()
        opt.step()


@pytest.mark.parametrize("width", [32, 256])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_equals_table3_model(width, optimizer):
    model = setup(width)
    lr = 0.05
    ref, ref_opt = table3_reference(model, optimizer, lr, eps=1e-4)
    torch.testing.assert_close(model(X), ref(X), rtol=1e-5, atol=1e-6)
    if optimizer == "sgd":
        opt = tpm.MuSGD(model, lr=lr)
    else:  # a large eps (1e-4) so that its scaling matters
        opt = tpm.MuAdam(model, lr=lr, eps=1e-4, eps_scaling=True)
    train(model, opt)
    train(ref, ref_opt)
    # different order of float32 products (x/k then W, vs x then W/k), 4 steps
    torch.testing.assert_close(model(X), ref(X), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(model(X), setup(width)(X), atol=1e-3)  # it trained


def test_sp_parametrization_is_plain_pytorch_at_any_width():
    width = 128
    model = setup(width, parametrization="sp")
    torch.manual_seed(0)
    plain = MLP(width, lambda i, o, **kw: nn.Linear(i, o))
    torch.testing.assert_close(model(X), plain(X), rtol=1e-5, atol=1e-6)
    for mu, torch_opt in ((tpm.MuSGD, torch.optim.SGD), (tpm.MuAdam, torch.optim.Adam)):
        m, p = copy.deepcopy(model), copy.deepcopy(plain)
        train(m, mu(m, lr=0.01))
        train(p, torch_opt(p.parameters(), lr=0.01))
        torch.testing.assert_close(m(X), p(X), rtol=1e-4, atol=1e-5)


def test_ntp_learning_rates_are_tp4_ntp_through_the_symmetry():
    k = 8.0
    model = setup(int(BASE * k), parametrization="ntp")
    eff = tpm.effective_hparams(tpm.MuSGD(model, lr=1.0))
    # NTP (a, b, c) = input (0, 0, 0), hidden and output (1/2, 0, 0): moved to
    # multiplier 0 (hidden) the LR is n^-1; moved to the readout's multiplier 1/n,
    # (1, -1/2, -1): LR n on the stored weight.
    assert eff["fc1.weight"]["lr"] == pytest.approx(1.0)
    assert eff["fc2.weight"]["lr"] == pytest.approx(1 / k)
    assert eff["out.weight"]["lr"] == pytest.approx(k)
    assert eff["fc2.bias"]["lr"] == pytest.approx(1.0)
    # init: hidden weights as PyTorch, effective readout ~ N(0, 1/fan_in) like SP
    eff_std = (model.out.weight / k).std().item()
    assert eff_std == pytest.approx(uniform_std((BASE * k) ** -0.5), rel=0.3)


@pytest.mark.parametrize("kind, factor", [("MuSGD", 1.0), ("MuAdam", 0.5)])
def test_depth_mup_learning_rates(kind, factor):
    def net(width, depth):
        blocks = [
            tpm.MuResidual(nn.Sequential(nn.ReLU(), nn.Linear(width, width)), depth, 2)
            for _ in range(depth)
        ]
        return nn.Sequential(nn.Linear(4, width), *blocks, tpm.MuReadout(width, 1))

    model = tpm.set_base_shapes(net(32, 8), net(16, 8))
    assert model[1].multiplier == pytest.approx(0.5)  # sqrt(2 / 8)
    eff = tpm.effective_hparams(getattr(tpm, kind)(model, lr=1.0))
    width_factor = 0.5 if kind == "MuAdam" else 1.0  # hidden: Adam 1/k, SGD 1
    assert eff["1.branch.1.weight"]["lr"] == pytest.approx(factor * width_factor)
    assert eff["0.weight"]["lr"] == pytest.approx(1.0 if kind == "MuAdam" else 2.0)
    assert tpm.get_state(model).infos["3.branch.1.bias"].depth_mult == 4.0


@pytest.mark.parametrize(
    "fn, kw",
    [
        ("normal_", {"std": 0.5}),
        ("uniform_", {"a": -1.0, "b": 1.0}),
        ("trunc_normal_", {}),
        ("kaiming_normal_", {"mode": "fan_out"}),
        ("kaiming_uniform_", {"a": 5**0.5}),
        ("xavier_normal_", {}),
        ("xavier_uniform_", {"gain": 0.5}),
    ],
)
def test_init_helpers_equal_torch_at_base_and_scale_hidden(fn, kw):
    model = setup(BASE)
    torch.manual_seed(1)
    ours = getattr(tpm.init, fn)(model.fc2.weight, **kw).detach().clone()
    torch.manual_seed(1)
    ref = getattr(torch.nn.init, fn)(torch.empty(BASE, BASE), **kw)
    assert torch.equal(ours, ref)
    wide = setup(8 * BASE)
    getattr(tpm.init, fn)(wide.fc2.weight, **kw)
    getattr(tpm.init, fn)(wide.fc1.weight, **kw)
    # hidden: std at base shapes / sqrt(8); input weight: as at base (fan_in fixed)
    n = wide.fc2.weight.numel()
    assert wide.fc2.weight.std().item() == pytest.approx(
        ref.std().item() / math.sqrt(8), rel=5 * math.sqrt(1 / n) + 5 / BASE
    )


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_plain_linear_readout_gets_table3_without_multiplier(optimizer):
    """do_assert=False keeps an nn.Linear readout: Table 3 applies as written."""

    def net(width):
        return MLP(width, lambda i, o, **kw: nn.Linear(i, o))

    torch.manual_seed(0)
    model = tpm.set_base_shapes(net(256), net(BASE), do_assert=False)
    torch.manual_seed(0)
    mu = setup(256)  # same draws, MuReadout form
    with torch.no_grad():  # Table 3 init of the plain readout = effective MuReadout
        torch.testing.assert_close(model.out.weight, mu.out.weight / 8)
    ref, ref_opt = table3_reference(mu, optimizer, 0.05, eps=1e-4)
    if optimizer == "sgd":
        opt = tpm.MuSGD(model, lr=0.05)
    else:
        opt = tpm.MuAdam(model, lr=0.05, eps=1e-4, eps_scaling=True)
    train(model, opt)
    train(ref, ref_opt)
    torch.testing.assert_close(model(X), ref(X), rtol=1e-4, atol=1e-5)
