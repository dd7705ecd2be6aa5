"""Transfer sweeps: storage, resuming after a kill, workers sharing a study."""

import collections
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from tensorprograms.mup import _sweep, _tasks  # noqa: E402
from tensorprograms.mup._sweep import (  # noqa: E402
    TransferResult,
    run_grid,
    transfer_sweep,
)

SRC = str(Path(__file__).resolve().parents[1] / "src")

# A worker process: waits for every worker to be ready, then runs a grid whose
# objective sleeps and appends the point to a log once it has finished.
WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from tensorprograms.mup._sweep import run_grid

    db, log, n, sleep, me, n_workers = sys.argv[1:7]
    Path(log + f".ready{me}").touch()
    while sum(Path(log + f".ready{i}").exists() for i in range(int(n_workers))) < int(
        n_workers
    ):
        time.sleep(0.01)

    def objective(point, heartbeat):
        time.sleep(float(sleep))
        with open(log, "a") as f:
            f.write(f"{point['x']} {me}\\n")
        return float(point["x"])

    run_grid(objective, [{"x": i} for i in range(int(n))], storage="sqlite:///" + db,
             study_name="grid", show_progress=False, poll_interval=0.05)
    """
)


def _start(tmp_path, n, sleep, me, n_workers=1):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_WAIT_POLICY": "PASSIVE"}
    args = [str(tmp_path / "g.db"), str(tmp_path / "log"), str(n), str(sleep)]
    return subprocess.Popen(
        [sys.executable, str(script), *args, str(me), str(n_workers)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def _load(tmp_path):
    return optuna.load_study(study_name="grid", storage=f"sqlite:///{tmp_path}/g.db")


def _log(tmp_path):
    path = tmp_path / "log"
    return path.read_text().split("\n")[:-1] if path.exists() else []


def test_killed_sweep_resumes_without_losing_or_repeating(tmp_path):
    n = 10
    proc = _start(tmp_path, n, sleep=0.25, me=0)
    deadline = time.time() + 60
    while len(_log(tmp_path)) < 3 and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.12)  # in the middle of the next trial's objective
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _load(tmp_path).get_trials()
    finished = {t.params["x"] for t in before if t.state.name == "COMPLETE"}
    assert 3 <= len(finished) < n
    assert any(t.state.name == "RUNNING" for t in before)  # killed mid-trial

    os.remove(tmp_path / "log.ready0")
    proc = _start(tmp_path, n, sleep=0.0, me=0)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    after = _load(tmp_path).get_trials()
    complete = collections.Counter(
        t.params["x"] for t in after if t.state.name == "COMPLETE"
    )
    assert complete == {x: 1 for x in range(n)}  # every point once
    # trials finished before the kill are kept as they were (same numbers) ...
    old = {t.number: t.value for t in before if t.state.name == "COMPLETE"}
    new = {t.number: t.value for t in after if t.state.name == "COMPLETE"}
    assert all(new[k] == v for k, v in old.items())
    # ... and no point's objective ran to completion twice
    runs = collections.Counter(line.split()[0] for line in _log(tmp_path))
    assert runs == {str(x): 1 for x in range(n)}
    # the killed trial was marked FAIL, nothing is left RUNNING
    assert not any(t.state.name == "RUNNING" for t in after)


def test_two_workers_share_one_study_without_duplicates(tmp_path):
    n = 24
    procs = [_start(tmp_path, n, sleep=0.08, me=i, n_workers=2) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    lines = [line.split() for line in _log(tmp_path)]
    assert sorted(int(x) for x, _ in lines) == list(range(n))  # no point run twice
    by_worker = collections.Counter(w for _, w in lines)
    assert set(by_worker) == {"0", "1"}  # both took part
    complete = [t for t in _load(tmp_path).get_trials() if t.state.name == "COMPLETE"]
    assert sorted(t.params["x"] for t in complete) == list(range(n))


def test_transfer_sweep_interrupted_then_resumed(tmp_path, monkeypatch):
    real = _tasks.train
    calls = []

    def interrupting(*args, **kw):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(args[1:3])
        return real(*args, **kw)

    kw = dict(
        widths=(8, 16),
        parametrizations=("sp",),
        lrs=(-9, -7, -5),
        steps=3,
        storage=f"sqlite:///{tmp_path}/t.db",
        show_progress=False,
    )
    monkeypatch.setattr(_tasks, "train", interrupting)
    with pytest.raises(KeyboardInterrupt):
        transfer_sweep("mlp", **kw)
    first = list(calls)
    monkeypatch.setattr(
        _tasks, "train", lambda *a, **k: calls.append(a[1:3]) or real(*a, **k)
    )
    result = transfer_sweep("mlp", **kw)
    assert len(first) == 3 and len(calls) == 6  # 3 before, 3 after: none repeated
    assert len(set(calls)) == 6
    assert len(result.records) == 6
    study = optuna.load_study(study_name="transfer-mlp", storage=kw["storage"])
    states = collections.Counter(t.state.name for t in study.get_trials())
    assert states == {"COMPLETE": 6, "FAIL": 1}  # the interrupted trial


def test_sampler_sweep_resumes(tmp_path):
    kw = dict(
        widths=(8,),
        parametrizations=("sp",),
        lrs=optuna.samplers.RandomSampler(seed=0),
        n_trials=3,
        steps=2,
        lr_range=(-10.0, -6.0),
        storage=f"sqlite:///{tmp_path}/s.db",
        show_progress=False,
    )
    first = transfer_sweep("mlp", **kw)
    again = transfer_sweep("mlp", **kw)
    assert len(first.records) == 3
    assert sorted(r["log2_lr"] for r in again.records) == sorted(
        r["log2_lr"] for r in first.records
    )
    assert all(-10.0 <= r["log2_lr"] <= -6.0 for r in first.records)


def _synthetic(optima: dict, scale: dict) -> TransferResult:
    """Parabolic loss curves ``scale + (log2_lr - optimum)^2 / 10``."""
    records = []
    for (p, w), opt in optima.items():
        for lr in range(-12, -3):
            loss = scale[p, w] + (lr - opt) ** 2 / 10
            records.append(
                dict(parametrization=p, width=w, depth=2, seed=0, log2_lr=lr, loss=loss)
            )
    records.append(
        dict(
            parametrization="sp", width=256, depth=2, seed=0, log2_lr=-3, loss=math.inf
        )
    )
    return TransferResult("toy", tuple(records), (64, 256), (2,), ("mup", "sp"))


def test_transfer_result_verdicts_on_known_curves(tmp_path):
    optima = {("mup", 64): -6, ("mup", 256): -7, ("sp", 64): -6, ("sp", 256): -9}
    scale = {("mup", 64): 0.5, ("mup", 256): 0.4, ("sp", 64): 0.5, ("sp", 256): 0.45}
    r = _synthetic(optima, scale)
    assert r.optima("mup") == {(64, 2): -6, (256, 2): -7}
    assert r.shift("mup") == 1 and r.stable("mup")
    assert r.shift("sp") == 3 and not r.stable("sp")
    # at the lr tuned at width 64 (-6): mup 256 has 0.4 + 1/10 = 0.5 <= 0.5
    assert r.transferred_losses("mup") == {(64, 2): 0.5, (256, 2): pytest.approx(0.5)}
    assert r.wider_is_better("mup")
    # sp 256 at -6: 0.45 + 9/10 = 1.35 > 0.5
    assert not r.wider_is_better("sp")
    paths = r.save(tmp_path / "out")
    hps = json.loads(paths["hparams"].read_text())
    assert hps["log2_lr"] == -6 and hps["lr"] == 2.0**-6
    assert hps["target"] == {"width": 256, "depth": 2}
    assert paths["figure"].stat().st_size > 1000
    assert "moves by 3 octave(s)" in r.summary()


def test_bad_grid_and_parametrization_are_reported():
    with pytest.raises(ValueError, match="duplicate"):
        run_grid(
            lambda p, b: 0.0,
            [{"x": 1}, {"x": 1}],
            storage=optuna.storages.InMemoryStorage(),
            show_progress=False,
        )
    with pytest.raises(ValueError, match="'mup' or 'sp'"):
        transfer_sweep("mlp", parametrizations=("ntk",), storage=None)
    with pytest.raises(ValueError, match="task must be one of"):
        _tasks.get_task("cifar")
    assert _sweep.DEFAULT_STORAGE.startswith("sqlite:///")


def test_a_larger_grid_extends_the_study(tmp_path):
    # a second sweep with more learning rates and another string value reuses
    # the finished points and runs only the new ones
    storage = f"sqlite:///{tmp_path}/e.db"
    calls = []

    def objective(point, heartbeat):
        calls.append(point["lr"])
        return point["lr"] ** 2

    grid = [{"p": "mup", "lr": v} for v in (-2.0, -1.0)]
    run_grid(objective, grid, storage=storage, study_name="e", show_progress=False)
    grid += [{"p": "sp", "lr": v} for v in (-3.0, -2.0, -1.0)]
    study = run_grid(
        objective, grid, storage=storage, study_name="e", show_progress=False
    )
    assert calls == [-2.0, -1.0, -3.0, -2.0, -1.0]
    points = sorted((_sweep.point_of(t)["p"], t.params["lr"]) for t in study.trials)
    assert points == sorted((g["p"], g["lr"]) for g in grid)
