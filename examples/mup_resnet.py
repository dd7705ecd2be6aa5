"""muP on a ResNet-style convnet: coordinate check and width transfer.

A small residual convnet (3x3 convolutions, 2 blocks of two convolutions, global
average pooling, ``MuReadout``) on scikit-learn's 8x8 digits seen as images,
trained with Adam; the width is the number of channels. Convolution weights with
channels in and out are muP's hidden weights (Adam lr / fan_in multiplier).
Figures in --out: ``coord_check_resnet.png`` and ``transfer_resnet.png``.

Run: ``PYTHONPATH=src python examples/mup_resnet.py --out figures``
(a few minutes on 2 cores with the default widths 16..128).
"""

from _mup_common import coordinate_check, ints, parser, sweep, verdict


def main() -> int:
    args = parser(__doc__.splitlines()[0], "16,32,64,128", "32,64,128,256").parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    coordinate_check("resnet", ints(args.coord_widths), args.out)
    result = sweep("resnet", args, widths=ints(args.widths))
    return 0 if verdict(result) else 1


if __name__ == "__main__":
    raise SystemExit(main())
