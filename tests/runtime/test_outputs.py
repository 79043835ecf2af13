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
        note = json.loads((tmp_path / ".micronet" / "a.lock").read_text())
        assert note["pid"] == os.getpid()
        with pytest.raises(InputError, match=rf"a: its outputs in {tmp_path} are being written by another run \(PID {os.getpid()}: .*\); .*--wait"):
            OutputLock(tmp_path, "a").acquire()
        with OutputLock(tmp_path, "b"):  # another input in the same folder: its own lock
            pass
    assert not (tmp_path / ".micronet" / "a.lock").exists()  # removed when released
    with OutputLock(tmp_path, "a"):  # free again
        pass


def test_a_stale_lock_file_from_a_dead_process_is_no_lock(tmp_path) -> None:
    (tmp_path / ".micronet").mkdir()
    (tmp_path / ".micronet" / "a.lock").write_text('{"pid": 999999, "command": "micronet detect a.png"}')
    with OutputLock(tmp_path, "a"):
        assert json.loads((tmp_path / ".micronet" / "a.lock").read_text())["pid"] == os.getpid()


def test_image_outputs_appear_complete_with_checksums(tmp_path) -> None:
    outputs = ImageOutputs(tmp_path, "a", ("csv", "geojson", "png"))
    assert outputs.check(SETTINGS).action == "new"
    outputs.start(SETTINGS)
    outputs.write(found(), image)
    # What a user reads in the folder; the record in the hidden one.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".micronet", "a.csv", "a.geojson", "a.overlay.png"]
    assert sorted(p.name for p in (tmp_path / ".micronet").iterdir()) == ["a.progress.bin", "a.progress.json"]
    state = json.loads((tmp_path / ".micronet" / "a.progress.json").read_text())
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
    finished = {p.name: p.read_bytes() for p in tmp_path.glob("a.*")}
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
    assert not list(tmp_path.rglob("*.partial"))


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
    with pytest.raises(InputError, match=r"b.csv: already in .* with no record of the run that wrote it \(.micronet/b.progress.json\); pass --overwrite"):
        ImageOutputs(tmp_path, "b", ("csv",)).check(SETTINGS)


def test_describe_changes_lists_what_differs() -> None:
    old = {"threshold": 0.2, "mpp": [0.499, 0.499], "model": "a" * 64, "input": {"name": "a.svs", "bytes": 1}}
    new = {"threshold": 0.2, "mpp": [0.25, 0.25], "model": "b" * 64, "input": {"name": "a.svs", "bytes": 2}}
    assert describe_changes(old, new) == "input (another file of the same name), model, mpp (0.499, 0.499) → (0.25, 0.25)"


# --- nothing is written through a link (issue 23) ------------------------------------------------

VICTIM_TEXT = "the victim's own content\n"


