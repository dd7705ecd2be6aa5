"""muP on an MLP: coordinate check, width transfer and depth transfer.

Digits MLP (scikit-learn's bundled 8x8 digits, nothing downloaded), trained
with Adam. Three figures in --out:

* ``coord_check_mlp.png``: mean |activation| and |change| per layer against
  width, muP (flat) against SP (hidden and output layers grow like width);
* ``transfer_mlp.png``: mean training loss against log2 learning rate for
  widths 64..1024, muP against SP (TP5 Figure 1);
* ``transfer_resmlp.png``: the same across depths 2..16 of a residual MLP with
  one layer per block, Depth-muP against SP (TP6).

Run: ``PYTHONPATH=src python examples/mup_mlp.py --out figures`` (a few minutes
on 2 cores; rerunning reuses the finished trials stored in <out>/sweeps.db).
"""

from _mup_common import coordinate_check, ints, parser, sweep, verdict


def main() -> int:
    p = parser(__doc__.splitlines()[0], "64,128,256,512,1024", "64,128,256,512,1024")
    p.add_argument("--depths", default="2,4,8,16")
    p.add_argument("--depth-width", type=int, default=64)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    coordinate_check("mlp", ints(args.coord_widths), args.out)
    width = sweep("mlp", args, widths=ints(args.widths))
    ok_width = verdict(width)
    depth = sweep("resmlp", args, widths=(args.depth_width,), depths=ints(args.depths))
    # across depth the acceptance is on the optimum only (TP6: transfer of the
    # optimum); whether deeper is better on this small task is reported above
    ok_depth = verdict(depth, require_not_worse=False)
    return 0 if ok_width and ok_depth else 1


if __name__ == "__main__":
    raise SystemExit(main())
