"""The training loop on real images: checkpoints, resume, fine-tuning, auxiliary data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from micronet.trainer.checkpoint import load_checkpoint, read_info  # noqa: E402
from micronet.trainer.train import TrainConfig, train  # noqa: E402


@pytest.fixture(scope="module")
def small_set(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four CRCHisto training images and two validation images, linked into a folder."""
    root = tmp_path_factory.mktemp("crc_small") / "crchisto"
    (root / "images").mkdir(parents=True)
    (root / "points").mkdir()
    names = {"img1": "train", "img2": "train", "img3": "train", "img4": "train"}
    with (shared_data / "crchisto" / "split.csv").open() as f:
        vals = [r["name"] for r in csv.DictReader(f) if r["split"] == "val"][:2]
    names.update({v: "val" for v in vals})
    for name in names:
        (root / "images" / f"{name}.png").symlink_to(shared_data / "crchisto" / "images" / f"{name}.png")
        (root / "points" / f"{name}.csv").symlink_to(shared_data / "crchisto" / "points" / f"{name}.csv")
    (root / "split.csv").write_text("name,split\n" + "".join(f"{n},{s}\n" for n, s in names.items()))
    return root


def quick_config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        data=str(data), model="micronet_tiny", iterations=6, batch=2, crop=96, val_every=3, snapshot_every=3,
        out=str(out), bf16=False, threads=2,
    )
    return TrainConfig(**{**base, **kw})


def state_of(path: Path) -> dict[str, np.ndarray]:
    model, _ = load_checkpoint(path)
    return {k: v.numpy() for k, v in model.state_dict().items()}


def test_training_writes_a_checkpoint_with_metadata_log_and_plot(small_set, tmp_path):
    best = train(quick_config(small_set, tmp_path / "run"), progress=False)
    info = read_info(best)
    assert info.mpp == pytest.approx(0.55)
    assert info.architecture["name"] == "micronet" and info.architecture["widths"] == [8, 16, 32, 32]
    assert 0 < info.threshold < 5 and info.min_distance == 3
    assert info.provenance["config"]["iterations"] == 6 and "val_f1" in info.provenance
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[2]["val_f1"] and float(rows[2]["val_f1"]) >= 0
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000


def test_resume_reproduces_an_uninterrupted_run(small_set, tmp_path):
    train(quick_config(small_set, tmp_path / "full"), progress=False)
    train(quick_config(small_set, tmp_path / "part", iterations=3), progress=False)
    with (tmp_path / "part" / "log.csv").open("a") as f:
        f.write("4,9.99,0.01,,,,,1.0\n")  # a row the interrupted run wrote after its snapshot
    train(quick_config(small_set, tmp_path / "part"), resume=tmp_path / "part" / "last_snapshot.safetensors", progress=False)
    full = state_of(tmp_path / "full" / "last_snapshot.safetensors")
    resumed = state_of(tmp_path / "part" / "last_snapshot.safetensors")
    for key in full:
        np.testing.assert_array_equal(full[key], resumed[key], err_msg=key)
    log = list(csv.DictReader((tmp_path / "part" / "log.csv").open()))
    assert [int(r["iteration"]) for r in log] == [1, 2, 3, 4, 5, 6]


def test_fine_tuning_freezes_the_first_k_blocks(small_set, tmp_path):
    start = train(quick_config(small_set, tmp_path / "base", iterations=3), progress=False)
    tuned = train(quick_config(small_set, tmp_path / "tuned", init=str(start), freeze_blocks=5, val_every=100), progress=False)
    before, after = load_checkpoint(start)[0], load_checkpoint(tuned)[0]
    frozen = {id(p) for blk in after.blocks()[:5] for m in blk for p in m.parameters()}
    names_frozen = [n for n, p in after.named_parameters() if id(p) in frozen]
    b, a = dict(before.named_parameters()), dict(after.named_parameters())
    assert all(torch.equal(b[n], a[n]) for n in names_frozen)
    assert any(not torch.equal(b[n], a[n]) for n in a if n not in names_frozen)
    assert read_info(tuned).mean == read_info(start).mean, "fine-tuning keeps the normalisation"


def test_auxiliary_data_at_another_resolution_and_a_fraction_of_the_target(small_set, shared_data, tmp_path):
    cfg = quick_config(
        small_set, tmp_path / "aux", iterations=2, val_every=100, target_fraction=0.5,
        aux_data=str(shared_data / "monuseg"), aux_fraction=0.5, gamma=2.0,
    )
    info = read_info(train(cfg, progress=False))
    assert info.mpp == pytest.approx(0.55), "the model keeps the target set's pixel size"


