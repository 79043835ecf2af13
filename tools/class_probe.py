"""How much phenotype a frozen network's features hold: fits small heads (a linear one and
MLPs, the shape of ``MicroNet.class_head``) on the features ``tools/class_features.py``
cached around labelled CRCHisto *training* nuclei, and scores each on a fifth of the
training images held out by image (the nucleus's own pixel, the first view), as the
weighted-average F1 of the SC-CNN protocol. No validation or test image is touched.

    python tools/class_probe.py runs/classhead/features.npz

A head on a frozen trunk keeps the detection exactly; this says whether the trunk's
features are enough for classes, before paying for joint training.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from micronet.runtime.evaluation.class_metrics import classification_scores

HEADS = [(), (32,), (64,), (64, 64)]


def _split(image: np.ndarray, n_images: int, seed: int) -> np.ndarray:
    held = np.random.default_rng(seed).permutation(n_images)[: n_images // 5]
    return np.isin(image, held)


def _head(cin: int, hidden: tuple[int, ...], k: int) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for h in hidden:
        layers += [torch.nn.Linear(cin, h), torch.nn.BatchNorm1d(h), torch.nn.ReLU()]
        cin = h
    return torch.nn.Sequential(*layers, torch.nn.Linear(cin, k))


def fit(x: np.ndarray, y: np.ndarray, hidden: tuple[int, ...], balance: float, epochs: int = 8) -> torch.nn.Sequential:
    """AdamW, one-cycle, batches of 1024; class weights (share)^-balance."""
    torch.manual_seed(0)
    k = int(y.max()) + 1
    net = _head(x.shape[1], hidden, k)
    counts = np.bincount(y, minlength=k)
    weight = torch.tensor((counts.sum() / counts / k) ** balance, dtype=torch.float32)
    steps = epochs * (len(y) // 1024)
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 4e-3, total_steps=steps)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(steps):
        idx = torch.randint(0, len(yt), (1024,))
        loss = torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx], weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("features")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--channels", type=int, help="only the first N feature channels (block 10's input is the first 80 of the wide network)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    d = np.load(args.features)
    x, y = d["features"][:, : args.channels].astype(np.float32), d["labels"].astype(np.int64)
    held = _split(d["image"], len(d["names"]), args.seed)
    train, test = ~held, held & (d["distance"] == 0) & (d["view"] == 0)
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    x = (x - mu) / sd
    names = [str(c) for c in d["classes"]]
    print(f"{train.sum()} training vectors; scored on {test.sum()} nuclei of {len(np.unique(d['image'][held]))} held-out images")
    print("| head (hidden widths) | class weights | weighted F1 | " + " | ".join(names) + " |")
    for hidden in HEADS:
        for balance in (0.0, 0.5):
            net = fit(x[train], y[train], hidden, balance)
            with torch.no_grad():
                pred = net(torch.from_numpy(x[test])).argmax(1).numpy()
            s = classification_scores(y[test], pred, names)
            print(f"| {list(hidden) or 'linear'} | share^-{balance:g} | {s.weighted_f1:.4f} | " + " | ".join(f"{f:.3f}" for f in s.f1) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