def _victim(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text(VICTIM_TEXT)
    return victim


def _finished(folder) -> None:
    outputs = ImageOutputs(folder, "a", ("csv", "geojson", "png"))
    outputs.start(SETTINGS)
    outputs.write(found(), image)


@pytest.mark.parametrize(
    "where",
    ["a.lock", "a.progress.json", "a.progress.bin", "a.csv.partial", "a.overlay.png.partial"],
)
def test_a_link_in_the_hidden_folder_is_refused_and_its_target_untouched(tmp_path, where) -> None:
    from micronet.runtime.runs.outputs import UnsafeOutputError

    victim = _victim(tmp_path)
    out = tmp_path / "out"
    (out / ".micronet").mkdir(parents=True)
    (out / ".micronet" / where).symlink_to(victim)
    with pytest.raises(UnsafeOutputError, match=rf"{out / '.micronet' / where} is a symbolic link where an output belongs"):
        with OutputLock(out, "a"):
            outputs = ImageOutputs(out, "a", ("csv", "geojson", "png"))
            outputs.check(SETTINGS)
            outputs.start(SETTINGS)
            outputs.write(found(), image)
    assert victim.read_text() == VICTIM_TEXT


@pytest.mark.parametrize("name", ["a.csv", "a.geojson", "a.overlay.png"])
def test_a_link_where_a_final_output_belongs_is_refused_even_with_overwrite(tmp_path, name) -> None:
    from micronet.runtime.runs.outputs import UnsafeOutputError

    victim = _victim(tmp_path)
    (tmp_path / name).symlink_to(victim)
    for overwrite in (False, True):
        with pytest.raises(UnsafeOutputError, match=rf"{tmp_path / name} is a symbolic link"):
            ImageOutputs(tmp_path, "a", ("csv", "geojson", "png")).check(SETTINGS, overwrite=overwrite)
    assert victim.read_text() == VICTIM_TEXT and (tmp_path / name).is_symlink()


def test_a_repair_never_writes_through_a_planted_partial_link(tmp_path) -> None:
    """Case 2: after a finished run, ``rm a.csv; ln -s VICTIM .micronet/a.csv.partial``."""
    from micronet.runtime.runs.outputs import UnsafeOutputError

    _finished(tmp_path)
    victim = _victim(tmp_path)
    (tmp_path / "a.csv").unlink()
    (tmp_path / ".micronet" / "a.csv.partial").symlink_to(victim)
    again = ImageOutputs(tmp_path, "a", ("csv", "geojson", "png"))
    verdict = again.check(SETTINGS)
    assert verdict.damaged == {"csv": "missing"}
    with pytest.raises(UnsafeOutputError, match="a.csv.partial is a symbolic link"):
        again.repair(verdict.damaged, lambda fmt, p: ImageOutputs.write_format(fmt, p, found(), image))
    assert victim.read_text() == VICTIM_TEXT and not (tmp_path / "a.csv").exists()


def test_a_hard_link_or_a_fifo_where_an_output_belongs_is_refused(tmp_path) -> None:
    from micronet.runtime.files import UnsafeOutputError, open_output, replace_atomically

    victim = _victim(tmp_path)
    os.link(victim, tmp_path / "hard.csv")
    with pytest.raises(UnsafeOutputError, match="hard.csv is a file with 1 other hard link"):
        open_output(tmp_path / "hard.csv", "a")
    with pytest.raises(UnsafeOutputError, match="hard.csv is a file with 1 other hard link"):
        replace_atomically(tmp_path / "hard.csv", lambda p: p.write_text("x"))
    os.mkfifo(tmp_path / "pipe.csv")
    with pytest.raises(UnsafeOutputError, match=r"pipe.csv is a FIFO \(named pipe\) where an output belongs"):
        replace_atomically(tmp_path / "pipe.csv", lambda p: p.write_text("x"))
    assert victim.read_text() == VICTIM_TEXT
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_the_hidden_folder_as_a_link_is_refused(tmp_path) -> None:
    from micronet.runtime.runs.outputs import UnsafeOutputError

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / ".micronet").symlink_to(elsewhere)
    with pytest.raises(UnsafeOutputError, match=r"out/.micronet is a symbolic link"):
        OutputLock(out, "a").acquire()
    assert list(elsewhere.iterdir()) == []


def test_outputs_and_records_get_the_mode_the_umask_gives(tmp_path) -> None:
    from micronet.runtime.runs.summary import write_summary

    old = os.umask(0o022)
    try:
        _finished(tmp_path)
        write_summary(tmp_path / "run_summary.csv", [{"input": "a.png", "status": "ok"}], merge=True)
    finally:
        os.umask(old)
    for path in [tmp_path / "a.csv", tmp_path / "a.overlay.png", tmp_path / ".micronet" / "a.progress.json",
                 tmp_path / ".micronet" / "a.progress.bin", tmp_path / "run_summary.csv"]:  # fmt: skip
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_a_record_from_before_the_hidden_folder_is_adopted(tmp_path) -> None:
    _finished(tmp_path)
    for name in ("a.progress.json", "a.progress.bin"):
        os.replace(tmp_path / ".micronet" / name, tmp_path / name)  # where records lived before
    verdict = ImageOutputs(tmp_path, "a", ("csv", "geojson", "png")).check(SETTINGS)
    assert verdict.action == "finished" and verdict.damaged == {}
    assert sorted(p.name for p in (tmp_path / ".micronet").iterdir()) == ["a.progress.bin", "a.progress.json"]
    assert not (tmp_path / "a.progress.json").exists()


