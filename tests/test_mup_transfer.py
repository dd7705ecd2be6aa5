"""muTransfer on the built-in tasks: the learning rate transfers in muP, not in SP."""

import json

import pytest
import torch

optuna = pytest.importorskip("optuna")
pytest.importorskip("sklearn")

from tensorprograms.mup._cli import main  # noqa: E402
from tensorprograms.mup._coord import builtin_coord_check, coord_check  # noqa: E402
from tensorprograms.mup._sweep import transfer_sweep  # noqa: E402
from tensorprograms.mup._tasks import get_task, stdlib_text, train  # noqa: E402


def test_width_transfer_mlp_adam():
    """TP5 Figure 1 in small: Adam on the digits MLP, widths 64 and 512.

    SP's optimum should fall like 1/width (3 octaves for 8x) and muP's stay;
    the acceptance bounds are muP <= 1 octave, SP >= 2 octaves, and in muP the
    wide model is not worse at the learning rate tuned on the narrow one.
    """
    r = transfer_sweep(
        "mlp",
        widths=(64, 512),
        lrs=range(-10, -2),
        storage=optuna.storages.InMemoryStorage(),
        show_progress=False,
    )
    assert r.shift("mup") <= 1, r.summary()
    assert r.shift("sp") >= 2, r.summary()
    tl = r.transferred_losses("mup")
    assert tl[512, 2] <= tl[64, 2], r.summary()
    # at the base width muP is SP exactly: the two curves coincide
    lrs_mup, loss_mup = r.curve("mup", (64, 2))
    lrs_sp, loss_sp = r.curve("sp", (64, 2))
    assert list(lrs_mup) == list(lrs_sp) and list(loss_mup) == list(loss_sp)


def test_depth_transfer_resmlp_adam():
    """TP6 in small: Adam on the digits residual MLP (one layer per block),
    depths 2 and 16 at width 64.

    Depth-muP keeps the optimum (<= 1 octave), SP's moves (>= 2 octaves), and
    at the learning rate tuned at depth 2 the depth-16 Depth-muP model is not
    worse beyond seed noise: 5% is about one seed-to-seed standard deviation of
    the mean training loss at the optimum (measured over 6 seeds at 2^-7:
    0.0863 +- 0.0058 at depth 2, 0.0861 +- 0.0026 at depth 16).
    """
    r = transfer_sweep(
        "resmlp",
        widths=(64,),
        depths=(2, 16),
        lrs=range(-11, -5),
        storage=optuna.storages.InMemoryStorage(),
        show_progress=False,
    )
    assert r.shift("mup") <= 1, r.summary()
    assert r.shift("sp") >= 2, r.summary()
    tl = r.transferred_losses("mup")
    assert tl[64, 16] <= 1.05 * tl[64, 2], r.summary()
    # at the base depth (and width) Depth-muP is SP exactly: the curves coincide
    assert list(r.curve("mup", (64, 2))[1]) == list(r.curve("sp", (64, 2))[1])


def test_builtin_coord_checks_flag_sp_output_and_attention_logits():
    mup = builtin_coord_check("mlp", "mup", (64, 256, 1024), steps=3, seeds=(0,))
    sp = builtin_coord_check("mlp", "sp", (64, 256, 1024), steps=3, seeds=(0,))
    assert mup.passed, mup.table()
    assert {"output", "readout", "hidden.0"} <= set(sp.failing), sp.table()
    assert "input" not in sp.failing

    # the GPT-style model on synthetic tokens (uniform over the vocabulary)
    task = get_task("transformer")
    vocab = task.eval_batch[0].max().item() + 1

    def tokens(seed):
        g = torch.Generator().manual_seed(seed)
        while True:
            x = torch.randint(0, vocab, (16, 32), generator=g)
            yield x, torch.roll(x, -1, dims=1)

    for p in ("mup", "sp"):
        r = coord_check(
            lambda n, p=p: task.build(n, 2, p),
            lambda m, p=p: task.optimizer(m, 2.0**-8, p),
            (32, 64, 128),
            tokens,
            steps=3,
            seeds=(0,),
        )
        logits = {"blocks.0.attn.logits", "blocks.1.attn.logits"}
        if p == "mup":
            assert r.passed, r.table()
        else:
            assert logits | {"output"} <= set(r.failing), r.table()


def test_tasks_build_and_train():
    text = stdlib_text()
    assert "def " in text
    t = get_task("transformer")
    assert t.build(32, 1, "sp")(t.eval_batch[0][:2]).shape[-1] == len(set(text))
    for name in ("resmlp", "resnet"):
        loss = train(get_task(name), 16, -8, "mup", steps=2)
        assert 1.5 < loss < 3.5  # cross-entropy near log(10) = 2.30 at start
    with pytest.raises(ValueError, match="parametrization must be"):
        get_task("mlp").build(16, None, "ntk")
    with pytest.raises(ValueError, match="metric must be"):
        train(get_task("mlp"), 16, -8, metric="best")


def test_cli_coord_check_and_transfer(tmp_path, capsys):
    argv = ["coord-check", "--widths", "64,256", "--seeds", "0", "--steps", "2"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    assert (tmp_path / "coord_check_mlp.png").exists()
    argv = ["transfer", "--widths", "16,32", "--lrs=-8:-6", "--steps", "3"]
    argv += ["--storage", f"sqlite:///{tmp_path}/t.db", "--out", str(tmp_path)]
    argv += ["--target-width", "4096"]
    assert main([*argv, "--no-progress"]) == 0
    hps = json.loads((tmp_path / "hparams_mlp.json").read_text())
    assert hps["parametrization"] == "mup" and hps["target"]["width"] == 4096
    assert hps["proxy"]["width"] == 16
    assert (tmp_path / "transfer_mlp.png").exists()
    assert main(["audit", "--width", "64"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "optimum moves" in out and "hidden" in out
    with pytest.raises(SystemExit):
        main(["transfer", "--lrs", "a:b"])
