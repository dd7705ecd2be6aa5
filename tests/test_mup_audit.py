"""The audit: roles, factors, and warnings about what breaks transfer."""

import pytest
import torch
from torch import nn

import tensorprograms.mup as tpm
from tensorprograms.mup import MuAdam, MuReadout, MuSGD, set_base_shapes
from tensorprograms.mup._audit import TransferWarning, audit


def net(width, zero=True):
    return nn.Sequential(
        nn.Linear(5, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        MuReadout(width, 3, readout_zero_init=zero),
    )


def model(width=256, zero=True):
    torch.manual_seed(0)
    return set_base_shapes(net(width, zero), net(32, zero))


def test_clean_setup_has_table_and_no_issues():
    m = model()
    r = audit(m, MuAdam(m, lr=1e-2))
    rows = {row.name: row for row in r.rows}
    assert r.issues == ()
    assert [rows[n].role for n in ("0.weight", "2.weight", "4.weight", "0.bias")] == [
        "input",
        "hidden",
        "output",
        "vector",
    ]
    # TP5 Table 3 (Adam): hidden lr x base_fan_in / fan_in = 32 / 256; the
    # readout's multiplier is 1 / width_mult = 32 / 256 (Table 8's form).
    assert rows["2.weight"].lr_factor == pytest.approx(32 / 256)
    assert rows["0.weight"].lr_factor == 1.0
    assert rows["4.weight"].multiplier == pytest.approx(32 / 256)
    assert rows["4.weight"].init_std == 0.0
    # PyTorch's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)): std 1/sqrt(3*256);
    # 65,536 draws give a relative standard error of about 0.3%.
    assert rows["2.weight"].init_std == pytest.approx((3 * 256) ** -0.5, rel=0.02)
    # SGD row of Table 3 (readout in multiplier form): hidden lr unchanged,
    # input weights and biases x width_mult
    r = audit(m, MuSGD(m, lr=0.1))
    rows = {row.name: row for row in r.rows}
    assert rows["2.weight"].lr_factor == pytest.approx(1.0)
    assert rows["0.weight"].lr_factor == pytest.approx(256 / 32)
    assert "hidden" in r.table() and "no issues found" in r.table()


def test_plain_optimizer_is_reported_as_unscaled():
    m = model()
    with pytest.warns(TransferWarning, match=r"does not scale 2\.weight"):
        r = audit(m, torch.optim.Adam(m.parameters(), lr=1e-2))
    assert len(r.issues) == 1
    assert {row.name: row.lr_factor for row in r.rows}["2.weight"] == 1.0


def test_missing_base_shapes_and_random_readout():
    plain = net(64, zero=False)
    r = audit(plain, warn=False)
    assert any("no muP base shapes" in msg for msg in r.issues)
    r = audit(model(zero=False), warn=False)
    assert len(r.issues) == 1 and "not zero-initialised" in r.issues[0]


class SDPA(nn.Module):
    def __init__(self, d, scale=None):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.scale = scale

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.scale is None:
            return nn.functional.scaled_dot_product_attention(q, k, v)
        return nn.functional.scaled_dot_product_attention(q, k, v, scale=self.scale)


def test_attention_scaling_is_checked():
    x = torch.randn(2, 4, 8)
    r = audit(SDPA(8), example_input=x, warn=False)
    assert any("without `scale`" in msg for msg in r.issues)
    r = audit(SDPA(8, scale=1 / 8), example_input=x, warn=False)
    assert not any("without `scale`" in msg for msg in r.issues)
    mha = nn.Sequential(nn.MultiheadAttention(8, 2))
    r = audit(mha, warn=False)
    assert any("nn.MultiheadAttention" in msg for msg in r.issues)


class Absolute(torch.optim.lr_scheduler.LRScheduler):
    """A scheduler that writes the same absolute learning rate into every group."""

    def get_lr(self):
        return [1e-3 * 0.5**self.last_epoch for _ in self.optimizer.param_groups]


def test_scheduler_that_overrides_groups():
    m = model()
    # mup-style groups holding pre-scaled learning rates, in a plain Adam
    hidden = [m[2].weight]
    rest = [p for p in m.parameters() if p is not m[2].weight]
    groups = [{"params": rest, "lr": 1e-2}, {"params": hidden, "lr": 1e-2 / 8}]
    opt = torch.optim.Adam(groups)
    r = audit(m, opt, torch.optim.lr_scheduler.StepLR(opt, 1, 0.5), warn=False)
    assert not any("ratios" in msg for msg in r.issues)  # StepLR keeps ratios
    sched = Absolute(opt)
    before = [g["lr"] for g in opt.param_groups]
    r = audit(m, opt, sched, warn=False)
    assert any("Absolute changes the ratios" in msg for msg in r.issues)
    assert [g["lr"] for g in opt.param_groups] == before  # state restored
    # MuAdam keeps the global lr in the groups and the factors apart: fine
    opt = MuAdam(m, lr=1e-2)
    r = audit(m, opt, Absolute(opt), warn=False)
    assert r.issues == ()


def test_groups_without_hooks_are_reported_as_unscaled():
    """mu_param_groups given to a plain optimizer: the factors are not applied."""
    m = model()
    opt = torch.optim.Adam(tpm.mu_param_groups(m, "adam", lr=1e-2))
    assert {v["lr"] for v in tpm.effective_hparams(opt).values()} == {1e-2}
    with pytest.warns(TransferWarning, match=r"does not scale 2\.weight"):
        audit(m, opt)
    tpm.attach_mu_hooks(opt)
    assert len({v["lr"] for v in tpm.effective_hparams(opt).values()}) > 1
