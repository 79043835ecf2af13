"""Issue 23: the SDK used as a hostile (or merely unlucky) user would use it. One test (or
more) per case of the issue's table; the case number is in each test's docstring.

The model is the blurred-darkness ONNX model of ``test_cli_detect.py`` (dark blobs peak
at their centres: known answers, no torch); the known-answer check (case 6) is in
``tests/runtime/test_check.py``, links where slide files belong in ``tests/test_faults.py``,
and a link per kind of file in ``tests/runtime/test_outputs.py``.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_cli_detect import CENTRES, _blobs, _blur_model

from micronet.cli import main

HIDDEN = ".micronet"
VICTIM = "the victim's own bytes\n"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return _blur_model(tmp_path_factory.mktemp("model") / "blur.onnx")


def detect(model: Path, *argv: str) -> int:
    return main(["detect", *argv, "--model", str(model), "--device", "cpu", "--no-progress", "--mpp", "0.55"])


def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text(VICTIM)
    return path


def summary(out: Path) -> list[dict[str, str]]:
    with open(out / "run_summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def images(folder: Path, names: list[str], shape: tuple[int, int] = (120, 160)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        _blobs(folder / name, CENTRES, shape)
    return folder


# --- 1, 2: writes that cannot be redirected ------------------------------------------------------


def test_1_a_link_where_the_lock_belongs_is_refused_and_its_target_untouched(model, tmp_path, capsys):
    """Case 1: ``ln -s VICTIM out/img1.lock`` truncated VICTIM (the lock followed links)."""
    image = _blobs(tmp_path / "img1.png", CENTRES)
    target = victim(tmp_path)
    out = tmp_path / "out"
    (out / HIDDEN).mkdir(parents=True)
    (out / HIDDEN / "img1.lock").symlink_to(target)
    (out / "img1.lock").symlink_to(target)  # where locks were: no longer anything of ours
    assert detect(model, str(image), "--out", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"micronet detect: error: {out / HIDDEN / 'img1.lock'} is a symbolic link where an output belongs; "
                   "nothing is written through it: remove it, or choose another output folder"]  # fmt: skip
    assert target.read_text() == VICTIM


def test_1_the_engine_cache_lock_does_not_follow_a_link_either(tmp_path):
    """Case 1, the engine cache's lock (the same FileLock, kept after release)."""
    from micronet.runtime.files import FileLock, UnsafeOutputError

    target = victim(tmp_path)
    (tmp_path / "model.engine.lock").symlink_to(target)
    with pytest.raises(UnsafeOutputError, match="model.engine.lock is a symbolic link"):
        FileLock(tmp_path / "model.engine.lock", wait=True, remove=False).acquire()
    assert target.read_text() == VICTIM


def test_2_a_repair_never_writes_the_detections_through_a_planted_link(model, tmp_path, capsys):
    """Case 2: after a finished run, ``rm out/x.csv; ln -s VICTIM out/x.csv.partial``: the
    repair wrote the detections into VICTIM and x.csv became a link to it."""
    image = _blobs(tmp_path / "x.png", CENTRES)
    out = tmp_path / "out"
    assert detect(model, str(image), "--out", str(out)) == 0
    finished = (out / "x.csv").read_bytes()
    target = victim(tmp_path)
    (out / "x.csv").unlink()
    (out / "x.csv.partial").symlink_to(target)  # where partial files were: not ours any more
    assert detect(model, str(image), "--out", str(out)) == 0
    assert (out / "x.csv").read_bytes() == finished and not (out / "x.csv").is_symlink() and target.read_text() == VICTIM
    (out / "x.csv").unlink()
    (out / HIDDEN / "x.csv.partial").symlink_to(target)  # where they are now
    capsys.readouterr()
    assert detect(model, str(image), "--out", str(out)) == 2
    assert f"{out / HIDDEN / 'x.csv.partial'} is a symbolic link where an output belongs" in capsys.readouterr().err
    assert target.read_text() == VICTIM and not (out / "x.csv").exists()


