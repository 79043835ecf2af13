"""Two MicroNet checkpoints as one ONNX file that averages their maps (an output ensemble).

    python tools/make_ensemble.py A.safetensors B.safetensors -o pair.onnx

Both networks run side by side on the same input; the file outputs the mean of their
proximity maps and of their class logits, and carries A's metadata (ξ, minimum distance,
colour statistics), so both should share ξ. Used in the fifteenth round of issue 19
(docs/results.md) for `accurate` (A) and the default (B): an experiment, not a bundled
model. Its cost is the sum of both networks' (bench_pareto counts it from the graph).
"""

from __future__ import annotations

import argparse

from torch import nn


class Pair(nn.Module):
    """The mean of two MicroNets' outputs, as the exporter expects of one network."""

    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.members = nn.ModuleList([a, b])
        self.class_head = a.class_head  # read only by the exporter's has_class_head: forward_all averages both heads

    @property
    def aligned_inputs(self) -> bool:
        return self.members[0].aligned_inputs

    @aligned_inputs.setter
    def aligned_inputs(self, value: bool) -> None:
        for m in self.members:
            m.aligned_inputs = value

    def forward(self, x):
        return sum(m(x) for m in self.members) / len(self.members)

    def forward_all(self, x):
        outs = [m.forward_all(x) for m in self.members]
        return sum(o[0] for o in outs) / len(outs), sum(o[1] for o in outs) / len(outs)


def main(argv: list[str] | None = None) -> None:
    from micronet.export.onnx import export_model
    from micronet.trainer.checkpoint import load_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", help="first checkpoint (its metadata is kept)")
    parser.add_argument("b", help="second checkpoint")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args(argv)
    a, info = load_checkpoint(args.a)
    b, info_b = load_checkpoint(args.b)
    if abs(info.threshold - info_b.threshold) > 1e-6:
        print(f"note: the members' ξ differ ({info.threshold:.3f}, {info_b.threshold:.3f}); the file keeps the first's")
    export_model(Pair(a.eval(), b.eval()), info, args.output)


if __name__ == "__main__":
    main()
