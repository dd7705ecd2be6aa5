"""Coordinate checks: muP flat in width, SP's output layer and attention flagged."""

import numpy as np
import pytest
import torch
from torch import nn

from tensorprograms.mup._coord import CoordCheckResult, coord_check, plot_coord_checks


class ExplicitMLP(nn.Module):
    """Two-hidden-layer ReLU MLP with muP written out by hand (TP5 Table 8 with
    Adam): readout multiplier base/n on a readout whose init is scaled by
    sqrt(n/base) and hidden-weight Adam learning rate lr * base/n. In SP all
    multipliers and factors are 1. Independent of tensorprograms.mup."""

    base = 32

    def __init__(self, n, mup):
        super().__init__()
        self.n, self.mup = n, mup
        self.inp, self.hid, self.out = nn.Linear(8, n), nn.Linear(n, n), nn.Linear(n, 3)
        self.act1, self.act2 = nn.ReLU(), nn.ReLU()
        self.mult = self.base / n if mup else 1.0
        if mup:
            with torch.no_grad():
                self.out.weight.mul_((n / self.base) ** 0.5)

    def forward(self, x):
        return self.out(self.act2(self.hid(self.act1(self.inp(x)))) * self.mult)

    def adam(self, lr):
        hidden = [self.hid.weight]
        rest = [p for p in self.parameters() if p is not self.hid.weight]
        scale = self.base / self.n if self.mup else 1.0
        return torch.optim.Adam(
            [{"params": hidden, "lr": lr * scale}, {"params": rest, "lr": lr}]
        )


def _data(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 8, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    while True:
        idx = torch.randint(0, 64, (32,), generator=g)
        yield x[idx], y[idx]


WIDTHS = (32, 64, 128, 256, 512)


@pytest.fixture(scope="module")
def explicit():
    return {
        mup: coord_check(
            lambda n, mup=mup: ExplicitMLP(n, mup),
            lambda m: m.adam(0.01),
            WIDTHS,
            _data,
            steps=3,
            seeds=(0, 1),
        )
        for mup in (True, False)
    }


def test_mup_is_flat_and_sp_grows_like_width(explicit):
    mup, sp = explicit[True], explicit[False]
    assert mup.passed, mup.table()
    assert set(mup.verdicts().values()) == {"ok"}
    # Theory (TP5 sec. 3 / THEORY.md sec. 8): Adam's first step is
    # lr * sign(gradient), aligned with the incoming activations, so in SP the
    # first change of the hidden and output activations sums n aligned terms
    # and grows like n (slope 1), while the input layer has a fixed fan-in and
    # its change is width-independent (slope 0). The band 0.75..1.5 allows the
    # O(1) part of the change at these small widths.
    s = dict(zip(sp.layers, sp.slopes("delta")[1]))
    assert 0.75 < s["output"] < 1.5 and 0.75 < s["hid"] < 1.5
    assert abs(s["inp"]) < 0.25
    assert set(sp.failing) == {"hid", "act2", "out", "output"}
    assert np.nanmax(np.abs(mup.slopes("delta")[1:])) < 0.25


def test_result_arrays_and_table(explicit, tmp_path):
    r = explicit[True]
    assert r.layers == ("inp", "hid", "out", "act1", "act2", "output")
    assert r.act.shape == (len(WIDTHS), 2, 4, 6) and r.steps == 3
    assert np.all(r.delta[:, :, 0] == 0)
    assert "PASS" in r.table() and "FAIL: hid" in explicit[False].table()
    path = tmp_path / "coord.png"
    plot_coord_checks({"muP": r, "SP": explicit[False]}, path)
    assert path.stat().st_size > 10_000


def test_slopes_of_known_power_laws():
    # sizes c * n^k per layer: the fitted slope is k exactly (least squares on
    # exact power laws); a zero layer has no slope and passes.
    widths = (16, 64, 256)
    n = np.array(widths, float)[:, None, None, None]
    act = np.concatenate([1.0 * n**0, 2.0 * n**0.5, 0 * n], axis=3)
    act = np.broadcast_to(act, (3, 1, 2, 3)).copy()
    r = CoordCheckResult(widths, (0,), ("a", "b", "c"), act, act.copy())
    np.testing.assert_allclose(r.slopes("act")[0, :2], [0.0, 0.5], atol=1e-12)
    assert np.isnan(r.slopes("act")[0, 2])
    assert r.verdicts() == {"a": "ok", "b": "grows", "c": "ok"}
    assert r.failing == ["b"]
    with pytest.raises(ValueError, match="'act' or 'delta'"):
        r.slopes("grad")


def test_bad_arguments_are_reported():
    make = lambda n: nn.Sequential(nn.Linear(2, n), nn.Linear(n, 1))  # noqa: E731
    opt = lambda m: torch.optim.SGD(m.parameters(), 0.1)  # noqa: E731
    data = (torch.randn(4, 2), torch.randn(4, 1))
    with pytest.raises(ValueError, match="two distinct widths"):
        coord_check(make, opt, [8, 8], data)
    with pytest.raises(ValueError, match="not in the model"):
        coord_check(make, opt, [8, 16], data, modules=["fc9"])
    with pytest.raises(ValueError, match="steps >= 1"):
        coord_check(make, opt, [8, 16], data, steps=0)
    diverge = lambda m: torch.optim.SGD(m.parameters(), 1e30)  # noqa: E731
    with pytest.raises(ValueError, match="non-finite"):
        coord_check(make, diverge, [8, 16], data, steps=3)


def test_mup_style_coord_data_and_plot(tmp_path):
    """``get_coord_data`` / ``plot_coord_data`` (mup's interface) on a model that
    is its own base: every recorded l1 is a mean |coordinate| of a real output."""
    import tensorprograms.mup as tpm

    pytest.importorskip("pandas")

    def model(n):
        net = nn.Sequential(nn.Linear(8, n), nn.ReLU(), tpm.MuReadout(n, 3))
        return tpm.set_base_shapes(net, None)

    x, y = next(_data(0))
    df = tpm.get_coord_data(
        {16: lambda: model(16), 32: lambda: model(32)},
        [(x, y)],
        optimizer="adam",
        nsteps=2,
        cuda=False,
        show_progress=False,
        output_fdict={"l1": "l1", "std": lambda h: h.std()},
    )
    assert list(df.columns) == ["width", "module", "t", "l1", "std", "optimizer", "lr"]
    assert sorted(set(df["module"])) == ["", "0", "1", "2"]
    assert sorted(set(df["t"])) == [1, 2] and set(df["lr"]) == {1e-3}
    # t = 1 records the forward pass at init: rebuild the width-16 model (seed 0)
    torch.manual_seed(0)
    first = model(16)[0](x)
    row = df[(df.width == 16) & (df.module == "0") & (df.t == 1)]
    assert row["l1"].item() == pytest.approx(first.abs().mean().item(), rel=1e-6)
    fig = tpm.plot_coord_data(df, save_to=tmp_path / "coord.png")
    assert len(fig.axes) == 2 and (tmp_path / "coord.png").exists()
    with pytest.raises(ValueError, match="unknown statistic 'l3'"):
        tpm.get_coord_data({16: lambda: model(16)}, [(x, y)], output_fdict={"a": "l3"})