@pytest.mark.parametrize("name", ["s.csv.partial", "s.geojson.partial", "s.progress.bin", "s.progress.json", "s.lock"])
def test_1_2_a_slide_run_never_writes_through_a_planted_link(model, tmp_path, name):
    """Cases 1 and 2 for a slide, whose files are written batch by batch: a link where
    its partial output, record or lock belongs is refused, naming it."""
    tifffile = pytest.importorskip("tifffile")
    from micronet.runtime.detector import Detector
    from micronet.runtime.diagnostics.synthetic import blob_image
    from micronet.runtime.files import UnsafeOutputError

    slide = tmp_path / "s.ome.tif"
    pixels = blob_image(600, 700, [(x, y) for x in range(40, 700, 90) for y in range(40, 600, 90)])
    sizes = {"PhysicalSizeX": 0.55, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.55, "PhysicalSizeYUnit": "µm"}
    tifffile.imwrite(slide, pixels, tile=(256, 256), photometric="rgb", metadata={"axes": "YXS", **sizes})
    target = victim(tmp_path)
    out = tmp_path / "out"
    (out / HIDDEN).mkdir(parents=True)
    (out / HIDDEN / name).symlink_to(target)
    det = Detector(model, device="cpu", tile_size=256)
    with pytest.raises(UnsafeOutputError, match=rf"{out / HIDDEN / name} is a symbolic link where an output belongs"):
        det.detect_slide(slide, out_dir=out, progress=False, tissue_only=False)
    assert target.read_text() == VICTIM and not list(out.glob("s.*"))
    (out / HIDDEN / name).unlink()
    assert len(det.detect_slide(slide, out_dir=out, progress=False, tissue_only=False)) == 8 * 7


# --- 3, 10: a summary that tells the truth --------------------------------------------------------


def _cli(*argv: str, env: dict | None = None, wait: bool = True):
    # --deblur none: the synthetic blobs are smooth, out of focus by the edge measure, and a
    # deconvolution would ring around them; these cases count the blobs.
    command = [sys.executable, "-m", "micronet", "detect", *argv, "--device", "cpu", "--mpp", "0.55", "--deblur", "none"]
    if not wait:
        return subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300)


