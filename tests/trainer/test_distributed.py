"""Data-parallel training under torchrun: two processes on this CPU (gloo), micronet_tiny,
64² crops, synthetic H&E images with known nuclei, a few iterations.

Each torchrun launch is a subprocess (``python -m torch.distributed.run --standalone
--nproc_per_node 2``) running the real command line; the launches are shared by the
tests through module-scoped fixtures (four launches, about 8 s each on 2 cores).

Dropout: the processes draw their dropout masks from their own torch RNGs (seed + rank),
statistically like one process but not the same masks, so the comparison with a
one-process run turns dropout off (``--dropout 0``); the other checks keep it on, where
identical weights and an exact resume are the harder cases. Batch norm stays in training
mode everywhere: it normalises over the global batch (CpuSyncBatchNorm over gloo).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from micronet.runtime.diagnostics.synthetic import nuclei_image  # noqa: E402
from micronet.runtime.errors import InputError  # noqa: E402
from micronet.trainer.checkpoint import load_checkpoint  # noqa: E402
from micronet.trainer.distributed import HASHES_ENV, DistContext, setup, weights_digest  # noqa: E402
from micronet.trainer.train import TrainConfig, _Sampler, train  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

ITERATIONS = 4  # the resume test stops at half of it
COMMON = [
    "--model", "micronet_tiny", "--crop", "64", "--batch", "2", "--val-every", "2", "--snapshot-every", "100",
    "--no-bf16", "--threads", "1", "--no-progress",
]

# Runs the real command line; on every rank but 0 it first installs an audit hook that
# records each write Python makes (open for writing, mkdir, rename/replace, remove ...).
# safetensors writes from Rust, unseen by the hook, but under a temporary name that
# checkpoint.py then renames from Python, which the hook sees.
LAUNCHER = textwrap.dedent(
    """
    import atexit, os, sys
    rank = os.environ.get("RANK", "0")
    if rank != "0" and os.environ.get("WRITES_LOG"):
        writes = []
        WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

        def hook(event, args):
            paths = []
            if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
                mode, flags = args[1], args[2] if len(args) > 2 else 0
                if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (mode is None and (flags or 0) & WRITE_FLAGS):
                    paths = [args[0]]
            elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.truncate", "os.chmod", "os.utime", "os.symlink", "os.link"):
                paths = [args[0]]
            elif event == "os.rename":
                paths = [args[0], args[1]]
            for p in paths:
                if isinstance(p, (str, bytes, os.PathLike)):
                    writes.append(f"{event} {os.path.realpath(os.fsdecode(p))}")

        @atexit.register
        def dump():
            with open(os.environ["WRITES_LOG"] + f".rank{rank}", "w") as f:
                f.write("\\n".join(writes))

        sys.addaudithook(hook)
    from micronet.cli import main
    sys.exit(main())
    """
)


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four 192² training images and one 128² validation image of blobs at known centres."""
    root = tmp_path_factory.mktemp("ddp_data") / "blobs"
    (root / "images").mkdir(parents=True)
    (root / "points").mkdir()
    rows = []
    for k, (size, count, split) in enumerate([(192, 30, "train")] * 4 + [(128, 12, "val")]):
        image, centres = nuclei_image(size, size, count, seed=k, sigma=4.0)
        Image.fromarray(image).save(root / "images" / f"im{k}.png")
        with (root / "points" / f"im{k}.csv").open("w") as f:
            f.write("x,y\n" + "".join(f"{x},{y}\n" for x, y in centres))
        rows.append(f"im{k},{split}\n")
    (root / "split.csv").write_text("name,split\n" + "".join(rows))
    (root / "dataset.json").write_text(json.dumps({"mpp": 0.5}))
    return root


def torchrun(tmp: Path, *args: str, hashes: Path | None = None) -> tuple[subprocess.CompletedProcess, Path]:
    """``torchrun --nproc_per_node 2 <launcher> train ARGS``; returns the finished process
    and the prefix of the rank-≠0 write records."""
    launcher = tmp / "launch.py"
    launcher.write_text(LAUNCHER)
    writes = tmp / f"writes{time.monotonic_ns()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WRITES_LOG": str(writes)}
    env.pop(HASHES_ENV, None)
    if hashes is not None:
        env[HASHES_ENV] = str(hashes)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(launcher), "train", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done, writes


