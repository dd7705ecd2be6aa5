"""Figures (matplotlib is an optional extra: ``pip install tensorprograms[plots]``)."""

from __future__ import annotations

import os

__all__ = ["convergence_plot", "require_matplotlib"]


def require_matplotlib():
    """Import matplotlib with a headless backend, or explain how to install it."""
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "plots need matplotlib: pip install 'tensorprograms[plots]'"
        ) from exc
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def convergence_plot(results: dict, out: str, filename: str = "convergence.png") -> str:
    """Log mean error against log width for several :class:`~tour.Convergence`.

    Args:
        results: ``{name: Convergence}``.
        out: output directory (created if missing).

    Returns:
        The path of the PNG written.
    """
    plt = require_matplotlib()
    os.makedirs(out, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, conv in results.items():
        w, e, s = conv.widths.numpy(), conv.errors.numpy(), conv.sem.numpy()
        ax.errorbar(
            w, e, yerr=s, marker="o", capsize=2, label=f"{name} ({conv.slope:+.2f})"
        )
    w = results[next(iter(results))].widths.numpy()
    ref = [float(e) for e in next(iter(results.values())).errors][0]
    ax.plot(w, ref * (w / w[0]) ** -0.5, "k--", lw=1, label="slope -1/2")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("width n")
    ax.set_ylabel("mean |finite - limit|")
    ax.set_title("Finite width approaches the Master Theorem limit")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out, filename)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
