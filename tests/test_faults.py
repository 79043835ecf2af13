"""Fault injection (issue 11): runs killed, interrupted, paused, starved of disk space or
write access, run twice at once, and outputs damaged after the fact. Each test asserts
that nothing is lost, doubled, or left looking complete when it is not.

The slide is a 1100² crop of the real CMU-1 slide written as a small OME-TIFF (0.499
µm/px); the model is the tiny random MicroNet of ``conftest.py`` with its threshold
raised to ~300 peaks per CRCHisto image, run in 512 px tiles in batches of 2: eight
tiles, four batches, ~1,100 detections. Kills come from the ``MICRONET_FAULT_AT`` hook
(:func:`micronet.runtime.runs.outputs.fault_point`): a subprocess signals itself at a named
point, so every kill lands at an exact place, cheaply and deterministically.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from micronet.cli import main

tifffile = pytest.importorskip("tifffile")
from PIL import Image  # noqa: E402

STEM = "small"
OUTPUTS = (f"{STEM}.csv", f"{STEM}.geojson", f"{STEM}.overlay.png")
SUMMARY = f"{STEM}.summary.json"  # written when the slide is finished, from its records
MPP = 0.499
HIDDEN = ".micronet"  # the records, partial outputs and locks

DRIVER = """
import sys
from micronet.runtime.detector import Detector
from micronet.runtime.runs.slide_run import detect_slide
model, threshold, slide, out = sys.argv[1:5]
det = Detector(model, device="cpu", threads=2, threshold=float(threshold), tile_size=512, batch_size=2)
found = detect_slide(det, slide, out_dir=out, progress=False, wait="--wait" in sys.argv)
print(len(found))
"""


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, shared_data: Path, make_tiny_model) -> dict:
    """The model, its threshold, the small slide, the driver script and a reference run."""
    cmu = shared_data / "slides" / "CMU-1-Small-Region.svs"
    if not cmu.is_file():
        pytest.skip(f"{cmu} not found")
    root = tmp_path_factory.mktemp("faults")
    crchisto = sorted((shared_data / "crchisto" / "images").glob("*.png"))
    with Image.open(crchisto[0]) as im:
        first = np.asarray(im.convert("RGB"))
    _, model = make_tiny_model(root, first)
    from micronet.runtime.detector import Detector

    scores = Detector(model, device="cpu", threads=2).detect(first, mpp=0.55).scores
    threshold = float(scores[min(299, len(scores) - 1)])

    image = np.ascontiguousarray(tifffile.imread(cmu, key=0)[:1100, :1100])
    slide = root / f"{STEM}.ome.tif"
    options = {"tile": (256, 256), "compression": "jpeg", "photometric": "rgb"}
    sizes = {"PhysicalSizeX": MPP, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": MPP, "PhysicalSizeYUnit": "µm"}
    with tifffile.TiffWriter(slide, bigtiff=True, ome=True) as tif:
        tif.write(image, subifds=1, metadata={"axes": "YXS", **sizes}, **options)
        tif.write(np.asarray(Image.fromarray(image).reduce(4)), subfiletype=1, **options)
    driver = root / "driver.py"
    driver.write_text(DRIVER)
    work = {"root": root, "model": model, "threshold": threshold, "slide": slide, "driver": driver, "crchisto": crchisto}
    reference = root / "reference"
    assert drive(work, reference).returncode == 0
    work["reference"] = reference
    work["detections"] = json.loads((reference / HIDDEN / f"{STEM}.progress.json").read_text())["detections"]
    assert work["detections"] > 300
    return work


@pytest.fixture(scope="module")
def detector(work: dict):
    """The driver's detector, in this process."""
    from micronet.runtime.detector import Detector

    return Detector(work["model"], device="cpu", threads=2, threshold=work["threshold"], tile_size=512, batch_size=2)


