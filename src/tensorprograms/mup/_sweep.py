"""Hyperparameter-transfer sweeps stored in Optuna studies.

muTransfer (TP5, Yang et al. 2022, section 3) says: in muP the optimal
learning rate (and other HPs) of a model does not move as the width (and, with
Depth-muP, TP6 section 3, the depth) grows, and wider is better at every
learning rate; in SP the optimum drifts (like ``1/width`` for Adam). A
transfer sweep trains a proxy task over a grid of ``log2`` learning rates for
several widths (and depths) in muP and SP, and reports where each optimum is.

Storage and workers. Every trial is an Optuna trial in one study, by default in
an embedded SQLite file, or in any database server Optuna accepts (a URL such as
``postgresql://...``) so that workers on many machines share the study. A grid
point is *claimed* by creating a RUNNING trial that carries the point's key,
atomically in one storage transaction; when two workers claim the same point
the claim with the lowest trial number wins and the other is marked FAIL
(attribute ``tp_superseded``) before it trains. A finished point (COMPLETE) is
never run again; a claim whose worker died (same host and its process is gone,
or no heartbeat for ``stale_after`` seconds) is marked FAIL and the point is
run again. So a sweep that is killed and restarted completes without losing or
repeating a finished trial, and many workers split a grid without duplicates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import socket
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

try:  # advisory file locks (POSIX); elsewhere schema creation relies on retries
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

import numpy as np

KEY = "tp_grid_key"
_HOST = "tp_host"
_PID = "tp_pid"
_WORKER = "tp_worker"
_BEAT = "tp_heartbeat"
DEFAULT_STORAGE = "sqlite:///transfer.db"


def _key(point: dict) -> str:
    return json.dumps(point, sort_keys=True)


def make_storage(storage=None):
    """An Optuna storage: a URL (``sqlite:///file.db`` by default, or any
    SQLAlchemy database URL), or a storage object passed through.

    SQLite connections wait up to 60 s for a lock, so that several local
    worker processes can share one file.
    """
    import optuna

    if storage is None:
        storage = DEFAULT_STORAGE
    if not isinstance(storage, str):
        return storage
    kwargs = {}
    if storage.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    with _schema_lock(storage):
        for attempt in range(10):
            try:
                return optuna.storages.RDBStorage(storage, **kwargs)
            except Exception as err:  # two workers creating the same new schema
                racing = ("already exists", "UNIQUE constraint failed", "duplicate key")
                if not any(r in str(err) for r in racing) or attempt == 9:
                    raise
                time.sleep(0.2 * (attempt + 1))


@contextlib.contextmanager
def _schema_lock(url: str):
    """Serialise schema creation of a local SQLite file across processes.

    Optuna creates its tables (and alembic's version row) on first use; two
    processes doing that at once on a fresh file collide. A lock file beside the
    database makes them take turns; other databases rely on the retries.
    """
    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
    if not path or path == ":memory:" or fcntl is None:
        yield
        return
    with open(os.path.abspath(path) + ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_stale(trial, worker: dict, stale_after: float) -> bool:
    """Whether a RUNNING trial's worker is gone."""
    attrs = trial.user_attrs
    if attrs.get(_WORKER) == worker["id"]:
        return False
    if attrs.get(_HOST) == worker["host"] and _PID in attrs:
        pid = int(attrs[_PID])
        if pid == worker["pid"]:  # an earlier call in this process: it has ended
            return True
        return not _pid_alive(pid)
    beat = attrs.get(_BEAT)
    if beat is None:
        start = trial.datetime_start
        beat = start.timestamp() if start is not None else time.time()
    return time.time() - float(beat) > stale_after


def fail_stale_trials(study, stale_after: float = 600.0, worker=None) -> list[int]:
    """Mark FAIL every RUNNING trial of ``study`` whose worker is gone.

    Returns the numbers of the trials marked. See the module docstring for the
    rule; ``worker`` is this process's identity (default: a fresh one).
    """
    from optuna.trial import TrialState

    worker = worker or _new_worker()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _is_stale(t, worker, stale_after):
            try:
                study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                failed.append(t.number)
            except Exception:  # another worker changed it first
                pass
    return failed


def _new_worker() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "id": uuid.uuid4().hex}


