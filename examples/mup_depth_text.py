"""Depth-muP on a task the model cannot fit: next-character prediction.

The built-in ``resmlp`` task fits all 1,438 training digits within its budget, so
depth cannot show there that it helps. Here the same residual MLP (TP6's
one-layer block ``h + m MS(|W h|)``, Depth-muP against SP) predicts the next
character of the source of Python's ``textwrap`` module from the previous
``--context`` characters (one-hot, flattened), a task whose training loss stays
far above zero for the whole budget. Writes ``transfer_chars.png``, ``.txt``
and ``hparams_chars.json`` into ``--out``.

Run: ``PYTHONPATH=src python examples/mup_depth_text.py --out figures`` (about
two minutes on 2 cores; finished trials are kept in <out>/sweeps.db).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import optuna
import torch
from torch import nn

from tensorprograms.mup import ResidualMLP, Task, stdlib_text, transfer_sweep


class OneHotResidualMLP(nn.Module):
    """``ResidualMLP`` on the flattened one-hot code of ``context`` tokens."""

    def __init__(self, width, depth, parametrization, vocab, context):
        super().__init__()
        self.vocab = vocab
        self.net = ResidualMLP(
            width, depth, context * vocab, vocab, parametrization, base_depth=2
        )

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = nn.functional.one_hot(idx, self.vocab).float().flatten(1)  # (b, k*V)
        return self.net(x)  # (batch, vocab)


def char_task(context: int, steps: int) -> Task:
    text = stdlib_text()
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    tokens = torch.tensor([index[c] for c in text], dtype=torch.int64)

    def batches(seed, batch_size=128):
        gen = torch.Generator().manual_seed(seed)
        offsets = torch.arange(context)
        while True:
            start = torch.randint(
                0, len(tokens) - context - 1, (batch_size,), generator=gen
            )
            yield tokens[start[:, None] + offsets], tokens[start + context]

    return Task(
        name="chars",
        module=lambda w, d, p: OneHotResidualMLP(w, d, p, len(vocab), context),
        batches=batches,
        eval_batch=next(batches(12345, 4096)),
        loss_fn=nn.functional.cross_entropy,  # logits (batch, vocab), y (batch)
        base_width=64,
        base_depth=2,
        widths=(64,),
        depths=(2, 4, 8, 16),
        log2_lrs=tuple(float(v) for v in range(-11, -3)),
        steps=steps,
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("figures"))
    p.add_argument("--depths", default="2,4,8,16")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--context", type=int, default=8)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--storage", default=None, help="default: <out>/sweeps.db")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    result = transfer_sweep(
        char_task(args.context, args.steps),
        widths=(args.width,),
        depths=tuple(int(d) for d in args.depths.split(",")),
        seeds=tuple(int(s) for s in args.seeds.split(",")),
        storage=args.storage or f"sqlite:///{args.out.resolve()}/sweeps.db",
        show_progress=not args.no_progress,
        out=args.out,
    )
    print(result.summary())
    tl = result.transferred_losses("mup")
    small, large = result.sizes[0], result.sizes[-1]
    print(
        f"Depth-muP loss at the lr tuned at depth {small[1]}: {tl[small]:.4f}; "
        f"at depth {large[1]}: {tl[large]:.4f}"
    )
    return 0 if result.shift("mup") <= 1 and tl[large] <= tl[small] else 1


if __name__ == "__main__":
    raise SystemExit(main())