def log_rows(out: Path) -> list[dict[str, str]]:
    with (out / "log.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def hashes(folder: Path, rank: int) -> list[tuple[int, str]]:
    lines = (folder / f"rank{rank}.txt").read_text().split()
    return [(int(i), h) for i, h in zip(lines[::2], lines[1::2])]


def snapshot(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "last_snapshot.safetensors"))


@pytest.fixture(scope="module")
def no_dropout_pair(synthetic_set: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two processes with batch 2 each, and one process with batch 4, dropout off."""
    tmp = tmp_path_factory.mktemp("ddp_pair")
    data = ["--data", str(synthetic_set), "--iterations", str(ITERATIONS), "--dropout", "0"]
    done, writes = torchrun(tmp, *COMMON, *data, "--out", str(tmp / "two"), hashes=tmp / "hashes")
    cfg = TrainConfig(
        data=str(synthetic_set), model="micronet_tiny", crop=64, batch=4, val_every=2, snapshot_every=100,
        bf16=False, threads=1, iterations=ITERATIONS, dropout=0.0, out=str(tmp / "one"),
    )
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:  # this process is not a torchrun rank
        for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", HASHES_ENV):
            mp.delenv(name, raising=False)
        train(cfg, progress=False)
    torch.set_num_threads(threads)  # train() set 1 for the whole test session
    return {"two": tmp / "two", "one": tmp / "one", "hashes": tmp / "hashes", "writes": writes, "stdout": done.stdout}


@pytest.fixture(scope="module")
def resume_runs(synthetic_set: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """With dropout: an uninterrupted run, and one stopped at half and resumed."""
    tmp = tmp_path_factory.mktemp("ddp_resume")
    data = ["--data", str(synthetic_set)]
    torchrun(tmp, *COMMON, *data, "--iterations", str(ITERATIONS), "--out", str(tmp / "full"), hashes=tmp / "h_full")
    torchrun(tmp, *COMMON, *data, "--iterations", str(ITERATIONS // 2), "--out", str(tmp / "part"), hashes=tmp / "h_part")
    snap = tmp / "part" / "last_snapshot.safetensors"
    _, writes = torchrun(tmp, "--resume", str(snap), "--iterations", str(ITERATIONS), "--no-progress", hashes=tmp / "h_resumed")
    return {"full": tmp / "full", "part": tmp / "part", "h_full": tmp / "h_full", "h_resumed": tmp / "h_resumed", "writes": writes}


def test_ranks_hold_identical_weights_after_every_step(no_dropout_pair, resume_runs):
    for folder, out in [(no_dropout_pair["hashes"], no_dropout_pair["two"]), (resume_runs["h_full"], resume_runs["full"])]:
        rank0, rank1 = hashes(folder, 0), hashes(folder, 1)
        assert [i for i, _ in rank0] == list(range(1, ITERATIONS + 1))
        assert rank0 == rank1, f"ranks disagree in {folder}"
        assert len({h for _, h in rank0}) == ITERATIONS, "every step changes the weights"
        # What rank 0 saved is what both held: the last digest is that of the snapshot.
        saved, _ = load_checkpoint(out / "last_snapshot.safetensors")
        assert weights_digest(saved) == rank0[-1][1]


def test_two_processes_with_batch_b_match_one_process_with_batch_2b(no_dropout_pair):
    two, one = snapshot(no_dropout_pair["two"]), snapshot(no_dropout_pair["one"])
    model_keys = [k for k in one if k.startswith("model.")]
    assert model_keys and set(model_keys) == {k for k in two if k.startswith("model.")}
    for key in model_keys:  # weights and the batch-norm running statistics
        a, b = two[key].double(), one[key].double()
        if not a.is_floating_point():
            assert torch.equal(a, b), key
            continue
        scale = b.abs().max().item()
        assert (a - b).abs().max().item() <= 1e-4 * scale + 1e-7, f"{key}: {(a - b).abs().max().item():.3g} of {scale:.3g}"
    # The logged loss is the global batch's (mean over processes), equal to 5 decimals' rounding.
    loss_two = [float(r["loss"]) for r in log_rows(no_dropout_pair["two"])]
    loss_one = [float(r["loss"]) for r in log_rows(no_dropout_pair["one"])]
    assert len(loss_two) == ITERATIONS and np.allclose(loss_two, loss_one, rtol=0, atol=2e-5), (loss_two, loss_one)


def test_only_rank_0_writes_checkpoints_snapshots_and_logs(no_dropout_pair, resume_runs):
    out = no_dropout_pair["two"]
    assert sorted(p.name for p in out.iterdir()) == ["best.safetensors", "curves.png", "last_snapshot.safetensors", "log.csv"]
    rows = log_rows(out)  # one header, one row per iteration: no second writer
    assert [int(r["iteration"]) for r in rows] == list(range(1, ITERATIONS + 1))
    assert (out / "log.csv").read_text().count("iteration,") == 1
    # Rank 1's own record of every write Python made: its weight hashes (the debugging
    # hook's file outside --out), nothing under the output folder, also when resuming.
    for writes, folder in [(no_dropout_pair["writes"], out), (resume_runs["writes"], resume_runs["part"])]:
        record = Path(f"{writes}.rank1").read_text().splitlines()
        assert any("rank1.txt" in line for line in record), "the audit hook saw rank 1's hash file"
        under_out = [line for line in record if line.split(" ", 1)[1].startswith(str(folder.resolve()))]
        assert not under_out, under_out
    assert no_dropout_pair["stdout"].count("best checkpoint:") == 2, "both ranks finished"


def test_resume_under_torchrun_equals_an_uninterrupted_run(resume_runs):
    full, resumed = snapshot(resume_runs["full"]), snapshot(resume_runs["part"])
    assert full.keys() == resumed.keys()
    for key in full:  # weights, optimiser state, rank 0's RNG: bit for bit
        assert torch.equal(full[key], resumed[key]), key
    # Rank 1's dropout stream came back too: its weights after each resumed step match.
    for rank in (0, 1):
        assert hashes(resume_runs["h_resumed"], rank) == hashes(resume_runs["h_full"], rank)[ITERATIONS // 2 :]
    drop_time = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in log_rows(resume_runs["full"])]
    assert [{k: v for k, v in r.items() if k != "elapsed_s"} for r in log_rows(resume_runs["part"])] == drop_time


# --- in-process pieces: no torchrun needed ----------------------------------------------


def test_each_rank_renders_its_slice_of_one_global_crop_stream(synthetic_set):
    from micronet.trainer.data import load_point_folder

    data = load_point_folder(synthetic_set, "train")
    cfg = TrainConfig(crop=64)

    def sampler() -> _Sampler:
        return _Sampler(data, cfg, data.mpp, np.random.default_rng(3))

    one = sampler().draw_slice(4, DistContext())
    two = [s for rank in (0, 1) for s in sampler().draw_slice(2, DistContext(rank=rank, world=2))]
    for (c1, t1), (c2, t2) in zip(one, two, strict=True):
        assert np.array_equal(c1, c2) and np.array_equal(t1, t2)
    # Both ranks leave the stream in the same state (the snapshot's sampler is everyone's).
    a, b = sampler(), sampler()
    a.draw_slice(2, DistContext(rank=0, world=2))
    b.draw_slice(2, DistContext(rank=1, world=2))
    assert json.dumps(a.state()) == json.dumps(b.state())


def test_process_group_setup_refuses_what_it_cannot_run(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = setup("cpu")
    assert (ctx.rank, ctx.world, ctx.backend, ctx.is_main) == (0, 1, None, True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(InputError, match="cuda:LOCAL_RANK"):
        setup("cuda:1")  # under torchrun the process's GPU comes from LOCAL_RANK
    with pytest.raises(InputError, match="'cpu' \\(gloo\\) or 'cuda' \\(NCCL\\)"):
        setup("mps")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(InputError, match="WORLD_SIZE"):
        setup("cpu")
    with pytest.raises(ValueError, match="dropout"):
        TrainConfig(dropout=1.0).check()
