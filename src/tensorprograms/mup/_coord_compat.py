"""``mup.coord_check``'s interface: ``get_coord_data`` and ``plot_coord_data``.

For code written for ``mup`` (``from mup.coord_check import get_coord_data,
plot_coord_data`` becomes ``from tensorprograms.mup import ...``). The record is
the same: for every width, seed and step ``t = 1..nsteps``, one row per module
output with statistics of its coordinates (``l1`` = mean |h| by default) taken
in the forward pass that precedes the ``t``-th optimizer step, as a pandas
DataFrame with columns ``width``, ``module``, ``t``, the statistics,
``optimizer`` and ``lr``. :func:`coord_check` is this library's own check (probe
batch, change from init, fitted slopes and verdicts); use it for new code.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["get_coord_data", "plot_coord_data", "STATS"]


def _gram(x: torch.Tensor) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1]) if x.dim() > 0 else x.reshape(1, 1)
    return rows @ rows.T / rows.shape[-1]


def _offdiag(x: torch.Tensor) -> torch.Tensor:
    g = _gram(x)
    return g[~torch.eye(g.shape[0], dtype=torch.bool, device=g.device)]


#: statistics known by name; any callable tensor -> scalar tensor also works
STATS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "l1": lambda x: x.abs().mean(),
    "l2": lambda x: x.square().mean().sqrt(),
    "mean": lambda x: x.mean(),
    "std": lambda x: x.std(),
    "covl1": lambda x: _gram(x).abs().mean(),
    "covl2": lambda x: _gram(x).square().mean().sqrt(),
    "covoffdiagl1": lambda x: _offdiag(x).abs().mean(),
    "covoffdiagl2": lambda x: _offdiag(x).square().mean().sqrt(),
}


def _stats(spec, what: str) -> dict[str, Callable]:
    if spec is None:
        return {}
    out = {}
    for key, f in spec.items():
        if isinstance(f, str):
            if f not in STATS:
                raise ValueError(
                    f"{what}: unknown statistic {f!r}; known: {sorted(STATS)}, "
                    "or pass a function tensor -> scalar"
                )
            f = STATS[f]
        out[key] = f
    return out


def _flatten(name: str, x):
    """(name, tensor) pairs of a module's output: tuples, lists, dicts nested."""
    if isinstance(x, torch.Tensor):
        yield name, x
    elif isinstance(x, (tuple, list)):
        for i, item in enumerate(x):
            yield from _flatten(f"{name}[{i}]", item)
    elif isinstance(x, Mapping):
        for key, item in x.items():
            yield from _flatten(f"{name}[{key}]", item)


def _recorder(rows: list, row: dict, fdicts: dict):
    def hook(module, args, output):
        with torch.no_grad():
            parts = {"out": output, "in": args}
            for kind, stats in fdicts.items():
                if not stats:
                    continue
                if kind == "param":
                    tensors = [
                        (f"{row['module']}:param[{n}]", p)
                        for n, p in module.named_parameters()
                    ]
                elif kind == "out" and isinstance(output, torch.Tensor):
                    tensors = [(row["module"], output)]
                else:
                    tensors = _flatten(f"{row['module']}:{kind}", parts[kind])
                for name, x in tensors:
                    values = {k: float(f(x.float())) for k, f in stats.items()}
                    rows.append({**row, "module": name, **values})

    return hook


def _loss(lossfn, output, target):
    if callable(lossfn):
        return lossfn(output, target)
    if lossfn == "xent":
        return F.cross_entropy(output, target)
    if lossfn == "mse":
        onehot = F.one_hot(target, num_classes=output.shape[-1])
        return F.mse_loss(output, onehot.to(output.dtype))
    if lossfn == "nll":
        return F.nll_loss(output, target)
    raise ValueError(
        f"lossfn must be 'xent', 'mse', 'nll' or a function, got {lossfn!r}"
    )


def _optimizer_factory(optimizer, lr, mup, filter_trainable_by_name):
    from ._optim import MuAdam, MuAdamW, MuSGD

    if callable(optimizer):
        return optimizer, None
    classes = {
        "sgd": (MuSGD, torch.optim.SGD),
        "adam": (MuAdam, torch.optim.Adam),
        "adamw": (MuAdamW, torch.optim.AdamW),
    }
    if optimizer not in classes:
        raise ValueError(
            f"optimizer must be one of {sorted(classes)} or a function model -> "
            f"optimizer, got {optimizer!r}"
        )
    cls = classes[optimizer][0 if mup else 1]
    if lr is None:
        lr = 0.1 if optimizer == "sgd" else 1e-3

    def make(model):
        params = [
            p
            for n, p in model.named_parameters()
            if filter_trainable_by_name is None or filter_trainable_by_name(n)
        ]
        return cls(params, lr=lr)

    return make, lr