def _params(point: dict) -> tuple[dict, dict]:
    """Optuna params and distributions for a grid point's numbers.

    Each number gets a one-point distribution (``low = high``), so that grids
    of different runs can share a study (Optuna refuses categorical choices
    that change); strings are kept only in the point's key (a user attribute).
    """
    from optuna.distributions import FloatDistribution, IntDistribution

    params, dists = {}, {}
    for name, v in point.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if isinstance(v, int):
            dists[name] = IntDistribution(v, v)
        else:
            dists[name] = FloatDistribution(v, v)
        params[name] = v
    return params, dists


def point_of(trial) -> dict | None:
    """The grid point of a trial made by :func:`run_grid` (None otherwise)."""
    key = trial.user_attrs.get(KEY)
    return None if key is None else json.loads(key)


def _claim(study, point: dict, key: str, worker: dict) -> int:
    """Create a RUNNING trial that carries ``key`` in one transaction."""
    from optuna.trial import FrozenTrial, TrialState

    now = time.time()
    params, distributions = _params(point)
    template = FrozenTrial(
        number=0,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=datetime.datetime.now(),
        datetime_complete=None,
        params=params,
        distributions=distributions,
        user_attrs={
            KEY: key,
            _HOST: worker["host"],
            _PID: worker["pid"],
            _WORKER: worker["id"],
            _BEAT: now,
        },
        system_attrs={},
        intermediate_values={},
        trial_id=0,
    )
    trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    return study._storage.get_trial(trial_id).number


def _owner(study, key: str) -> int | None:
    """The winning claim of ``key``: a COMPLETE trial, else the lowest RUNNING."""
    from optuna.trial import TrialState

    states = (TrialState.RUNNING, TrialState.COMPLETE)
    claims = [
        t
        for t in study.get_trials(deepcopy=False, states=states)
        if t.user_attrs.get(KEY) == key
    ]
    done = [t.number for t in claims if t.state == TrialState.COMPLETE]
    if done:
        return min(done)
    return min((t.number for t in claims), default=None)


def run_grid(
    objective: Callable[[dict, Callable[[], None]], float],
    points: Iterable[dict],
    *,
    storage=None,
    study_name: str = "grid",
    direction: str = "minimize",
    max_trials: int | None = None,
    stale_after: float = 600.0,
    wait: bool = True,
    poll_interval: float = 1.0,
    show_progress: bool = True,
    desc: str = "sweep",
):
    """Run ``objective`` once on every grid point, stored in an Optuna study.

    Resumable and shareable by many workers (see the module docstring). Each
    call is one worker: it runs free points in the order given until none is
    left (then, if ``wait``, waits for points that other live workers hold).

    Args:
        objective: ``objective(point, heartbeat) -> value``; call
            ``heartbeat()`` now and then during long trials (at most every
            ``stale_after / 10`` seconds it writes a timestamp), so that
            workers on other hosts do not take the point over.
        points: dicts of JSON-serialisable values (the trial's params).
        storage: URL or Optuna storage (default ``sqlite:///transfer.db``).
        study_name: the study (created if missing).
        max_trials: run at most this many trials in this call.
        stale_after: seconds without heartbeat after which a claim from
            another host is taken over.

    Returns:
        the ``optuna.Study``.

    Example:
        >>> import optuna
        >>> s = run_grid(lambda p, beat: (p["x"] - 1) ** 2, [{"x": v} for v in
        ...              (0, 1, 2)], storage=optuna.storages.InMemoryStorage(),
        ...              show_progress=False)
        >>> sorted(t.value for t in s.trials)
        [0.0, 1.0, 1.0]
    """
    import optuna
    from optuna.trial import TrialState

    points = [dict(p) for p in points]
    keys = [_key(p) for p in points]
    if len(set(keys)) != len(keys):
        raise ValueError("run_grid: the grid has duplicate points")
    study = optuna.create_study(
        storage=make_storage(storage),
        study_name=study_name,
        direction=direction,
        load_if_exists=True,
    )
    worker = _new_worker()
    ran = 0
    bar = _progress(len(points), desc, show_progress)
    try:
        while True:
            fail_stale_trials(study, stale_after, worker)
            trials = study.get_trials(
                deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE)
            )
            done = {t.user_attrs.get(KEY) for t in trials if t.state.is_finished()}
            held = {t.user_attrs.get(KEY) for t in trials} - done
            n_done = sum(k in done for k in keys)
            bar.update(n_done - bar.n)
            free = [(p, k) for p, k in zip(points, keys) if k not in done | held]
            if max_trials is not None and ran >= max_trials:
                break
            if not free:
                if wait and any(k in held for k in keys):
                    time.sleep(poll_interval)
                    continue
                break
            point, key = free[0]
            number = _claim(study, point, key, worker)
            if _owner(study, key) != number:
                _finish(study, number, None, superseded=True)
                continue
            value = _run_one(study, number, objective, point, stale_after)
            ran += 1
            bar.set_postfix_str(f"last {value:.4g}", refresh=False)
    finally:
        bar.close()
    return study


