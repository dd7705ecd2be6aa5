"""Shared steps of the muP examples: coordinate check and transfer sweep."""

from __future__ import annotations

import argparse
from pathlib import Path

import optuna

from tensorprograms.mup import builtin_coord_check, plot_coord_checks, transfer_sweep


def parser(description: str, widths: str, coord_widths: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", type=Path, default=Path("figures"))
    p.add_argument("--widths", default=widths, help="sweep widths, comma list")
    p.add_argument("--coord-widths", default=coord_widths)
    p.add_argument("--seeds", default="0", help="sweep seeds, comma list")
    p.add_argument("--storage", default=None, help="default: <out>/sweeps.db")
    p.add_argument("--no-progress", action="store_true")
    return p


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def coordinate_check(task: str, widths, out: Path, log2_lr=None, depth=None):
    """muP against SP; prints both tables, saves the figure, returns results."""
    results = {
        p: builtin_coord_check(
            task, p, widths, log2_lr=log2_lr, steps=3, seeds=(0, 1), depth=depth
        )
        for p in ("mup", "sp")
    }
    for p, r in results.items():
        print(f"-- coordinate check, {task}, {p} --")
        print(r.table())
    path = out / f"coord_check_{task}.png"
    plot_coord_checks({"muP": results["mup"], "SP": results["sp"]}, path)
    print(f"figure: {path}\n")
    return results


def sweep(task: str, args, widths=None, depths=None):
    """Transfer sweep stored in ``args.storage`` (resumable); saves figures."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = args.storage or f"sqlite:///{args.out.resolve()}/sweeps.db"
    result = transfer_sweep(
        task,
        widths=widths,
        depths=depths,
        seeds=ints(args.seeds),
        storage=storage,
        show_progress=not args.no_progress,
        out=args.out,
    )
    print(result.summary())
    print(f"figure: {args.out / f'transfer_{task}.png'}\n")
    return result


def verdict(result, mup_max=1, sp_min=2, require_not_worse=True) -> bool:
    """The acceptance check: muP's optimum moves <= mup_max octaves, SP's >=
    sp_min, and (if required) in muP the largest model is not worse at the
    transferred lr."""
    tl = result.transferred_losses("mup")
    sizes = result.sizes
    ok = result.shift("mup") <= mup_max and result.shift("sp") >= sp_min
    if require_not_worse:
        ok = ok and tl[sizes[-1]] <= tl[sizes[0]]
    print(
        f"optimum shift: muP {result.shift('mup'):.0f}, SP {result.shift('sp'):.0f} "
        f"octaves; muP loss at the transferred lr {tl[sizes[0]]:.4f} "
        f"({sizes[0]}) -> {tl[sizes[-1]]:.4f} ({sizes[-1]}): "
        f"{'transfer holds' if ok else 'transfer NOT shown'}"
    )
    return ok