def test_distillation_adds_the_teachers_map_as_a_second_target(small_set, tmp_path):
    # The fast-cpu recipe in small: fine-tune as ReLU with the ELU model as teacher.
    # β = 0 must leave training exactly as without a teacher (same seed, same crops);
    # β = 1 trains on the teacher's map alone and ends elsewhere.
    base = train(quick_config(small_set, tmp_path / "base", iterations=4, val_every=100), progress=False)
    common = dict(init=str(base), activation="relu", iterations=4, val_every=100)
    plain = state_of(train(quick_config(small_set, tmp_path / "plain", **common), progress=False))
    zero = train(quick_config(small_set, tmp_path / "zero", teacher=str(base), teacher_weight=0.0, **common), progress=False)
    full = train(quick_config(small_set, tmp_path / "full", teacher=str(base), teacher_weight=1.0, **common), progress=False)
    assert all(np.array_equal(plain[k], v) for k, v in state_of(zero).items())
    assert any(not np.array_equal(plain[k], v) for k, v in state_of(full).items())
    info = read_info(full)
    assert info.architecture["activation"] == "relu" and info.provenance["config"]["teacher"] == str(base)
    # A teacher at another pixel size is refused.
    with pytest.raises(ValueError, match="µm/px"):
        train(quick_config(small_set, tmp_path / "bad", teacher=str(base), model_mpp=0.25, iterations=1), progress=False)


@pytest.mark.parametrize(
    "kw, text",
    [
        (dict(freeze_blocks=3), "needs init"),
        (dict(aux_fraction=0.5), "needs aux_data"),
        (dict(target_fraction=0.0), "target_fraction"),
        (dict(model="resnet"), "valid names"),
        (dict(teacher_weight=1.5), "teacher_weight"),
        (dict(activation="gelu"), "activation"),
    ],
)
def test_bad_configs_are_refused(small_set, tmp_path, kw, text):
    with pytest.raises(ValueError, match=text):
        train(quick_config(small_set, tmp_path / "bad", **kw), progress=False)
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    json.dumps(TrainConfig().__dict__)  # the config is JSON-able as stored in snapshots


# --- machine-bound defaults: bf16 and threads are chosen from the hardware -------------

from micronet.runtime import machine  # noqa: E402
from micronet.trainer.train import (  # noqa: E402
    resolve_bf16,
    resolve_channels_last,
    resolve_machine_defaults,
    resolve_threads,
)

