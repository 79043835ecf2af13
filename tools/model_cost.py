"""Parameters and compute of each registered network, for docs/architecture.md.

    python tools/model_cost.py [--size 500] [--json benchmarks/results/model_cost.json]

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one RGB image of
``size × size`` (2 FLOPs per multiply-add, convolutions and transposed convolutions;
batch norm and activations are not counted), parameters by summing the weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=500, help="square input side (default 500)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from micronet.trainer.models import create_model, list_models

    rows = []
    for name in list_models():
        model = create_model(name).eval()
        cfg = model.config_dict()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, args.size, args.size))
        rows.append(
            {
                "variant": name,
                "widths": "-".join(str(w) for w in cfg.get("widths", [])),
                "context_channels": cfg.get("context_channels"),
                "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                "gflop": round(counter.get_total_flops() / 1e9, 1),
            }
        )
    print(f"| variant | widths | context ch. | parameters | GFLOP / {args.size}² |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['variant']}` | {r['widths']} | {r['context_channels']} | {r['parameters_m']} M | {r['gflop']} |")
    if args.json:
        args.json.write_text(json.dumps({"size": args.size, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