def _progress(total: int, desc: str, show: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is an optional extra
        tqdm = None
    if tqdm is None or not show:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="trial", leave=True)


class _NoBar:
    n = 0

    def update(self, k):
        self.n += k

    def set_postfix_str(self, *a, **k):
        pass

    def close(self):
        pass


def _run_one(study, number: int, objective, point: dict, stale_after: float) -> float:
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(
        study._study_id, number
    )
    last = [time.time()]

    def heartbeat() -> None:
        now = time.time()
        if now - last[0] > stale_after / 10:
            last[0] = now
            study._storage.set_trial_user_attr(trial_id, _BEAT, now)

    try:
        value = float(objective(point, heartbeat))
    except BaseException:
        _finish(study, number, None)
        raise
    if math.isnan(value):
        value = math.inf
    _finish(study, number, value)
    return value


def _finish(study, number: int, value: float | None, superseded: bool = False):
    from optuna.trial import TrialState

    storage = study._storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    try:
        if superseded:
            storage.set_trial_user_attr(trial_id, "tp_superseded", True)
        if value is None:
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        else:
            storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [value])
    except Exception as err:  # taken over as stale by another worker meanwhile
        warnings.warn(
            f"run_grid: trial {number} could not be finished ({err}); another "
            "worker took it over as stale, its result is discarded",
            RuntimeWarning,
            stacklevel=3,
        )


# ------------------------------------------------------------ transfer sweep