AVX2_EPYC = frozenset({"avx", "avx2", "fma", "f16c"})  # e.g. AMD EPYC 7003: bf16 is emulated
SAPPHIRE_RAPIDS = AVX2_EPYC | {"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}


@pytest.mark.parametrize(
    "requested, device, native, expected",
    [
        (None, "cpu", False, False),  # auto: emulated bf16 is slower than fp32
        (None, "cpu", True, True),
        (None, "cuda", True, True),
        (None, "cuda", False, False),
        (None, "mps", False, False),
        (True, "cpu", False, True),  # an explicit value wins, even a slow one
        (False, "cpu", True, False),
        (False, "cuda", True, False),
    ],
)
def test_bf16_auto_means_native_only_and_an_explicit_value_wins(requested, device, native, expected):
    bf16, why = resolve_bf16(requested, device, native)
    assert bf16 is expected
    assert why.startswith("auto" if requested is None else "as configured")


@pytest.mark.parametrize("flags, expected", [(AVX2_EPYC, False), (SAPPHIRE_RAPIDS, True), (AVX2_EPYC | {"avx512_bf16"}, True), (frozenset(), False)])
def test_auto_bf16_on_the_cpu_follows_its_isa_flags(monkeypatch, caplog, flags, expected):
    monkeypatch.setattr(machine, "cpu_flags", lambda: flags)
    with caplog.at_level("INFO", logger="micronet.trainer.train"):
        cfg = resolve_machine_defaults(TrainConfig(), torch.device("cpu"))
    assert cfg.bf16 is expected
    assert ("bfloat16 autocast" if expected else "float32") in caplog.text
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_explicit_bf16_on_a_cpu_without_it_runs_but_warns(monkeypatch, caplog):
    monkeypatch.setattr(machine, "cpu_flags", lambda: AVX2_EPYC)
    with caplog.at_level("INFO", logger="micronet.trainer.train"):
        cfg = resolve_machine_defaults(TrainConfig(bf16=True), torch.device("cpu"))
    assert cfg.bf16 is True
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "emulates" in warnings[0] and "--no-bf16" in warnings[0]


@pytest.mark.parametrize(
    "requested, device, bf16, expected",
    [
        (None, "cpu", False, True),  # measured faster in fp32 on the CPU (bench_train.py)
        (None, "cpu", True, False),  # no measured gain under bf16
        (None, "cuda", False, False),  # not measured on a GPU
        (False, "cpu", False, False),
        (True, "cuda", True, True),
    ],
)
def test_channels_last_auto_follows_the_precision_and_an_explicit_value_wins(requested, device, bf16, expected):
    assert resolve_channels_last(requested, device, bf16)[0] is expected


def test_on_a_cpu_without_bf16_auto_trains_fp32_channels_last(monkeypatch):
    monkeypatch.setattr(machine, "cpu_flags", lambda: AVX2_EPYC)
    cfg = resolve_machine_defaults(TrainConfig(), torch.device("cpu"))
    assert (cfg.bf16, cfg.channels_last) == (False, True)
    monkeypatch.setattr(machine, "cpu_flags", lambda: SAPPHIRE_RAPIDS)
    cfg = resolve_machine_defaults(TrainConfig(), torch.device("cpu"))
    assert (cfg.bf16, cfg.channels_last) == (True, False)


def test_threads_default_to_this_process_share_of_the_physical_cores(monkeypatch):
    assert resolve_threads(None, cores=8) == 8
    assert resolve_threads(None, cores=8, local_world=4) == 2  # torchrun, 4 CPU processes
    assert resolve_threads(None, cores=2, local_world=4) == 1
    assert resolve_threads(3, cores=8, local_world=4) == 3
    monkeypatch.setattr(machine, "physical_cores", lambda: 6)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_machine_defaults(TrainConfig(), torch.device("cpu")).threads == 6
    with pytest.raises(ValueError, match="threads"):
        TrainConfig(threads=0).check()


def test_cli_leaves_bf16_to_the_hardware_unless_a_flag_is_given(monkeypatch):
    import argparse

    import micronet.trainer.train as train_module

    from micronet.commands import train as train_command

    def parse(*argv: str) -> argparse.Namespace:
        parser = argparse.ArgumentParser()
        train_command.add_parser(parser.add_subparsers(dest="command"))
        return parser.parse_args(["train", *argv])

    seen: list[TrainConfig] = []
    monkeypatch.setattr(train_module, "train", lambda cfg, **kw: seen.append(cfg) or Path("best.safetensors"))
    for argv, expected in [((), None), (("--bf16",), True), (("--no-bf16",), False)]:
        args = parse(*argv)
        assert args.bf16 is expected and args.threads is None
        assert train_command.run(args) == 0
        assert seen[-1].bf16 is expected and seen[-1].threads is None
    assert TrainConfig().bf16 is None and TrainConfig().threads is None and TrainConfig().channels_last is None
    assert parse("--channels-last").channels_last is True and parse().channels_last is None


@pytest.mark.parametrize("flags, expected", [(AVX2_EPYC, False), (SAPPHIRE_RAPIDS, True)])
def test_the_resolved_precision_and_threads_land_in_the_checkpoint(small_set, tmp_path, monkeypatch, flags, expected):
    monkeypatch.setattr(machine, "cpu_flags", lambda: flags)
    cfg = quick_config(small_set, tmp_path / "run", iterations=1, val_every=100, bf16=None, threads=None)
    info = read_info(train(cfg, progress=False))
    assert info.provenance["config"]["bf16"] is expected
    assert info.provenance["config"]["channels_last"] is (not expected)
    assert info.provenance["config"]["threads"] == machine.physical_cores()
    assert info.provenance["machine"]["cpu"] == machine.cpu_model()
    # The colours of its training tissue ride along, for the Detector's out-of-distribution warning.
    from micronet.runtime.stain import StainStats

    colour = StainStats.from_dict(info.colour, "colour")
    assert colour.pixels > 0 and 0 < colour.rgb_mean[0] < 255
    # The snapshot keeps the request, so a run resumed on another machine resolves there.
    from micronet.trainer.checkpoint import _metadata  # noqa: PLC2701

    snapshot = json.loads(_metadata(tmp_path / "run" / "last_snapshot.safetensors")["micronet_snapshot"])
    assert snapshot["config"]["bf16"] is None and snapshot["config"]["threads"] is None and snapshot["config"]["channels_last"] is None
    assert snapshot["info"]["provenance"]["config"]["bf16"] is expected


def test_fixed_milestones_divide_the_learning_rate_and_a_baseline_trains_on_its_own_target(small_set, tmp_path):
    cfg = quick_config(small_set, tmp_path / "fcn", model="fcn", model_options={"base": 4}, iterations=8, val_every=4,
                       snapshot_every=4, lr_milestones=[0.5, 0.75])
    info = read_info(train(cfg, progress=False))
    rows = list(csv.DictReader((tmp_path / "fcn" / "log.csv").open()))
    lrs = [float(r["lr"]) for r in rows]
    assert lrs == pytest.approx([0.01] * 4 + [0.001] * 2 + [0.0001] * 2)
    assert info.architecture["name"] == "fcn" and info.target["kind"] == "disk" and info.target["scale"] == 1.0
    assert 0 < info.threshold < 1  # ξ on probabilities


def test_validating_on_the_training_split_uses_the_fraction_trained_on(small_set, tmp_path, monkeypatch):
    import micronet.trainer.train as train_module

    seen = []
    real = train_module.predict_map
    monkeypatch.setattr(train_module, "predict_map", lambda model, im, *a, **k: seen.append(im.shape) or real(model, im, *a, **k))
    train(quick_config(small_set, tmp_path / "r", val_split="train", target_fraction=0.5, iterations=3), progress=False)
    assert len(seen) == 2  # 2 of the 4 training images, not all 4 and not the validation split


def test_a_diverged_network_stops_with_a_clear_error(small_set, tmp_path):
    with pytest.raises(FloatingPointError, match="diverged|non-finite|loss became"):
        train(quick_config(small_set, tmp_path / "nan", lr=1e6, iterations=6), progress=False)


def test_tune_detection_chooses_min_distance_and_threshold_together(small_set, tmp_path):
    import subprocess
    import sys

    best = train(quick_config(small_set, tmp_path / "t", iterations=3), progress=False)
    from micronet.trainer.validate import tune_detection

    md, threshold, rows = tune_detection(str(best), str(small_set), "val", 6.0, (2, 4))
    assert [r["min_distance"] for r in rows] == [2, 4]
    top = max(rows, key=lambda r: r["f1"])
    assert (md, threshold) == (top["min_distance"], top["threshold"])
    out = tmp_path / "tuned.safetensors"
    repo = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, str(repo / "tools" / "tune_detection.py"), str(best), "--data", str(small_set),
                    "--split", "val", "--min-distance", "2", "4", "-o", str(out)], check=True, capture_output=True)
    info = read_info(out)
    assert (info.min_distance, info.threshold) == (md, pytest.approx(threshold))


