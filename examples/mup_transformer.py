"""muP on a GPT-style transformer: coordinate check and width transfer.

A character-level transformer (2 pre-LayerNorm blocks, 4 heads, context 32)
trained with Adam on the source text of Python's ``textwrap`` module (nothing
downloaded). muP uses ``MuReadout`` and attention logits ``q.k / d_head`` (times
sqrt(base d_head), so muP equals SP at the base width 32); SP uses
``1/sqrt(d_head)``. Figures in --out:

* ``coord_check_transformer.png``: SP's attention logits, MLP and readout grow
  with width, muP's stay flat;
* ``transfer_transformer.png``: mean training loss against log2 learning rate.

Run: ``PYTHONPATH=src python examples/mup_transformer.py --out figures``
(about 3 minutes on 2 cores with the default widths 32, 64, 128).
"""

from _mup_common import coordinate_check, ints, parser, sweep, verdict


def main() -> int:
    args = parser(__doc__.splitlines()[0], "32,64,128", "32,64,128,256").parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    coordinate_check("transformer", ints(args.coord_widths), args.out)
    result = sweep("transformer", args, widths=ints(args.widths))
    return 0 if verdict(result) else 1


if __name__ == "__main__":
    raise SystemExit(main())
