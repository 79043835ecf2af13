"""Training step time: each network variant, fp32 against bf16 autocast, NCHW against
channels-last, in one run on this machine. Writes results/train_step.json and .md.

    python benchmarks/bench_train.py [--variants micronet micronet_wide] [--steps 5] [--batch 4] [--crop 200]

One step is what ``micronet train`` does per iteration: forward, Eq. 2 loss, backward,
SGD with Nesterov momentum, on a batch of random crops and targets (the time does not
depend on the values). Best of ``--steps`` after two warm-up steps. The ratios (bf16 /
fp32, channels-last / NCHW, each variant / micronet) carry over to other machines of the
same kind; the seconds do not. bf16 is fast only where the CPU has it natively
(AVX512_BF16 / AMX-BF16); the trainer's default follows that (``resolve_bf16``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402


def _step_time(variant: str, bf16: bool, channels_last: bool, batch: int, crop: int, steps: int) -> float:
    import torch
    from micronet.trainer.loss import weighted_mse
    from micronet.trainer.models import create_model

    torch.manual_seed(0)
    model = create_model(variant).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    x = torch.randn(batch, 3, crop, crop).contiguous(memory_format=fmt)
    y = torch.rand(batch, 1, crop, crop) * 5.0
    best = float("inf")
    for k in range(steps + 2):
        t0 = time.perf_counter()
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = model(x)
        loss = weighted_mse(pred.float(), y)  # the loss in float32, as in training
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if k >= 2:  # two warm-up steps: allocator, oneDNN primitive caches
            best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["micronet", "micronet_tiny", "micronet_wide"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--crop", type=int, default=200)
    args = parser.parse_args(argv)

    from micronet.runtime.machine import has_native_bf16

    rows = []
    for variant in args.variants:
        for bf16 in (False, True):
            for channels_last in (False, True):
                s = _step_time(variant, bf16, channels_last, args.batch, args.crop, args.steps)
                rows.append({"variant": variant, "bf16": bf16, "channels_last": channels_last, "s_per_step": s})
                print(f"{variant} {'bf16' if bf16 else 'fp32'} {'channels-last' if channels_last else 'NCHW'}: {s:.3f} s/step", flush=True)
    base = {r["variant"]: r["s_per_step"] for r in rows if not r["bf16"] and not r["channels_last"]}
    ref = base.get("micronet", next(iter(base.values())))
    for r in rows:
        r["vs_fp32_nchw"] = r["s_per_step"] / base[r["variant"]]
        r["vs_micronet_fp32_nchw"] = r["s_per_step"] / ref
    lines = [
        f"Batch {args.batch} of {args.crop}², one SGD step (forward, Eq. 2, backward, update), best of {args.steps}; "
        f"native bf16 on this CPU: {'yes' if has_native_bf16() else 'no'}.",
        "",
        "| variant | precision | layout | s / step | × its fp32 NCHW | × micronet fp32 NCHW |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['variant']}` | {'bf16 autocast' if r['bf16'] else 'fp32'} | {'channels-last' if r['channels_last'] else 'NCHW'} | "
            f"{r['s_per_step']:.3f} | {r['vs_fp32_nchw']:.2f} | {r['vs_micronet_fp32_nchw']:.2f} |"
        )
    write_results("train_step", {"settings": vars(args), "native_bf16": has_native_bf16(), "rows": rows}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