@dataclasses.dataclass(frozen=True)
class TransferResult:
    """Losses of a transfer sweep and what they say about transfer.

    Attributes:
        task: the task name.
        records: one dict per finished trial with keys ``parametrization,
            width, depth, seed, log2_lr, loss``.
        widths, depths: the sweep sizes.
        parametrizations: e.g. ``("mup", "sp")``.
    """

    task: str
    records: tuple[dict, ...]
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    parametrizations: tuple[str, ...]

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """The ``(width, depth)`` pairs, small to large."""
        return sorted((w, d) for w in self.widths for d in self.depths)

    @property
    def axis(self) -> str:
        return "depth" if len(self.depths) > 1 and len(self.widths) == 1 else "width"

    def curve(self, parametrization: str, size: tuple[int, int]):
        """``(log2_lrs, mean loss over seeds)`` for one size, sorted by LR.

        A learning rate at which any seed diverged has loss ``inf``.
        """
        by_lr: dict[float, list[float]] = {}
        for r in self.records:
            if r["parametrization"] == parametrization and (
                r["width"],
                r["depth"],
            ) == tuple(size):
                by_lr.setdefault(float(r["log2_lr"]), []).append(float(r["loss"]))
        lrs = np.array(sorted(by_lr))
        return lrs, np.array([float(np.mean(by_lr[v])) for v in lrs])

    def optimum(self, parametrization: str, size: tuple[int, int]) -> float:
        """The loss-minimising ``log2`` learning rate on the grid (NaN if none)."""
        lrs, loss = self.curve(parametrization, size)
        if not np.any(np.isfinite(loss)):
            return math.nan
        return float(lrs[np.nanargmin(np.where(np.isfinite(loss), loss, np.nan))])

    def optima(self, parametrization: str) -> dict[tuple[int, int], float]:
        return {s: self.optimum(parametrization, s) for s in self.sizes}

    def shift(self, parametrization: str) -> float:
        """Range (max - min) of the optimal ``log2`` learning rate over sizes."""
        v = [x for x in self.optima(parametrization).values() if math.isfinite(x)]
        return float(max(v) - min(v)) if v else math.nan

    def stable(self, parametrization: str, tol: float = 1.0) -> bool:
        """Whether the optimum moves by at most ``tol`` octaves over sizes."""
        return self.shift(parametrization) <= tol

    def transferred_losses(self, parametrization: str) -> dict[tuple[int, int], float]:
        """Loss at every size at the learning rate tuned on the smallest size
        (the nearest learning rate tried at that size)."""
        proxy = self.sizes[0]
        lr = self.optimum(parametrization, proxy)
        out = {}
        for s in self.sizes:
            lrs, loss = self.curve(parametrization, s)
            ok = lrs.size > 0 and math.isfinite(lr)
            out[s] = float(loss[np.argmin(np.abs(lrs - lr))]) if ok else math.nan
        return out

    def wider_is_better(self, parametrization: str, rel_tol: float = 0.05) -> bool:
        """Whether, at the learning rate tuned on the smallest size, the loss
        never rises by more than ``rel_tol`` (relative) from one size to the next
        larger one, and the largest size is no worse than the smallest.

        The default 5% is about one seed-to-seed standard deviation of the mean
        training loss on the ``mlp`` task near its optimum (4%, 5 seeds).
        """
        v = list(self.transferred_losses(parametrization).values())
        if not all(math.isfinite(x) for x in v):
            return False
        steps_ok = all(b <= a * (1 + rel_tol) for a, b in zip(v, v[1:]))
        return steps_ok and v[-1] <= v[0]

    def chosen_hps(
        self,
        parametrization: str = "mup",
        target_width: int | None = None,
        target_depth: int | None = None,
    ) -> dict:
        """HPs for a target model: the optimum found on the proxy (the smallest
        size), which muP keeps at any width (and Depth-muP at any depth)."""
        proxy = self.sizes[0]
        log2_lr = self.optimum(parametrization, proxy)
        return {
            "task": self.task,
            "parametrization": parametrization,
            "optimizer": "Adam (MuAdam in muP)",
            "log2_lr": log2_lr,
            "lr": 2.0**log2_lr,
            "proxy": {"width": proxy[0], "depth": proxy[1]},
            "target": {
                "width": target_width or max(self.widths),
                "depth": target_depth or max(self.depths),
            },
            "optimum_shift_log2": self.shift(parametrization),
            "optimum_stable": self.stable(parametrization),
            "wider_is_better": self.wider_is_better(parametrization),
            "optima_log2_lr": {
                f"width={w},depth={d}": v
                for (w, d), v in self.optima(parametrization).items()
            },
        }

    def summary(self) -> str:
        """A text report: optimum per size, its shift, and the verdicts."""
        seeds = len({r.get("seed") for r in self.records})
        lines = [
            f"transfer sweep on task {self.task!r} (Adam; mean training loss; "
            f"{seeds} seed{'s' if seeds != 1 else ''})"
        ]
        bigger = "wider" if self.axis == "width" else "deeper"
        for p in self.parametrizations:
            opt = self.optima(p)
            tl = self.transferred_losses(p)
            lines.append(f"  {p}:")
            for s in self.sizes:
                lines.append(
                    f"    width {s[0]:>5} depth {s[1]:>3}: best log2 lr "
                    f"{opt[s]:+.1f}, loss at proxy-tuned lr {tl[s]:.4f}"
                )
            lines.append(
                f"    optimum moves by {self.shift(p):.0f} octave(s): "
                f"{'stable' if self.stable(p) else 'NOT stable'}; {bigger} is "
                f"{'not worse' if self.wider_is_better(p) else 'WORSE'} at "
                "the transferred lr (5% tolerance)"
            )
        return "\n".join(lines)

    def plot(self, path=None):
        """Loss against ``log2`` learning rate, one panel per parametrization,
        one line per size (the muP paper's Figure 1). Returns the figure."""
        import matplotlib

        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        n = len(self.parametrizations)
        fig, axes = plt.subplots(
            1, n, figsize=(4.2 * n, 3.4), squeeze=False, sharey=True
        )
        cmap = plt.get_cmap("viridis")
        sizes = self.sizes
        finite = [r["loss"] for r in self.records if math.isfinite(r["loss"])]
        top = np.percentile(finite, 90) if finite else 1.0
        low = min(finite) if finite else 0.0
        # losses above the barely-trained level (the smallest learning rate
        # tried) are divergence: cap the axis there so that the valleys show
        lr_min = min((r["log2_lr"] for r in self.records), default=None)
        barely = [
            r["loss"]
            for r in self.records
            if r["log2_lr"] == lr_min and math.isfinite(r["loss"])
        ]
        if barely:
            top = min(top, 1.05 * max(barely))
        for ax, p in zip(axes[0], self.parametrizations):
            for i, s in enumerate(sizes):
                lrs, loss = self.curve(p, s)
                color = cmap(i / max(len(sizes) - 1, 1))
                label = f"width {s[0]}" if self.axis == "width" else f"depth {s[1]}"
                if len(self.widths) > 1 and len(self.depths) > 1:
                    label = f"w{s[0]} d{s[1]}"
                ax.plot(
                    lrs,
                    np.where(np.isfinite(loss), loss, np.nan),
                    "-o",
                    ms=3,
                    color=color,
                    label=label,
                )
                best = self.optimum(p, s)
                if math.isfinite(best):
                    ax.plot([best], [loss[lrs == best][0]], "*", ms=10, color=color)
            name = {"mup": "muP", "sp": "SP"}.get(p, p)
            ax.set_title(
                f"{name}: optimum moves {self.shift(p):.0f} octave(s)", fontsize=10
            )
            ax.set_xlabel("log2 learning rate")
            ax.set_ylim(low - 0.05 * (top - low), top)
            ax.grid(alpha=0.3)
        axes[0, 0].set_ylabel("mean training loss")
        axes[0, -1].legend(fontsize=7)
        fig.suptitle(f"muTransfer on task {self.task!r}", fontsize=11)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120, bbox_inches="tight")
            plt.close(fig)
        return fig

    def save(self, out, target_width=None, target_depth=None) -> dict[str, Path]:
        """Write ``transfer_<task>.png``, ``hparams_<task>.json`` (muP's chosen
        HPs for the target size, default the largest swept) and
        ``transfer_<task>.txt`` (the summary) into directory ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "figure": out / f"transfer_{self.task}.png",
            "hparams": out / f"hparams_{self.task}.json",
            "summary": out / f"transfer_{self.task}.txt",
        }
        self.plot(paths["figure"])
        p = "mup" if "mup" in self.parametrizations else self.parametrizations[0]
        hps = self.chosen_hps(p, target_width, target_depth)
        paths["hparams"].write_text(json.dumps(hps, indent=2) + "\n")
        paths["summary"].write_text(self.summary() + "\n")
        return paths


def _grid_points(task, widths, depths, parametrizations, lrs, seeds, steps):
    return [
        {
            "task": task,
            "parametrization": p,
            "width": int(w),
            "depth": int(d),
            "log2_lr": float(lr),
            "seed": int(s),
            "steps": int(steps),
        }
        for p in parametrizations
        for w in widths
        for d in depths
        for lr in lrs
        for s in seeds
    ]


def transfer_sweep(
    task="mlp",
    widths: Sequence[int] | None = None,
    depths: Sequence[int] | None = None,
    parametrizations: Sequence[str] = ("mup", "sp"),
    lrs=None,
    *,
    seeds: Sequence[int] = (0,),
    steps: int | None = None,
    storage=DEFAULT_STORAGE,
    study_name: str | None = None,
    n_trials: int | None = None,
    lr_range: tuple[float, float] = (-14.0, -4.0),
    stale_after: float = 600.0,
    wait: bool = True,
    show_progress: bool = True,
    out=None,
    target_width: int | None = None,
    target_depth: int | None = None,
) -> TransferResult:
    """Learning-rate transfer sweep of a task in muP against SP (TP5, sec. 3).

    For every parametrization, width, depth and seed, trains the task with Adam
    at learning rate ``2 ** log2_lr`` and stores the minibatch training loss
    averaged over the run (``train``'s ``metric="mean"``) as a trial of an
    Optuna study (see the module docstring for resuming and workers).

    Args:
        task: a built-in task name (``"mlp"``, ``"resmlp"``, ``"resnet"``,
            ``"transformer"``) or a :class:`~tensorprograms.mup._tasks.Task`.
        widths, depths: sizes (default: the task's).
        parametrizations: subset of ``("mup", "sp")``.
        lrs: a sequence of ``log2`` learning rates (a grid; default the
            task's), or an Optuna sampler, which then draws ``n_trials``
            learning rates in ``lr_range`` for every size in its own study
            ``<study_name>:<parametrization>:w<width>:d<depth>``.
        seeds: seeds averaged over.
        steps: training steps (default the task's).
        storage: Optuna storage URL (default an SQLite file ``transfer.db``)
            or storage object.
        study_name: default ``"transfer-<task>"``.
        n_trials: grid: run at most this many trials in this call; sampler:
            trials per size.
        stale_after: seconds after which another host's silent claim is
            taken over.
        wait: wait for grid points held by other live workers.
        out: a directory for the figure, the chosen HPs (JSON) and summary.
        target_width, target_depth: the model the JSON's HPs are for (default
            the largest swept).

    Returns:
        a :class:`TransferResult` over all finished trials of this grid.
    """
    from ._tasks import get_task, train

    t = get_task(task)
    widths = tuple(int(w) for w in (t.widths if widths is None else widths))
    depths = tuple(int(d) for d in (t.depths if depths is None else depths))
    parametrizations = tuple(parametrizations)
    for p in parametrizations:
        if p not in ("mup", "sp"):
            raise ValueError(f"parametrizations must be 'mup' or 'sp', got {p!r}")
    steps = t.steps if steps is None else int(steps)
    study_name = study_name or f"transfer-{t.name}"
    storage = make_storage(storage)

    def objective(point: dict, heartbeat) -> float:
        return train(
            t,
            point["width"],
            point["log2_lr"],
            point["parametrization"],
            point["depth"],
            point["seed"],
            point["steps"],
            callback=lambda step, loss: heartbeat(),
        )

    if lrs is None or not hasattr(lrs, "sample_independent"):
        grid = t.log2_lrs if lrs is None else tuple(float(v) for v in lrs)
        points = _grid_points(
            t.name, widths, depths, parametrizations, grid, seeds, steps
        )
        study = run_grid(
            objective,
            points,
            storage=storage,
            study_name=study_name,
            max_trials=n_trials,
            stale_after=stale_after,
            wait=wait,
            show_progress=show_progress,
            desc=f"transfer {t.name}",
        )
        wanted = {_key(p) for p in points}
        records = [
            {**point_of(tr), "loss": tr.value}
            for tr in study.get_trials(deepcopy=False)
            if tr.state.is_finished()
            and tr.value is not None
            and tr.user_attrs.get(KEY) in wanted
        ]
    else:
        records = _sampler_sweep(
            t,
            objective,
            widths,
            depths,
            parametrizations,
            lrs,
            seeds,
            steps,
            storage,
            study_name,
            n_trials or 8,
            lr_range,
            stale_after,
            show_progress,
        )
    result = TransferResult(t.name, tuple(records), widths, depths, parametrizations)
    if out is not None:
        result.save(out, target_width, target_depth)
    return result


def _sampler_sweep(
    t,
    objective,
    widths,
    depths,
    parametrizations,
    sampler,
    seeds,
    steps,
    storage,
    study_name,
    n_trials,
    lr_range,
    stale_after,
    show_progress,
) -> list[dict]:
    """One study per size, learning rates drawn by ``sampler``."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    worker = _new_worker()
    records = []
    combos = [(p, w, d) for p in parametrizations for w in widths for d in depths]
    bar = _progress(len(combos) * n_trials, f"transfer {t.name}", show_progress)
    try:
        for p, w, d in combos:
            study = optuna.create_study(
                storage=storage,
                study_name=f"{study_name}:{p}:w{w}:d{d}",
                sampler=sampler,
                load_if_exists=True,
            )
            fail_stale_trials(study, stale_after, worker)

            def obj(trial, p=p, w=w, d=d):
                trial.set_user_attr(_HOST, worker["host"])
                trial.set_user_attr(_PID, worker["pid"])
                trial.set_user_attr(_WORKER, worker["id"])
                log2_lr = trial.suggest_float("log2_lr", *lr_range)
                losses = [
                    objective(
                        {
                            "parametrization": p,
                            "width": w,
                            "depth": d,
                            "log2_lr": log2_lr,
                            "seed": s,
                            "steps": steps,
                        },
                        lambda: None,
                    )
                    for s in seeds
                ]
                bar.update(1)
                value = float(np.mean(losses))
                return value if math.isfinite(value) else math.inf

            done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
            bar.update(min(done, n_trials))
            if done < n_trials:
                study.optimize(
                    obj,
                    n_trials=n_trials - done,
                    callbacks=[
                        MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE,))
                    ],
                )
            for tr in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                records.append(
                    {
                        "parametrization": p,
                        "width": w,
                        "depth": d,
                        "seed": -1,
                        "log2_lr": tr.params["log2_lr"],
                        "loss": tr.value,
                    }
                )
    finally:
        bar.close()
    return records
