"""Optimizer options, generic optimizers, readout variants, attention, Depth-muP."""

import math

import pytest
import torch
import torch.nn.functional as F
from mup_models import MLP
from torch import nn

import tensorprograms.mup as tpm

X = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))


def setup(width=64):
    torch.manual_seed(0)
    return tpm.set_base_shapes(MLP(width, tpm.MuReadout), MLP(16, tpm.MuReadout))


@pytest.mark.parametrize("mode", ["inverse_lr", "none"])
def test_adamw_decoupled_weight_decay(mode):
    """With zero gradients AdamW only decays: p <- p (1 - lr_eff wd_eff)."""
    model = setup()
    lr, wd = 0.1, 0.2
    opt = tpm.MuAdamW(model, lr=lr, weight_decay=wd, weight_decay_scaling=mode)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    lr_f = {r.name: r.lr_factor for r in tpm.describe(model, "adam")}
    assert lr_f["fc2.weight"] == pytest.approx(1 / 4)
    for n, p in model.named_parameters():
        # inverse_lr: every parameter decays by lr * wd per step, whatever its width;
        # none: by its own learning rate times wd
        shrink = lr * wd if mode == "inverse_lr" else lr * lr_f[n] * wd
        torch.testing.assert_close(p.detach(), before[n] * (1 - shrink), msg=n)


def test_eps_scaling_factors():
    rows = {r.name: r for r in tpm.describe(setup(), "adam", eps_scaling=True)}
    assert rows["fc2.weight"].eps_factor == pytest.approx(1 / 4)
    assert rows["fc1.weight"].eps_factor == pytest.approx(1 / 4)
    assert rows["out.weight"].eps_factor == pytest.approx(1 / 4)  # multiplier form
    assert rows["out.bias"].eps_factor == 1.0  # fixed
    opt = tpm.MuAdam(setup(), lr=0.1, eps=1e-3, eps_scaling=True)
    eff = tpm.effective_hparams(opt)
    assert eff["fc2.weight"]["eps"] == pytest.approx(1e-3 / 4)


def test_any_torch_optimizer_and_user_groups():
    model = setup()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    groups = [
        {"params": decay, "weight_decay": 0.1},
        {"params": no_decay, "weight_decay": 0.0, "lr": 0.5},
    ]
    opt = tpm.mu_optimizer(torch.optim.RMSprop, groups, "adam", lr=0.01)
    eff = tpm.effective_hparams(opt)
    assert eff["fc2.weight"]["lr"] == pytest.approx(0.01 / 4)
    assert eff["fc2.weight"]["weight_decay"] == pytest.approx(0.1 * 4)
    assert eff["fc2.bias"]["lr"] == pytest.approx(0.5)
    assert eff["fc2.bias"]["weight_decay"] == 0.0
    model(X).sum().backward()
    opt.step()  # runs
    plain = tpm.mu_param_groups(model, "sgd", lr=1.0)
    assert {g["mu_lr_factor"] for g in plain} == {4.0, 1.0}


def test_describe_rows():
    rows = {r.name: r for r in tpm.describe(setup(), "sgd")}
    assert rows["fc1.weight"].role == "input"
    assert rows["fc2.weight"].role == "hidden"
    assert rows["ln.weight"].role == "vector"
    assert rows["out.bias"].role == "fixed"
    assert rows["out.weight"].multiplier == pytest.approx(1 / 4)
    assert rows["fc2.weight"].base_shape == (16, 16)
    assert rows["fc1.weight"].base_shape == (16, None)
    assert rows["fc2.weight"].std == pytest.approx(1 / math.sqrt(3 * 64), rel=0.1)


def test_conv_readout_and_conv_net():
    def net(c):
        return nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1),
            nn.ReLU(),
            tpm.MuReadoutConv2d(c, 5, 1),
        )

    torch.manual_seed(0)
    model = tpm.set_base_shapes(net(32), net(8))
    info = tpm.get_state(model).infos
    assert info["2.weight"].role is tpm.Role.HIDDEN
    assert info["4.weight"].role is tpm.Role.OUTPUT
    assert model[4].width_mult() == 4.0
    x = torch.randn(2, 3, 6, 6)
    h = model[:4](x)
    expected = F.conv2d(h / 4, model[4].weight, model[4].bias)
    torch.testing.assert_close(model(x), expected)
    eff = tpm.effective_hparams(tpm.MuAdam(model, lr=1.0))
    assert eff["2.weight"]["lr"] == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="'1.weight'.*use MuReadout"):
        plain = nn.Sequential(nn.Conv2d(3, 32, 1), nn.Conv2d(32, 5, 1))
        tpm.set_base_shapes(
            plain, nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 5, 1))
        )


