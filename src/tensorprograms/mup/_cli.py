"""Command-line subcommands for muP diagnosis and transfer sweeps.

``tensorprograms coord-check``: coordinate check of a built-in model, muP
against SP, table and figure. ``tensorprograms transfer``: learning-rate
transfer sweep stored in an Optuna study (resumable; many workers may share a
database URL). ``tensorprograms audit``: the audit table of a built-in model.

Wire into an ``argparse`` CLI with :func:`add_subcommands`; every subcommand
sets ``handler`` (and ``func``, the same) to ``handler(args) -> int``, the exit
status.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _lrs(text: str) -> tuple[float, ...]:
    """``"-13:-3"`` (integers, inclusive), ``"-13:-3:0.5"`` or ``"-10,-8,-6"``."""
    try:
        if ":" in text:
            parts = [float(v) for v in text.split(":")]
            lo, hi = parts[0], parts[1]
            step = parts[2] if len(parts) > 2 else 1.0
            if step <= 0 or hi < lo:
                raise ValueError
            n = int(round((hi - lo) / step)) + 1
            return tuple(lo + i * step for i in range(n))
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected log2 learning rates as LO:HI[:STEP] or a comma list, "
            f"got {text!r}"
        ) from None


def add_subcommands(subparsers) -> None:
    """Add ``coord-check``, ``transfer`` and ``audit`` to an argparse
    ``subparsers`` object (from ``parser.add_subparsers()``)."""
    from ._tasks import TASKS

    p = subparsers.add_parser(
        "coord-check",
        help="coordinate check of a built-in model, muP against SP",
        description="Train a built-in model a few Adam steps at several widths, "
        "in muP and SP; print the log-log slope of every layer's coordinate size "
        "against width and save the figure. Exit status 1 if muP fails.",
    )
    p.add_argument("--task", choices=TASKS, default="mlp")
    p.add_argument("--widths", type=_ints, default=None, help="e.g. 64,128,256")
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--seeds", type=_ints, default=(0, 1))
    p.add_argument(
        "--log2-lr",
        type=float,
        default=None,
        help="default: the task's, near muP's optimum",
    )
    p.add_argument("--tol", type=float, default=0.25)
    p.add_argument("--out", type=Path, default=Path("figures"))
    p.set_defaults(func=run_coord_check, handler=run_coord_check)

    p = subparsers.add_parser(
        "transfer",
        help="learning-rate transfer sweep, muP against SP (Optuna study)",
        description="Sweep the Adam learning rate of a built-in task over widths "
        "(and depths) in muP and SP. Every trial is stored in an Optuna study: "
        "kill and rerun to resume; run the same command on several machines with a "
        "database URL to share the work. Prints and plots loss against log2 "
        "learning rate and writes the chosen HPs (JSON).",
    )
    p.add_argument("--task", choices=TASKS, default="mlp")
    p.add_argument("--widths", type=_ints, default=None)
    p.add_argument("--depths", type=_ints, default=None)
    p.add_argument("--parametrizations", default="mup,sp", help="comma list of mup, sp")
    p.add_argument(
        "--lrs",
        type=_lrs,
        default=None,
        help="log2 lrs, e.g. --lrs=-13:-3 or --lrs=-10,-8,-6",
    )
    p.add_argument(
        "--sampler",
        choices=("grid", "tpe", "random"),
        default="grid",
        help="grid over --lrs, or an Optuna sampler in --lr-range",
    )
    p.add_argument(
        "--lr-range", type=_lrs, default=(-14.0, -4.0), help="e.g. --lr-range=-14:-4"
    )
    p.add_argument("--n-trials", type=int, default=None)
    p.add_argument("--seeds", type=_ints, default=(0,))
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--storage", default="sqlite:///transfer.db")
    p.add_argument("--study-name", default=None)
    p.add_argument("--out", type=Path, default=Path("figures"))
    p.add_argument("--target-width", type=int, default=None)
    p.add_argument("--target-depth", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-wait", action="store_true", help="do not wait for others")
    p.set_defaults(func=run_transfer, handler=run_transfer)

    p = subparsers.add_parser(
        "audit",
        help="muP audit table of a built-in model",
        description="Print every parameter's muP role, init std, multiplier and "
        "learning-rate factor for a built-in model, and what may break transfer.",
    )
    p.add_argument("--task", choices=TASKS, default="mlp")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--parametrization", choices=("mup", "sp"), default="mup")
    p.set_defaults(func=run_audit, handler=run_audit)


def run_coord_check(args) -> int:
    """Handler of ``tensorprograms coord-check``."""
    from ._coord import builtin_coord_check, plot_coord_checks

    results = {}
    for p in ("mup", "sp"):
        results[p] = builtin_coord_check(
            args.task,
            p,
            args.widths,
            log2_lr=args.log2_lr,
            steps=args.steps,
            seeds=args.seeds,
            depth=args.depth,
            tol=args.tol,
        )
        print(f"== {p} ==")
        print(results[p].table())
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"coord_check_{args.task}.png"
    plot_coord_checks({"muP": results["mup"], "SP": results["sp"]}, path)
    print(f"figure: {path}")
    return 0 if results["mup"].passed else 1


def run_transfer(args) -> int:
    """Handler of ``tensorprograms transfer``."""
    import optuna

    from ._sweep import transfer_sweep

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lrs = args.lrs
    if args.sampler == "tpe":
        lrs = optuna.samplers.TPESampler(seed=0)
    elif args.sampler == "random":
        lrs = optuna.samplers.RandomSampler(seed=0)
    if args.sampler != "grid" and len(args.lr_range) < 2:
        raise SystemExit("--lr-range must be LO:HI for a sampler")
    result = transfer_sweep(
        args.task,
        widths=args.widths,
        depths=args.depths,
        parametrizations=tuple(v for v in args.parametrizations.split(",") if v),
        lrs=lrs,
        seeds=args.seeds,
        steps=args.steps,
        storage=args.storage,
        study_name=args.study_name,
        n_trials=args.n_trials,
        lr_range=(args.lr_range[0], args.lr_range[-1]),
        wait=not args.no_wait,
        show_progress=not args.no_progress,
        out=args.out,
        target_width=args.target_width,
        target_depth=args.target_depth,
    )
    print(result.summary())
    print(f"figure and chosen HPs in {args.out}/")
    return 0


def run_audit(args) -> int:
    """Handler of ``tensorprograms audit``."""
    import warnings

    from ._audit import TransferWarning, audit
    from ._tasks import get_task

    task = get_task(args.task)
    model = task.build(args.width, None, args.parametrization)
    opt = task.optimizer(model, 1e-3, args.parametrization)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TransferWarning)
        report = audit(model, opt, example_input=task.eval_batch[0][:2])
    print(report.table())
    return 0


def main(argv=None) -> int:
    """Stand-alone entry: ``python -m tensorprograms.mup._cli transfer ...``."""
    parser = argparse.ArgumentParser(prog="tensorprograms")
    sub = parser.add_subparsers(dest="command", required=True)
    add_subcommands(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