def drive(work: dict, out: Path, *extra: str, env: dict | None = None, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    """Runs the driver on the small slide into ``out`` with fault variables ``env``."""
    argv = [sys.executable, str(work["driver"]), str(work["model"]), repr(work["threshold"]), str(work["slide"]), str(out), *extra]
    full_env = {**os.environ, **(env or {})}
    if not wait:
        return subprocess.Popen(argv, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=300)


def fault(point: str, after_tiles: int = 0, how: str = "KILL") -> dict:
    return {"MICRONET_FAULT_AT": point, "MICRONET_FAULT_AFTER_TILES": str(after_tiles), "MICRONET_FAULT_SIGNAL": how}


def nothing_final_is_wrong(out: Path, reference: Path) -> None:
    """Every output with a final name is byte for byte the finished run's."""
    for name in OUTPUTS:
        if (out / name).exists():
            assert (out / name).read_bytes() == (reference / name).read_bytes(), f"{name} has its final name but is not the finished file"


def same_as_reference(out: Path, reference: Path, detections: int) -> None:
    """The outputs are the reference run's, byte for byte; nothing partial, temporary or
    locked is left; the record is finished."""
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith((".partial", ".tmp", ".lock"))]
    assert not leftovers, leftovers
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(STEM)) == sorted((*OUTPUTS, SUMMARY))  # what a user reads
    assert (out / SUMMARY).read_bytes() == (reference / SUMMARY).read_bytes()
    state = json.loads((out / HIDDEN / f"{STEM}.progress.json").read_text())
    assert state["complete"] and state["detections"] == detections
    with open(out / f"{STEM}.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    assert len(rows) == detections and len({tuple(r[:2]) for r in rows}) == detections  # none lost, none doubled


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def wait_until_stopped(proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while process_state(proc.pid) != "T":
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never reached its pause point"
        time.sleep(0.05)


# --- (a) killed at 13 points, resumed: byte-identical ---------------------------------------------

KILL_POINTS = [
    ("locked", 0),  # the lock taken, nothing written: a stale lock file stays behind
    ("planned", 0),  # after the tissue scan
    ("started", 0),  # new record, empty partial files
    ("commit:records", 2),  # first batch in the detections record only
    ("commit:csv", 2),  # ... and in the CSV, not the GeoJSON
    ("commit:geojson", 4),  # second batch in all files, its record not saved
    ("commit:state", 4),  # second batch recorded
    ("commit:csv", 6),  # third batch torn
    ("commit:state", 8),  # every tile done, not finished
    ("finish:closed", 0),  # partial files closed, no checksums yet
    ("finish:recorded", 0),  # finished record saved, nothing renamed
    ("finish:renamed:csv", 0),  # the CSV has its final name, the rest not
    ("finish:renamed:geojson", 0),
    ("finished", 0),  # everything renamed, the lock still held
]


@pytest.mark.parametrize(("point", "after"), KILL_POINTS, ids=[f"{p}@{n}" for p, n in KILL_POINTS])
def test_a_run_killed_anywhere_resumes_to_identical_files(work: dict, tmp_path: Path, point: str, after: int) -> None:
    out = tmp_path / "out"
    killed = drive(work, out, env=fault(point, after))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    nothing_final_is_wrong(out, work["reference"])
    if not point.startswith(("finish:renamed", "finished")):
        assert not any((out / name).exists() for name in (*OUTPUTS, SUMMARY)), "an unfinished run left a final name"
    resumed = drive(work, out)
    assert resumed.returncode == 0, resumed.stderr
    assert int(resumed.stdout) == work["detections"]
    same_as_reference(out, work["reference"], work["detections"])


def test_killed_twice_then_resumed(work: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert drive(work, out, env=fault("commit:csv", 2)).returncode == -signal.SIGKILL
    assert drive(work, out, env=fault("commit:geojson", 6)).returncode == -signal.SIGKILL
    nothing_final_is_wrong(out, work["reference"])
    assert drive(work, out).returncode == 0
    same_as_reference(out, work["reference"], work["detections"])


# --- Ctrl-C ---------------------------------------------------------------------------------------


def test_ctrl_c_says_rerun_resumes_and_exits_130(work: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "micronet", "detect", str(work["slide"]), "--out", str(out), "--model", str(work["model"])]
    argv += ["--threshold", repr(work["threshold"]), "--device", "cpu", "--format", "csv,geojson"]
    # As from a terminal: SIGINT at its default disposition in the child. A suite started
    # in the background by a shell without job control inherits SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler.
    stopped = subprocess.run(
        argv, env={**os.environ, **fault("commit:records", 0, "INT")}, capture_output=True, text=True, timeout=300,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert stopped.returncode == 130, stopped.stderr
    assert stopped.stderr.rstrip().splitlines()[-1] == "micronet detect: interrupted; rerun the same command to resume"
    assert "Traceback" not in stopped.stderr and "\r" not in stopped.stderr
    assert not list(out.glob(f"{STEM}.*"))  # nothing of the slide among the results yet
    assert sorted(p.name for p in (out / HIDDEN).glob(f"{STEM}.*")) == sorted(
        [f"{STEM}.csv.partial", f"{STEM}.geojson.partial", f"{STEM}.progress.bin", f"{STEM}.progress.json"]
    )  # partial files stay partial; the lock went with the process
    with open(out / "run_summary.csv", newline="") as f:
        assert [(r["status"], r["error"]) for r in csv.DictReader(f)] == [("failed", "interrupted")]
    again = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    whole = subprocess.run([*argv[:6], str(tmp_path / "whole"), *argv[7:]], capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    for name in (f"{STEM}.csv", f"{STEM}.geojson"):
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    assert not list(out.rglob("*.partial"))


# --- (b) full disk, read-only folder ------------------------------------------------------------


def test_full_disk_mid_slide_is_one_line_and_leaves_nothing_final(work: dict, detector, tmp_path: Path, monkeypatch) -> None:
    from micronet.runtime.errors import MicronetError
    from micronet.runtime.runs import slide_outputs

    real = slide_outputs.append_csv
    calls = []

    def disk_fills_up(f, *args):
        calls.append(1)
        if len(calls) == 3:
            f.write(b"12.5,3")  # half a row made it to disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, *args)

    monkeypatch.setattr(slide_outputs, "append_csv", disk_fills_up)
    out = tmp_path / "out"
    with pytest.raises(MicronetError) as info:
        detector.detect_slide(work["slide"], out_dir=out, progress=False)
    message = str(info.value)
    assert "\n" not in message and f"{STEM}.csv.partial" in message and "No space left on device" in message
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert not any((out / name).exists() for name in OUTPUTS)
    assert not list(out.rglob("*.tmp")) and not (out / HIDDEN / f"{STEM}.lock").exists()
    monkeypatch.undo()  # space freed: the rerun resumes and drops the torn half row
    found = detector.detect_slide(work["slide"], out_dir=out, progress=False)
    assert len(found) == work["detections"]
    same_as_reference(out, work["reference"], work["detections"])


def test_full_disk_while_saving_the_record_leaves_no_temporary_file(work: dict, detector, tmp_path: Path, monkeypatch) -> None:
    from micronet.runtime.runs.outputs import OutputWriteError

    real = Path.write_text

    def full(self, text, *args, **kwargs):
        if self.name.endswith(".progress.json.tmp") and '"tiles_done": 4' in text:
            real(self, text[: len(text) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    out = tmp_path / "out"
    with pytest.raises(OutputWriteError, match=rf"cannot write .*{STEM}\.progress\.json: No space left on device"):
        detector.detect_slide(work["slide"], out_dir=out, progress=False)
    assert not list(out.rglob("*.tmp")) and not any((out / name).exists() for name in OUTPUTS)
    assert json.loads((out / HIDDEN / f"{STEM}.progress.json").read_text())["tiles_done"] == 2  # the last good record
    monkeypatch.undo()
    detector.detect_slide(work["slide"], out_dir=out, progress=False)
    same_as_reference(out, work["reference"], work["detections"])


def test_full_disk_writing_an_image_overlay(work: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    image = tmp_path / "a.png"
    shutil.copy(work["crchisto"][0], image)

    def full(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG\r\n")  # the start of a PNG, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    out = tmp_path / "out"
    argv = ["detect", str(image), "--out", str(out), "--model", str(work["model"]), "--device", "cpu", "--mpp", "0.55"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"micronet detect: error: cannot write {out / HIDDEN / 'a.overlay.png.partial'}: No space left on device"
    assert not [p.name for p in out.rglob("a.*") if p.suffix in (".csv", ".geojson", ".png", ".tmp", ".partial", ".lock")]
    monkeypatch.undo()
    assert main(argv) == 0
    assert (out / "a.overlay.png").is_file() and (out / "a.csv").is_file()


def test_read_only_output_folder_fails_before_the_model_loads(work: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    from micronet.runtime.runs import cohort

    out = tmp_path / "ro"
    out.mkdir()
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(out)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, flags, *args, **kwargs)

    def no_model(self):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(os, "open", read_only)
    monkeypatch.setattr(cohort.DetectorSpec, "build", no_model)
    image = tmp_path / "a.png"
    shutil.copy(work["crchisto"][0], image)
    assert main(["detect", str(image), "--out", str(out), "--model", str(work["model"])]) == 2
    assert capsys.readouterr().err.strip() == f"micronet detect: error: the output folder {out} is not writable: Read-only file system"
    assert list(out.iterdir()) == []
    # The library says the same, naming the first file it could not make (the lock).
    from micronet.runtime.runs.outputs import OutputWriteError

    monkeypatch.undo()
    monkeypatch.setattr(os, "open", read_only)
    from micronet.runtime.detector import Detector

    det = Detector(work["model"], device="cpu", threads=2, threshold=work["threshold"])
    with pytest.raises(OutputWriteError, match=rf"cannot write {out / HIDDEN / (STEM + '.lock')}: Read-only file system"):
        det.detect_slide(work["slide"], out_dir=out, progress=False)


def test_out_under_a_regular_file_is_one_line(work: dict, tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("x")
    image = tmp_path / "a.png"
    shutil.copy(work["crchisto"][0], image)
    assert main(["detect", str(image), "--out", str(tmp_path / "notes.txt" / "out"), "--model", str(work["model"])]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"micronet detect: error: output folder {tmp_path / 'notes.txt' / 'out'} lies under {tmp_path / 'notes.txt'}, which is a file; expected a folder"
    assert main(["detect", str(image), "--out", str(tmp_path / "notes.txt"), "--model", str(work["model"])]) == 2
    assert "is a file; expected a folder" in capsys.readouterr().err


# --- (c) two runs at once -------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="pauses a process and reads its state from /proc")
def test_a_second_run_on_the_same_slide_refuses_or_waits(work: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = drive(work, out, env=fault("commit:state", 2, "STOP"), wait=False)  # pauses itself mid-run, holding the lock
    waiter = None
    try:
        wait_until_stopped(first)
        argv = [sys.executable, "-m", "micronet", "detect", str(work["slide"]), "--out", str(out), "--model", str(work["model"]), "--device", "cpu"]
        second = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        line = second.stderr.strip().splitlines()[-1]
        assert line.startswith(f"micronet detect: error: {STEM}: its outputs in {out} are being written by another run"), line
        assert f"PID {first.pid}: driver.py {work['model']} " in line and "--wait" in line, line
        assert not any((out / name).exists() for name in OUTPUTS)
        # One that waits starts only when the first is done, and finds it finished.
        waiter = drive(work, out, "--wait", wait=False)
        time.sleep(1.0)
        assert waiter.poll() is None  # still waiting
        os.kill(first.pid, signal.SIGCONT)
        assert first.wait(timeout=120) == 0
        stamps = {name: (out / name).stat().st_mtime_ns for name in OUTPUTS}
        stdout, stderr = waiter.communicate(timeout=120)
        assert waiter.returncode == 0, stderr
        assert int(stdout) == work["detections"]
        assert {name: (out / name).stat().st_mtime_ns for name in OUTPUTS} == stamps  # verified, not rewritten
    finally:
        for proc in (first, waiter):
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.wait()
    same_as_reference(out, work["reference"], work["detections"])


# --- (d) damaged outputs after completion ---------------------------------------------------------


def test_damaged_and_swapped_slide_outputs_are_rewritten(work: dict, detector, tmp_path: Path, caplog) -> None:
    out = tmp_path / "out"
    shutil.copytree(work["reference"], out)
    stamps = {name: (out / name).stat().st_mtime_ns for name in OUTPUTS}
    calls = []
    detector.detect_slide(work["slide"], out_dir=out, progress=False, on_batch=lambda d, t: calls.append(d))
    assert calls == [] and {name: (out / name).stat().st_mtime_ns for name in OUTPUTS} == stamps  # intact: not touched

    lines = (out / f"{STEM}.csv").read_text().splitlines(keepends=True)
    (out / f"{STEM}.csv").write_text("".join(lines[:10]))  # truncated
    (out / f"{STEM}.geojson").write_text('{"type":"FeatureCollection","features":[]}')  # overwritten, valid JSON
    other = tmp_path / "other.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(other)
    shutil.copy(other, out / f"{STEM}.overlay.png")  # another input's overlay
    with caplog.at_level("WARNING"):
        found = detector.detect_slide(work["slide"], out_dir=out, progress=False, on_batch=lambda d, t: calls.append(d))
    assert calls == [] and len(found) == work["detections"]  # from the stored detections, not rerun
    said = caplog.text
    assert f"{STEM}.csv: truncated or replaced" in said
    assert all(f"{name}: " in said for name in OUTPUTS) and said.count("rewritten from the stored detections") == 3
    same_as_reference(out, work["reference"], work["detections"])

    (out / f"{STEM}.csv").unlink()  # missing
    detector.detect_slide(work["slide"], out_dir=out, progress=False)
    same_as_reference(out, work["reference"], work["detections"])

    with open(out / HIDDEN / f"{STEM}.progress.bin", "r+b") as f:  # the stored detections damaged: run again
        f.truncate(100)
    detector.detect_slide(work["slide"], out_dir=out, progress=False, on_batch=lambda d, t: calls.append(d))
    assert calls
    same_as_reference(out, work["reference"], work["detections"])


def test_swapped_image_outputs_and_a_replaced_input(work: dict, tmp_path: Path, capsys) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name, source in zip(("a.png", "b.png"), work["crchisto"][:2]):
        shutil.copy(source, images / name)
    out = tmp_path / "out"
    argv = ["detect", str(images), "--out", str(out), "--model", str(work["model"]), "--device", "cpu", "--mpp", "0.55"]
    assert main(argv) == 0
    finished = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".csv", ".geojson", ".png") and p.name != "run_summary.csv"}
    os.replace(out / "a.csv", tmp_path / "swap")
    os.replace(out / "b.csv", out / "a.csv")
    os.replace(tmp_path / "swap", out / "b.csv")
    capsys.readouterr()
    assert main(argv) == 0
    assert "a.png: finished already" in capsys.readouterr().err
    assert {name: (out / name).read_bytes() for name in finished} == finished
    with open(out / "run_summary.csv", newline="") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["skipped", "skipped"]
    # Another image under the same name: not this record's input.
    shutil.copy(work["crchisto"][2], images / "a.png")
    assert main(argv) == 1  # two inputs: a failed, b went on
    assert "micronet detect: a.png: a: the outputs in" in capsys.readouterr().err
    assert (out / "a.csv").read_bytes() == finished["a.csv"]
    assert main([*argv, "--overwrite"]) == 0
    assert (out / "a.csv").read_bytes() != finished["a.csv"]


# --- (e) other settings: refused, or replaced whole ----------------------------------------------


def test_other_settings_are_refused_and_overwrite_leaves_nothing_stale(work: dict, detector, tmp_path: Path, capsys) -> None:
    from micronet.runtime.detector import Detector
    from micronet.runtime.errors import InputError

    out = tmp_path / "out"
    strict = Detector(work["model"], device="cpu", threads=2, threshold=3.0, tile_size=512, batch_size=2)
    strict.detect_slide(work["slide"], out_dir=out, progress=False)  # "--threshold 3": all formats
    before = {name: (out / name).read_bytes() for name in OUTPUTS}
    with pytest.raises(InputError) as info:
        detector.detect_slide(work["slide"], out_dir=out, formats="csv", progress=False)
    message = str(info.value)
    assert "\n" not in message and "threshold 3 → " in message and "formats csv,geojson,png → csv" in message and "--overwrite" in message
    assert {name: (out / name).read_bytes() for name in OUTPUTS} == before
    found = detector.detect_slide(work["slide"], out_dir=out, formats="csv", progress=False, resume=False)
    assert len(found) == work["detections"]
    assert (out / f"{STEM}.csv").read_bytes() == (work["reference"] / f"{STEM}.csv").read_bytes()
    assert not (out / f"{STEM}.geojson").exists() and not (out / f"{STEM}.overlay.png").exists()  # no stale 953-detection files

    # The same through the command line, on an image.
    image = tmp_path / "x.png"
    shutil.copy(work["crchisto"][0], image)
    argv = ["detect", str(image), "--out", str(tmp_path / "o"), "--model", str(work["model"]), "--device", "cpu"]
    assert main([*argv, "--threshold", "3"]) == 0
    assert main([*argv, "--format", "csv"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("micronet detect: error: x: the outputs in") and "threshold 3 → " in err and "--overwrite" in err
    assert main([*argv, "--format", "csv", "--overwrite"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").glob("x.*")) == ["x.csv"]
    assert sorted(p.name for p in (tmp_path / "o" / HIDDEN).glob("x.*")) == ["x.progress.bin", "x.progress.json"]


# --- (f) batches go on --------------------------------------------------------------------------


def test_a_bad_image_fails_alone_and_fail_fast_stops_there(work: dict, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(work["crchisto"][0], folder / "a.png")
    with Image.open(work["crchisto"][1]) as im:
        im.convert("L").save(folder / "b.png")  # greyscale
    shutil.copy(work["crchisto"][2], folder / "c.png")
    out = tmp_path / "out"
    argv = ["detect", str(folder), "--out", str(out), "--model", str(work["model"]), "--device", "cpu", "--mpp", "0.55", "--format", "csv"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    about_b = [ln for ln in captured.err.splitlines() if "b.png" in ln]
    assert len(about_b) == 1 and about_b[0].startswith("micronet detect: b.png: ") and "grayscale" in about_b[0], about_b
    assert "1 failed" in captured.out
    with open(out / "run_summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(Path(r["input"]).name, r["status"]) for r in rows] == [("a.png", "ok"), ("b.png", "failed"), ("c.png", "ok")]
    assert "grayscale" in rows[1]["error"] and rows[1]["nuclei"] == ""
    assert int(rows[0]["nuclei"]) > 0 and float(rows[0]["megapixels"]) == 0.25 and float(rows[0]["seconds"]) > 0
    assert sorted(p.name for p in out.glob("*.csv")) == ["a.csv", "c.csv", "run_summary.csv"]
    assert not list(out.glob("b.*"))

    fast = tmp_path / "fast"
    assert main([*argv[:3], str(fast), *argv[4:], "--fail-fast"]) == 1
    assert "1 not run (--fail-fast)" in capsys.readouterr().out
    with open(fast / "run_summary.csv", newline="") as f:
        assert [(Path(r["input"]).name, r["status"]) for r in csv.DictReader(f)] == [("a.png", "ok"), ("b.png", "failed")]
    assert (fast / "a.csv").is_file() and not (fast / "c.csv").exists()
