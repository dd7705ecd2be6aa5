"""muP on an MLP: coordinate check, width transfer and depth transfer.

Digits MLP (scikit-learn's bundled 8x8 digits, nothing downloaded), trained
with Adam. Three figures in --out:

* ``coord_check_mlp.png``: mean |activation| and |change| per layer against
  width, muP (flat) against SP (hidden and output layers grow like width);
* ``transfer_mlp.png``: mean training loss against log2 learning rate for
  widths 64..1024, muP against SP (TP5 Figure 1);
* ``transfer_resmlp.png``: the same across depths 2..16 of a residual MLP with
  TP6's one-layer block ``h + m MS(|W h|)``, Depth-muP against SP (TP6).

The sweeps compare the minibatch training loss averaged over the run (a fixed
budget of steps). On the residual MLP every depth fits the 1,438 training digits
within its 150 steps (full-training-set loss ~1e-3 near the optimum), so the loss
after the last step mostly reflects Adam's loss spikes once the data are fitted,
while the average over the run measures how fast each model trains.

Run: ``PYTHONPATH=src python examples/mup_mlp.py --out figures`` (a few minutes
on 2 cores; rerunning reuses the finished trials stored in <out>/sweeps.db).
``--parts depth`` runs only the depth sweep; ``--seeds 0,1,2`` averages seeds.
"""

from _mup_common import coordinate_check, ints, parser, sweep, verdict


def main() -> int:
    p = parser(__doc__.splitlines()[0], "64,128,256,512,1024", "64,128,256,512,1024")
    p.add_argument("--depths", default="2,4,8,16")
    p.add_argument("--depth-width", type=int, default=64)
    p.add_argument("--parts", default="coord,width,depth", help="comma list")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    unknown = parts - {"coord", "width", "depth"}
    if unknown:
        p.error(f"--parts takes coord, width, depth; got {sorted(unknown)}")

    ok = True
    if "coord" in parts:
        coordinate_check("mlp", ints(args.coord_widths), args.out)
    if "width" in parts:
        ok &= verdict(sweep("mlp", args, widths=ints(args.widths)))
    if "depth" in parts:
        depths = ints(args.depths)
        depth = sweep("resmlp", args, widths=(args.depth_width,), depths=depths)
        ok &= verdict(depth)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