def test_3_four_runs_at_once_detect_each_image_once_and_leave_a_truthful_summary(model, tmp_path):
    """Case 3: 4 concurrent ``micronet detect ten/ --out o``: the summary said 7 of 10
    failed ('being written by another run'): the last run to write it won."""
    ten = images(tmp_path / "ten", [f"img{i:02d}.png" for i in range(10)], shape=(900, 1200))
    out = tmp_path / "o"
    runs = [_cli(str(ten), "--out", str(out), "--model", str(model), "--format", "csv", wait=False) for _ in range(4)]
    results = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0] * 4, results
    detected = sum(err.count(" nuclei in ") for _, err in results)
    assert detected == 10, results  # each image detected by exactly one run
    rows = summary(out)
    assert sorted(Path(r["input"]).name for r in rows) == [f"img{i:02d}.png" for i in range(10)]
    assert {r["status"] for r in rows} <= {"ok", "skipped"}, rows  # nothing failed, nothing left "running elsewhere"
    assert all(int(r["nuclei"]) == len(CENTRES) for r in rows)
    assert all(len((out / f"img{i:02d}.csv").read_text().splitlines()) == 1 + len(CENTRES) for i in range(10))


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="pauses a process and reads its state from /proc")
def test_3_an_input_held_by_another_run_is_running_elsewhere_and_never_overwrites_its_ok(model, tmp_path):
    ten = images(tmp_path / "ten", ["a.png", "b.png", "c.png"])
    out = tmp_path / "o"
    argv = [str(ten), "--out", str(out), "--model", str(model), "--format", "csv"]
    first = _cli(*argv, env={"MICRONET_FAULT_AT": "locked", "MICRONET_FAULT_SIGNAL": "STOP"}, wait=False)  # holds a.png
    try:
        deadline = time.monotonic() + 120
        while Path(f"/proc/{first.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        second = _cli(*argv)
        assert second.returncode == 0, second.stderr
        assert "a.png: running elsewhere: a: its outputs in" in second.stderr and f"PID {first.pid}" in second.stderr
        assert "(1 running elsewhere; see" in second.stdout
        assert [(Path(r["input"]).name, r["status"]) for r in summary(out)] == [("a.png", "running elsewhere"), ("b.png", "ok"), ("c.png", "ok")]
        os.kill(first.pid, signal.SIGCONT)
        assert first.wait(timeout=120) == 0
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
            first.kill()
            first.wait()
    assert [(Path(r["input"]).name, r["status"]) for r in summary(out)] == [("a.png", "ok"), ("b.png", "skipped"), ("c.png", "skipped")]
    third = _cli(*argv)  # finds everything finished: its rows say so
    assert third.returncode == 0 and {r["status"] for r in summary(out)} == {"skipped"}


@pytest.mark.parametrize(("name", "status"), [("TERM", 143), ("HUP", 129)])
def test_10_sigterm_or_sighup_during_a_batch_ends_it_as_ctrl_c_does(model, tmp_path, name, status):
    """Case 10: SIGTERM gave exit 143 and no run_summary.csv (Ctrl-C wrote one; its test
    is in test_faults.py)."""
    folder = images(tmp_path / "in", ["a.png", "b.png", "c.png"])
    out = tmp_path / "o"
    argv = [str(folder), "--out", str(out), "--model", str(model)]
    stopped = _cli(*argv, env={"MICRONET_FAULT_AT": "image:wrote:geojson", "MICRONET_FAULT_SIGNAL": name})
    assert stopped.returncode == status, stopped.stderr
    assert stopped.stderr.rstrip().splitlines()[-1] == f"micronet detect: stopped by SIG{name}; rerun the same command to resume"
    assert "Traceback" not in stopped.stderr
    assert [(Path(r["input"]).name, r["status"], r["error"]) for r in summary(out)] == [("a.png", "failed", f"interrupted (SIG{name})")]
    assert not list(out.glob("a.*")) and not list(out.rglob("*.partial"))  # an image does not resume: nothing half-made
    again = _cli(*argv)
    assert again.returncode == 0 and [r["status"] for r in summary(out)] == ["ok", "ok", "ok"]


# --- 4, 5: our own files are never inputs or victims ---------------------------------------------


def test_4_an_input_named_like_the_summary_is_refused_and_the_summary_stays_one(model, tmp_path, capsys):
    """Case 4: ``run_summary.png``'s CSV was overwritten by the summary, on every rerun."""
    folder = images(tmp_path / "in", ["a.png", "run_summary.png"])
    out = tmp_path / "o"
    for status in ("ok", "skipped"):
        assert detect(model, str(folder), "--out", str(out)) == 1
        err = capsys.readouterr().err
        assert "micronet detect: run_summary.png: its CSV would be" in err and "the run's summary; rename the input" in err
        rows = summary(out)
        assert [(Path(r["input"]).name, r["status"]) for r in rows] == [("run_summary.png", "failed"), ("a.png", status)]
    assert not (out / "run_summary.geojson").exists()
    assert detect(model, str(folder / "run_summary.png"), "--out", str(out)) == 2  # alone: the command's error
    assert "its CSV would be" in capsys.readouterr().err


def test_5_running_into_the_input_folder_finds_the_same_inputs_every_time(model, tmp_path, capsys):
    """Case 5: with --out the input folder, earlier overlays were taken as new inputs
    (419 → 840 → 1,261 nuclei)."""
    folder = images(tmp_path / "in", ["a.png", "b.png", "c.png"])
    said = []
    for _ in range(3):
        assert detect(model, str(folder), "--out", str(folder)) == 0
        said.append(capsys.readouterr().out.split(" nuclei in ")[0])
    assert said == [str(3 * len(CENTRES))] * 3
    assert sorted(p.name for p in folder.glob("*.overlay.png")) == ["a.overlay.png", "b.overlay.png", "c.overlay.png"]
    assert [Path(r["input"]).name for r in summary(folder)] == ["a.png", "b.png", "c.png"]
    assert detect(model, str(folder / "a.overlay.png"), "--out", str(tmp_path / "o")) == 2  # named: refused
    assert "a.overlay.png: the overlay of a.png, written by micronet detect" in capsys.readouterr().err


def test_5_overwrite_never_replaces_an_input_of_the_run(model, tmp_path, capsys):
    """Case 5: with --overwrite, an input named a.overlay.png was replaced by a.png's overlay."""
    folder = images(tmp_path / "in", ["a.png", "a.overlay.png"])
    theirs = (folder / "a.overlay.png").read_bytes()
    assert detect(model, str(folder), "--out", str(folder), "--overwrite") == 1
    err = capsys.readouterr().err
    assert f"micronet detect: a.png: its overlay would replace {folder / 'a.overlay.png'}, an input of this run" in err
    assert (folder / "a.overlay.png").read_bytes() == theirs
    assert (folder / "a.overlay.overlay.png").is_file()  # the other input ran


# --- 7, 8, 9: modes, long names, text files -------------------------------------------------------


def test_7_a_run_under_umask_022_leaves_files_others_can_read(model, tmp_path):
    """Case 7: progress.json and run_summary.csv were 0600 (mkstemp)."""
    image = _blobs(tmp_path / "a.png", CENTRES)
    out = tmp_path / "o"
    old = os.umask(0o022)
    try:
        assert detect(model, str(image), "--out", str(out)) == 0
    finally:
        os.umask(old)
    files = [out / "a.csv", out / "a.geojson", out / "a.overlay.png", out / "run_summary.csv", *(out / HIDDEN).iterdir()]
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: "0o644" for p in files}