def test_a_name_too_long_for_its_outputs_is_one_line(tmp_path) -> None:
    stem = "x" * 242  # a 246-character a.png: its overlay's partial name would be 262
    with pytest.raises(InputError, match=r"a name of 242 characters leaves no room for its output names .*rename the input to at most 235"):
        OutputLock(tmp_path, stem)
    assert list(tmp_path.iterdir()) == []


# --- the run summary -------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\xff\xfe\x00 binary garbage", b"name,count\nx,1\n"], ids=["binary", "wrong-header"])
def test_an_unreadable_summary_is_moved_aside_not_overwritten(tmp_path, caplog, content) -> None:
    from micronet.runtime.runs.summary import read_summary, write_summary

    path = tmp_path / "run_summary.csv"
    path.write_bytes(content)
    with caplog.at_level("WARNING"):
        write_summary(path, [{"input": "a.png", "status": "ok", "nuclei": 5}], merge=True)
    (aside,) = tmp_path.glob("run_summary.csv.unreadable-*")
    assert aside.read_bytes() == content  # the rows it held are kept, byte for byte
    assert aside.name in caplog.text and "not a run summary" in caplog.text
    assert [(r["input"], r["status"]) for r in read_summary(path)] == [("a.png", "ok")]
    path.write_bytes(b"")  # an empty file holds no rows: simply begun anew
    write_summary(path, [{"input": "b.png", "status": "ok"}], merge=True)
    assert len(list(tmp_path.glob("run_summary.csv.unreadable-*"))) == 1


def test_running_elsewhere_never_replaces_a_done_row_whoever_writes_last(tmp_path) -> None:
    from micronet.runtime.runs.summary import RUNNING_ELSEWHERE, read_summary, write_summary

    path = tmp_path / "run_summary.csv"
    mine = [{"input": "a.png", "status": "ok", "nuclei": 5}, {"input": "b.png", "status": RUNNING_ELSEWHERE}]
    theirs = [{"input": "a.png", "status": RUNNING_ELSEWHERE}, {"input": "b.png", "status": "ok", "nuclei": 7}]
    for first, second in ((mine, theirs), (theirs, mine)):
        path.unlink(missing_ok=True)
        write_summary(path, first, merge=True)
        write_summary(path, second, merge=True)
        assert [(r["input"], r["status"], r["nuclei"]) for r in read_summary(path)] == [("a.png", "ok", "5"), ("b.png", "ok", "7")]
    write_summary(path, [{"input": "a.png", "status": "failed", "error": "x"}, {"input": "c.png", "status": RUNNING_ELSEWHERE}], merge=True)
    assert [(r["input"], r["status"]) for r in read_summary(path)] == [("a.png", "failed"), ("b.png", "ok"), ("c.png", RUNNING_ELSEWHERE)]


def test_a_batch_without_nuclei_appends_nothing_even_with_shapeless_probabilities(tmp_path) -> None:
    """A slide batch of tissue tiles where no nucleus is found (seen on CMU-1 with
    phenotypes-wide, whose smaller tiles leave some tissue tiles empty): the empty
    probabilities, with or without their class axis, append nothing."""
    from micronet.runtime.runs.records import append_records, read_records

    path = tmp_path / "r.bin"
    with path.open("wb") as f:
        assert append_records(f, np.zeros((0, 2)), np.zeros(0), np.zeros(0)) == 0
        append_records(f, np.array([[1.0, 2.0]]), np.array([0.5]), np.array([[0.1, 0.2, 0.3, 0.4]]))
        append_records(f, np.zeros((0, 2)), np.zeros(0), np.zeros((0, 4)))
    np.testing.assert_allclose(read_records(path, width=7), [[1.0, 2.0, 0.5, 0.1, 0.2, 0.3, 0.4]], rtol=1e-6)
