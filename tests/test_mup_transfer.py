"""muTransfer on the built-in tasks: the learning rate transfers in muP, not in SP."""

import json

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("sklearn")

from tensorprograms.mup._cli import main  # noqa: E402
from tensorprograms.mup._coord import builtin_coord_check  # noqa: E402
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


def test_builtin_coord_checks_flag_sp_output_and_attention_logits():
    for task, widths in (("mlp", (64, 256, 1024)), ("transformer", (32, 64, 128))):
        mup = builtin_coord_check(task, "mup", widths, steps=3, seeds=(0,))
        sp = builtin_coord_check(task, "sp", widths, steps=3, seeds=(0,))
        assert mup.passed, mup.table()
        assert "output" in sp.failing and "readout" in sp.failing, sp.table()
        if task == "transformer":
            assert {"blocks.0.attn.logits", "blocks.1.attn.logits"} <= set(sp.failing)


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
    assert main([*argv, "--no-progress"]) == 0
    hps = json.loads((tmp_path / "hparams.json").read_text())
    assert hps["parametrization"] == "mup" and hps["target"]["width"] == 32
    assert (tmp_path / "transfer_mlp.png").exists()
    assert main(["audit", "--width", "64"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "optimum moves" in out and "hidden" in out
    with pytest.raises(SystemExit):
        main(["transfer", "--lrs", "a:b"])