def test_8_a_name_too_long_for_its_outputs_is_one_line(model, tmp_path, capsys):
    """Case 8: a 246-character file name: exit 1 with two tracebacks (ENAMETOOLONG)."""
    name = "n" * 242 + ".png"
    folder = images(tmp_path / "in", [name, "b.png"])
    out = tmp_path / "o"
    assert detect(model, str(folder / name), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "a name of 246 characters leaves no room for its output names" in err and "rename the input to at most 239 characters" in err
    assert detect(model, str(folder), "--out", str(out)) == 1  # in a batch: a failed row, the others run
    assert {Path(r["input"]).name: r["status"] for r in summary(out)} == {name: "failed", "b.png": "ok"} and (out / "b.csv").is_file()


def test_9_evaluate_reads_utf16_and_refuses_absurd_coordinates_in_one_line(tmp_path, capsys):
    """Case 9: ``micronet evaluate --pred utf16.csv``: UnicodeDecodeError; a coordinate of
    1e300: 'must lie within ±1e150'; both tracebacks."""
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    truth.mkdir()
    pred.mkdir()
    (truth / "a.csv").write_text("x,y\n10,10\n50,60\n")
    (pred / "a.csv").write_text("x,y,score\n10,11,0.9\n50,60,0.8\n", encoding="utf-16")  # Excel's "Unicode" CSV
    assert main(["evaluate", "--truth", str(truth), "--pred", str(pred), "--radius", "6"]) == 0
    assert "F1 1.0000" in capsys.readouterr().out
    (pred / "a.csv").write_bytes("x,y,score\n1e300,11,0.9\n".encode())
    assert main(["evaluate", "--truth", str(truth), "--pred", str(pred), "--radius", "6"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a.csv, line 2: expected pixel positions within ±1e+09, got '1e300,11,0.9'" in err
    (pred / "a.csv").write_bytes(b"x,y,score\n10,11,0.9\n\xe9\n")
    assert main(["evaluate", "--truth", str(truth), "--pred", str(pred), "--radius", "6"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not UTF-8 text (byte 0xe9 at 20); save it as CSV UTF-8" in err


# --- 11-15: threads, orientation, odd inputs, releasing, alpha -------------------------------------


def test_11_threads_are_capped_at_the_cpus_this_process_may_use(model, caplog):
    """Case 11: --threads 64 on 2 cores, Detector(threads=1000): 11× and 140× slower."""
    from micronet.runtime.detector import Detector
    from micronet.runtime.machine import usable_cpus

    with caplog.at_level("WARNING"):
        det = Detector(model, device="cpu", threads=1000)
    cpus = usable_cpus()
    assert det.backend._session.get_session_options().intra_op_num_threads == cpus
    assert f"threads=1000: this process may use {cpus} CPU" in caplog.text
    assert Detector(model, device="cpu", threads=1).backend._session.get_session_options().intra_op_num_threads == 1


def test_11_the_command_line_caps_threads_too(model, tmp_path, caplog):
    image = _blobs(tmp_path / "a.png", CENTRES)
    with caplog.at_level("WARNING"):
        assert detect(model, str(image), "--out", str(tmp_path / "o"), "--threads", "64") == 0
    assert "threads=64: this process may use" in caplog.text


def _turned(path: Path, orientation: int) -> Path:
    """The blob image stored turned, with the EXIF orientation that turns it upright."""
    from micronet.runtime.diagnostics.synthetic import blob_image
    from PIL import Image

    upright = blob_image(120, 160, CENTRES)
    stored = {6: np.rot90(upright, 1), 8: np.rot90(upright, -1), 3: np.rot90(upright, 2)}[orientation]
    exif = Image.Exif()
    exif[274] = orientation
    Image.fromarray(np.ascontiguousarray(stored)).save(path, exif=exif, quality=98)
    return path


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_12_exif_orientation_is_applied_and_said(model, tmp_path, caplog, orientation):
    """Case 12: a JPEG with EXIF orientation 6 was read as stored: detections in the wrong frame."""
    from micronet.runtime.detector import Detector
    from micronet.runtime.evaluation.matching import evaluate_points

    photo = _turned(tmp_path / "photo.jpg", orientation)
    with caplog.at_level("WARNING"):
        found = Detector(model, device="cpu").detect(photo, mpp=0.55)
    assert found.image_shape == (120, 160)
    assert evaluate_points(found.xy, np.array(CENTRES, float), 3.0).f1 == 1.0  # the upright frame, as viewers show it
    assert f"photo.jpg: EXIF orientation {orientation} (" in caplog.text and "applied" in caplog.text
    out = tmp_path / "o"
    assert detect(model, str(photo), "--out", str(out)) == 0
    assert json.loads((out / HIDDEN / "photo.progress.json").read_text())["settings"]["orientation"] == orientation


def test_12_a_tiff_orientation_tag_is_applied_too(tmp_path, caplog):
    tifffile = pytest.importorskip("tifffile")
    from micronet.runtime.images import image_orientation, read_image

    stored = np.zeros((10, 20, 3), np.uint8)
    stored[0, 0] = 255  # top left as stored: top right once turned 90° clockwise
    tifffile.imwrite(tmp_path / "o.tif", stored, photometric="rgb", extratags=[(274, 3, 1, 6, True)])
    with caplog.at_level("WARNING"):
        upright = read_image(tmp_path / "o.tif")
    assert image_orientation(tmp_path / "o.tif") == 6 and upright.shape == (20, 10, 3)
    assert np.argwhere(upright[..., 0] == 255).tolist() == [[0, 9]]
    assert "o.tif: TIFF orientation 6 (turn 90° clockwise to view) applied" in caplog.text


def test_13_a_fifo_or_a_link_loop_as_input_is_named_for_what_it_is(model, tmp_path, capsys):
    """Case 13: a FIFO or a symbolic-link loop: 'input not found' although it exists (and
    a FIFO opened for reading would wait forever)."""
    from micronet.runtime.detector import Detector

    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    out = ["--out", str(tmp_path / "o")]
    assert detect(model, str(tmp_path / "pipe.png"), *out) == 2
    assert capsys.readouterr().err.strip() == f"micronet detect: error: {tmp_path / 'pipe.png'}: a FIFO (named pipe), not a regular file; expected an input file"
    assert detect(model, str(tmp_path / "loop.png"), *out) == 2
    assert "loop.png: a symbolic link loop (it points back to itself)" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"pipe.png: a FIFO \(named pipe\), not a regular file; expected an image file"):
        Detector(model, device="cpu").detect(tmp_path / "pipe.png")
    images(tmp_path / "in", ["a.png"])
    os.mkfifo(tmp_path / "in" / "b.png")  # in a folder: passed over, not waited on
    assert detect(model, str(tmp_path / "in"), *out) == 0
    from micronet.runtime.runs.batch import process_input

    os.mkfifo(tmp_path / "scan.svs")  # a slide is opened by its reader: refused before that
    row = process_input(Detector(model, device="cpu"), tmp_path / "scan.svs", tmp_path / "o")
    assert row.status == "failed" and row.error == f"{tmp_path / 'scan.svs'}: a FIFO (named pipe), not a regular file; expected an input file"


def test_14_close_and_a_with_block_release_the_session(model):
    """Case 14: no Detector.close(), no ``with``: a scanner program that loads and unloads
    models could not release one."""
    import gc
    import weakref

    from micronet.runtime.detector import Detector

    with Detector(model, device="cpu") as det:
        backend = weakref.ref(det.backend)
        assert len(det.detect(_blob_array(), mpp=0.55)) == len(CENTRES)
    gc.collect()
    assert det.closed and backend() is None  # the session is gone with its backend
    with pytest.raises(ValueError, match="this Detector is closed"):
        det.detect(_blob_array())
    det.close()  # idempotent
    assert "blur.onnx" in repr(det)


def _blob_array() -> np.ndarray:
    from micronet.runtime.diagnostics.synthetic import blob_image

    return blob_image(120, 160, CENTRES)


def test_15_an_rgba_file_gets_a_hint_for_files(model, tmp_path, capsys):
    """Case 15: an RGBA PNG on the command line got the Python hint image[..., :3]."""
    from PIL import Image

    rgba = np.dstack([_blob_array(), np.full((120, 160), 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert detect(model, str(tmp_path / "a.png"), "--out", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "got RGBA (an alpha channel" in err and "magick IN -alpha off OUT" in err and "image[..., :3]" not in err


# --- 16, 17: manifests, arrays -------------------------------------------------------------------


def test_16_a_manifest_with_a_missing_entry_runs_the_rest(model, tmp_path, capsys):
    """Case 16: one missing path in a cohort manifest refused the whole run."""
    folder = images(tmp_path / "in", ["a.png", "c.png"])
    manifest = tmp_path / "cohort.txt"
    manifest.write_text(f"{folder / 'a.png'}\n{folder / 'b.png'}\nin/c.png\n")
    out = tmp_path / "o"
    assert detect(model, "--inputs", str(manifest), "--out", str(out)) == 1
    assert f"micronet detect: b.png: input not found: {folder / 'b.png'}" in capsys.readouterr().err
    assert [(Path(r["input"]).name, r["status"]) for r in summary(out)] == [("b.png", "failed"), ("a.png", "ok"), ("c.png", "ok")]


def test_17_a_huge_array_is_bounded_like_a_huge_file(model):
    """Case 17: a 20,000² array ran for minutes; the work limit applied to files only."""
    from micronet.runtime.detector import Detector

    det = Detector(model, device="cpu")
    huge = np.zeros((20_000, 20_000, 3), np.uint8)  # never touched: the pages stay unallocated
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"image: 20000×20000 pixels \(400 MP\), more than max_megapixels=256; run it as a slide"):
        det.detect(huge, mpp=0.55)
    assert time.perf_counter() - started < 5
    assert len(Detector(model, device="cpu", max_megapixels=1000).detect(np.zeros((64, 64, 3), np.uint8), mpp=0.55)) == 0