def get_coord_data(
    models: Mapping[int, Callable[[], nn.Module]],
    dataloader,
    optimizer="sgd",
    lr: float | None = None,
    mup: bool = True,
    filter_trainable_by_name: Callable[[str], bool] | None = None,
    *,
    nsteps: int = 3,
    nseeds: int = 1,
    lossfn="xent",
    dict_in_out: bool = False,
    output_name: str = "loss",
    flatten_input: bool = False,
    flatten_output: bool = False,
    filter_module_by_name: Callable[[str], bool] | None = None,
    fix_data: bool = True,
    cuda: bool | None = None,
    output_fdict=None,
    input_fdict=None,
    param_fdict=None,
    show_progress: bool = True,
):
    """Coordinate statistics of every module over a few training steps
    (``mup.coord_check.get_coord_data``'s interface; needs pandas).

    Args:
        models: width -> function building the set-up model (called once per seed,
            after ``torch.manual_seed(seed)``).
        dataloader: iterable of ``(input, target)`` batches (or dicts passed as
            ``model(**batch)`` with ``dict_in_out``); with ``fix_data`` its first
            batch is used at every step.
        optimizer: "sgd", "adam", "adamw" (muP's with ``mup=True``, torch's
            otherwise) or a function model -> optimizer.
        lr: learning rate (default 0.1 for SGD, 1e-3 otherwise).
        filter_trainable_by_name: train only parameters whose name it accepts.
        nsteps, nseeds: steps per run; seeds 0..nseeds-1.
        lossfn: "xent", "mse" (against one-hot targets), "nll" or a function
            (output, target) -> loss; with ``dict_in_out`` the model returns the
            loss (``output[output_name]``, or its first element).
        flatten_input, flatten_output: reshape the input to (batch, -1), the
            output to (-1, last dimension).
        filter_module_by_name: record only modules whose name it accepts.
        cuda: run on CUDA (default: when available).
        output_fdict, input_fdict, param_fdict: statistics of module outputs,
            inputs and parameters, name -> function or a name in :data:`STATS`
            (default: ``{"l1": "l1"}`` for outputs only).
        show_progress: progress bar (when tqdm is installed).

    Returns:
        pandas DataFrame, one row per (seed, width, step, recorded tensor).
    """
    try:
        import pandas as pd
    except ImportError as err:
        raise ImportError("get_coord_data returns a pandas DataFrame") from err
    from ._sweep import _progress

    fdicts = {
        "out": _stats({"l1": "l1"} if output_fdict is None else output_fdict, "out"),
        "in": _stats(input_fdict, "input_fdict"),
        "param": _stats(param_fdict, "param_fdict"),
    }
    make_opt, lr = _optimizer_factory(optimizer, lr, mup, filter_trainable_by_name)
    device = torch.device(
        "cuda" if (torch.cuda.is_available() if cuda is None else cuda) else "cpu"
    )
    if fix_data:
        batches = list(itertools.repeat(next(iter(dataloader)), nsteps))
    else:
        batches = list(itertools.islice(dataloader, nsteps))
    rows: list[dict] = []
    bar = _progress(nseeds * len(models), "coord check", show_progress)
    for seed in range(nseeds):
        torch.manual_seed(seed)
        for width, build in models.items():
            model = build().train().to(device)
            opt = make_opt(model)
            for t, batch in enumerate(batches, 1):
                handles = [
                    m.register_forward_hook(
                        _recorder(
                            rows, {"width": width, "module": name, "t": t}, fdicts
                        )
                    )
                    for name, m in model.named_modules()
                    if filter_module_by_name is None or filter_module_by_name(name)
                ]
                try:
                    loss = _step_loss(
                        model,
                        batch,
                        device,
                        dict_in_out=dict_in_out,
                        output_name=output_name,
                        lossfn=lossfn,
                        flatten_input=flatten_input,
                        flatten_output=flatten_output,
                    )
                finally:
                    for h in handles:
                        h.remove()
                opt.zero_grad()
                loss.backward()
                opt.step()
            bar.update(1)
    bar.close()
    df = pd.DataFrame(rows)
    df["optimizer"] = optimizer if isinstance(optimizer, str) else "custom"
    df["lr"] = lr
    return df


def _step_loss(model, batch, device, *, dict_in_out, output_name, lossfn, **flat):
    if dict_in_out:
        batch = {
            k: v.to(device) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()
        }
        out = model(**batch)
        return out[output_name] if isinstance(out, Mapping) else out[0]
    data, target = (b.to(device) for b in batch)
    if flat["flatten_input"]:
        data = data.reshape(data.shape[0], -1)
    output = model(data)
    if flat["flatten_output"]:
        output = output.reshape(-1, output.shape[-1])
    return _loss(lossfn, output, target)


def plot_coord_data(
    df,
    y: str = "l1",
    save_to=None,
    suptitle: str | None = None,
    x: str = "width",
    hue: str = "module",
    legend="full",
    name_contains: str | None = None,
    name_not_contains: str | None = None,
    loglog: bool = True,
    logbase: float = 2,
    face_color=None,
):
    """One panel per step ``t``: ``y`` against ``x`` (seed mean), one line per
    ``hue`` value (``mup.coord_check.plot_coord_data``'s interface).

    The root module (name "") is left out, as it repeats the output layer. Returns
    the matplotlib figure (saved to ``save_to`` when given).
    """
    import matplotlib

    if save_to is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    df = df[df["module"] != ""]
    if name_contains is not None:
        df = df[df["module"].str.contains(name_contains, regex=False)]
    elif name_not_contains is not None:
        df = df[~df["module"].str.contains(name_not_contains, regex=False)]
    ts = sorted(df["t"].unique())
    fig, axes = plt.subplots(1, len(ts), figsize=(5 * len(ts), 4), squeeze=False)
    if face_color is not None:
        fig.patch.set_facecolor(face_color)
    for ax, t in zip(axes[0], ts):
        at_t = df[df["t"] == t]
        for key, group in at_t.groupby(hue, sort=False):
            curve = group.groupby(x)[y].mean()
            ax.plot(curve.index, curve.values, marker="o", ms=3, label=str(key))
        if loglog:
            ax.set_xscale("log", base=logbase)
            ax.set_yscale("log", base=logbase)
        ax.set_title(f"t={t}")
        ax.set_xlabel(x)
        if t == ts[0]:
            ax.set_ylabel(y)
            if legend:
                ax.legend(fontsize=7)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    if save_to is not None:
        fig.savefig(save_to)
    return fig