def test_readout_zero_init_and_output_mult():
    head = tpm.MuReadout(16, 3, readout_zero_init=True, output_mult=2.0)
    assert head.weight.abs().sum() == 0 and head.bias.abs().sum() == 0
    model = nn.Sequential(nn.Linear(2, 16), tpm.MuReadout(16, 3, output_mult=2.0))
    base = nn.Sequential(nn.Linear(2, 4), tpm.MuReadout(4, 3))
    tpm.set_base_shapes(model, base)
    h = torch.randn(5, 16)
    expected = h @ model[1].weight.T * (2.0 / 4) + model[1].bias
    torch.testing.assert_close(model[1](h), expected)


def test_mu_attention_is_one_over_d():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 32, generator=g) for _ in range(3))
    out = tpm.mu_attention(q, k, v, base_d_head=8)
    logits = q @ k.transpose(-1, -2) * math.sqrt(8) / 32
    torch.testing.assert_close(out, torch.softmax(logits, -1) @ v)
    # at the base head dimension: PyTorch's 1/sqrt(d)
    q8, k8, v8 = q[..., :8], k[..., :8], v[..., :8]
    torch.testing.assert_close(
        tpm.mu_attention(q8, k8, v8, base_d_head=8),
        F.scaled_dot_product_attention(q8, k8, v8),
    )
    qkv = nn.Linear(4, 12)
    tpm.zero_query_(qkv.weight, rows=4, bias=qkv.bias)
    assert qkv(torch.randn(3, 4))[:, :4].abs().sum() == 0


def test_depth_mup_branch_multiplier():
    branch = nn.Linear(4, 4)
    block = tpm.MuResidual(branch, depth=9, base_depth=1, alpha=0.5)
    x = torch.randn(3, 4)
    torch.testing.assert_close(block(x), x + 0.5 / 3 * branch(x))
    assert tpm.MuResidual(branch, depth=4)(x).sub(x + branch(x)).abs().max() == 0


def test_code_written_for_mup_runs_by_changing_the_import(tmp_path):
    import tensorprograms.mup as mup  # was: import mup
    from tensorprograms.mup import MuReadout, MuSGD, make_base_shapes, set_base_shapes

    class MyModel(nn.Module):
        def __init__(self, width, d_out=10):
            super().__init__()
            self.fc = nn.Linear(5, width)
            self.hidden = nn.Linear(width, width)
            self.readout = MuReadout(width, d_out)

        def forward(self, x):
            return self.readout(torch.relu(self.hidden(torch.relu(self.fc(x)))))

    base_model, delta_model = MyModel(width=1), MyModel(width=2)
    model = MyModel(width=100)
    set_base_shapes(model, base_model, delta=delta_model)
    path = str(tmp_path / "shapes.bsh")
    make_base_shapes(mup.get_shapes(base_model), mup.get_shapes(delta_model), path)
    same = set_base_shapes(MyModel(width=100), path)
    assert same.readout.width_mult() == model.readout.width_mult() == 100.0
    for param in model.parameters():
        mup.init.uniform_(param, -0.1, 0.1)
    # hidden: bounds / sqrt(width_mult = 100); input weights keep +-0.1
    assert model.hidden.weight.abs().max() <= 0.1 / math.sqrt(100)
    assert model.fc.weight.abs().max() > 0.05
    optimizer = MuSGD(model.parameters(), lr=0.1)
    model(torch.randn(3, 5)).sum().backward()
    optimizer.step()


def test_tied_readout_with_bias():
    """One bias entry per vocabulary item, drawn width-independently (Table 3)."""

    class Tied(nn.Module):
        def __init__(self, width, vocab=50):
            super().__init__()
            self.emb = nn.Embedding(vocab, width)
            self.head = tpm.MuSharedReadout(self.emb.weight)  # bias=True

        def forward(self, idx):
            return self.head(self.emb(idx))

    torch.manual_seed(0)
    model = tpm.set_base_shapes(Tied(64), Tied(16))
    head = model.head
    assert head.bias.shape == (50,) and head.weight is model.emb.weight
    assert (head.in_features, head.out_features) == (64, 50)
    idx = torch.tensor([[1, 7, 3]])
    h = model.emb(idx)
    torch.testing.assert_close(model(idx), F.linear(h / 4, model.emb.weight, head.bias))
    # PyTorch's bound 1/sqrt(64) times sqrt(width_mult): 1/sqrt(base width 16);
    # 50 uniform draws all below half the bound has probability 2^-50
    assert head.bias.abs().max() <= 16**-0.5
    assert head.bias.abs().max() > 64**-0.5
    assert "bias" in dict(head.named_parameters())
