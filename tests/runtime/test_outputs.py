"""The outputs of one input (``micronet.runtime.runs.outputs``): the lock, complete-or-absent
writing, and what a rerun does with what it finds. Whole runs killed, interrupted and
starved of disk space are in ``tests/test_faults.py``."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from micronet.runtime.detections import Detections
from micronet.runtime.errors import InputError
from micronet.runtime.runs.outputs import ImageOutputs, OutputLock, describe_changes

SETTINGS = {"model": "abc", "threshold": 0.5, "mpp": 0.55, "formats": ["csv", "geojson", "png"]}


def found() -> Detections:
    xy = np.array([[10.0, 20.0], [30.5, 40.0], [5.0, 5.0]], np.float32)
    return Detections(xy, np.array([0.9, 0.8, 0.7], np.float32), (64, 64))


def image() -> np.ndarray:
    return np.full((64, 64, 3), 200, np.uint8)


def test_a_second_lock_on_the_same_outputs_refuses_naming_the_holder(tmp_path) -> None:
    with OutputLock(tmp_path, "a"):
        note = json.loads((tmp_path / "a.lock").read_text())
        assert note["pid"] == os.getpid()
        with pytest.raises(InputError, match=rf"a: its outputs in {tmp_path} are being written by another run \(PID {os.getpid()}: .*\); .*--wait"):
            OutputLock(tmp_path, "a").acquire()
        with OutputLock(tmp_path, "b"):  # another input in the same folder: its own lock
            pass
    assert not (tmp_path / "a.lock").exists()  # removed when released
    with OutputLock(tmp_path, "a"):  # free again
        pass


def test_a_stale_lock_file_from_a_dead_process_is_no_lock(tmp_path) -> None:
    (tmp_path / "a.lock").write_text('{"pid": 999999, "command": "micronet detect a.png"}')
    with OutputLock(tmp_path, "a"):
        assert json.loads((tmp_path / "a.lock").read_text())["pid"] == os.getpid()


def test_image_outputs_appear_complete_with_checksums(tmp_path) -> None:
    outputs = ImageOutputs(tmp_path, "a", ("csv", "geojson", "png"))
    assert outputs.check(SETTINGS).action == "new"
    outputs.start(SETTINGS)
    outputs.write(found(), image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "a.geojson", "a.overlay.png", "a.progress.bin", "a.progress.json"]
    state = json.loads((tmp_path / "a.progress.json").read_text())
    assert state["complete"] and state["detections"] == 3
    assert set(state["outputs"]) == {"csv", "geojson", "png"} and state["outputs"]["csv"]["bytes"] == (tmp_path / "a.csv").stat().st_size

    again = ImageOutputs(tmp_path, "a", ("csv", "geojson", "png"))
    verdict = again.check(SETTINGS)
    assert verdict.action == "finished" and verdict.damaged == {}
    xy, scores = again.records()
    np.testing.assert_array_equal(xy, found().xy)
    np.testing.assert_array_equal(scores, found().scores)


def test_damaged_outputs_are_named_and_rewritten_byte_for_byte(tmp_path) -> None:
    outputs = ImageOutputs(tmp_path, "a", ("csv", "geojson", "png"))
    outputs.start(SETTINGS)
    outputs.write(found(), image)
    finished = {p.name: p.read_bytes() for p in tmp_path.glob("a.*") if "progress" not in p.name}
    (tmp_path / "a.csv").write_text("x,y,score\n")
    (tmp_path / "a.geojson").write_bytes(finished["a.geojson"].replace(b"Nucleus", b"Nucleux"))  # same size, other content
    (tmp_path / "a.overlay.png").unlink()
    again = ImageOutputs(tmp_path, "a", ("csv", "geojson", "png"))
    verdict = again.check(SETTINGS)
    assert verdict.damaged == {
        "csv": f"truncated or replaced (10 of {len(finished['a.csv'])} bytes)",
        "geojson": "changed since it was written (checksum differs)",
        "png": "missing",
    }
    rewritten = again.repair(verdict.damaged, lambda fmt, p: ImageOutputs.write_format(fmt, p, found(), image))
    assert sorted(rewritten) == ["a.csv", "a.geojson", "a.overlay.png"]
    assert {name: (tmp_path / name).read_bytes() for name in finished} == finished
    assert not list(tmp_path.glob("*.partial"))


def test_other_settings_and_unrecorded_files_are_refused(tmp_path) -> None:
    outputs = ImageOutputs(tmp_path, "a", ("csv", "geojson", "png"))
    outputs.start(SETTINGS)
    outputs.write(found(), image)
    other = {**SETTINGS, "threshold": 3.0, "formats": ["csv"]}
    with pytest.raises(InputError, match=r"a: the outputs in .* were made with other settings \(formats csv,geojson,png → csv, threshold 0.5 → 3\); pass --overwrite"):
        ImageOutputs(tmp_path, "a", ("csv",)).check(other)
    # Overwriting removes every format, not only those of the new run.
    replacing = ImageOutputs(tmp_path, "a", ("csv",))
    assert replacing.check(other, overwrite=True).action == "new"
    replacing.start(other)
    assert not any((tmp_path / f"a{s}").exists() for s in (".csv", ".geojson", ".overlay.png"))

    (tmp_path / "b.csv").write_text("x,y\n1,2\n")  # not written by a run this folder knows of
    with pytest.raises(InputError, match=r"b.csv: already in .* with no record of the run that wrote it \(b.progress.json\); pass --overwrite"):
        ImageOutputs(tmp_path, "b", ("csv",)).check(SETTINGS)


def test_describe_changes_lists_what_differs() -> None:
    old = {"threshold": 0.2, "mpp": [0.499, 0.499], "model": "a" * 64, "input": {"name": "a.svs", "bytes": 1}}
    new = {"threshold": 0.2, "mpp": [0.25, 0.25], "model": "b" * 64, "input": {"name": "a.svs", "bytes": 2}}
    assert describe_changes(old, new) == "input (another file of the same name), model, mpp (0.499, 0.499) → (0.25, 0.25)"