def test_a_baseline_checkpoint_fine_tunes_and_refuses_an_activation_swap(small_set, tmp_path):
    first = train(quick_config(small_set, tmp_path / "u", model="unet", model_options={"base": 4}, iterations=2), progress=False)
    tuned = train(quick_config(small_set, tmp_path / "u2", init=str(first), freeze_blocks=2, dropout=0.1, iterations=2), progress=False)
    assert read_info(tuned).architecture == {**read_info(first).architecture, "dropout": 0.1}
    with pytest.raises(ValueError, match="'unet' network, which has no activation option"):
        train(quick_config(small_set, tmp_path / "u3", init=str(first), activation="relu", iterations=1), progress=False)


def test_init_with_wider_widths_widens_the_checkpoint(small_set, tmp_path):
    first = train(quick_config(small_set, tmp_path / "n", iterations=2), progress=False)
    narrow = read_info(first).architecture
    wide_widths = [2 * w for w in narrow["widths"]]
    wider = train(quick_config(small_set, tmp_path / "w", init=str(first), widths=tuple(wide_widths), iterations=2), progress=False)
    arch = read_info(wider).architecture
    assert arch["widths"] == wide_widths and arch["context_channels"] == 2 * narrow["context_channels"]
    # Resuming rebuilds the same widened network under the snapshot's weights.
    again = train(quick_config(small_set, tmp_path / "w", init=str(first), widths=tuple(wide_widths), iterations=3),
                  resume=tmp_path / "w" / "last_snapshot.safetensors", progress=False)
    assert read_info(again).architecture == arch
