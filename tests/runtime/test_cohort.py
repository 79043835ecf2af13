"""Cohorts (micronet.runtime.runs.cohort): manifests, and a local Ray runtime running a cohort
of real slide files with the same outputs as a serial run, a broken slide recorded as
failed, and a worker killed mid-run losing and doubling nothing."""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import tifffile
from micronet.runtime.errors import InputError, MissingFileError
from micronet.runtime.runs.batch import RunSettings, process_input
from micronet.runtime.runs.cohort import (
    DetectorSpec,
    read_manifest,
    run_cohort,
    write_summary,
)

FORMATS = ("csv", "geojson")
CMU1_MPP = 0.499  # CMU-1-Small-Region.svs's pixel size (its MPP property)


def test_manifests_list_inputs_as_text_or_csv(tmp_path):
    (tmp_path / "list.txt").write_text("# cohort\na.svs\n\n/abs/b.svs\n")
    assert read_manifest(tmp_path / "list.txt") == [tmp_path / "a.svs", Path("/abs/b.svs")]
    (tmp_path / "list.csv").write_text("\ufeffpatient,slide\np1,x.svs\np2,sub/y.svs\n")
    assert read_manifest(tmp_path / "list.csv") == [tmp_path / "x.svs", tmp_path / "sub" / "y.svs"]
    assert read_manifest(tmp_path / "list.csv", "patient") == [tmp_path / "p1", tmp_path / "p2"]
    with pytest.raises(InputError, match="expected a column 'file_path'; the CSV has patient, slide"):
        read_manifest(tmp_path / "list.csv", "file_path")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(InputError, match="lists no inputs"):
        read_manifest(tmp_path / "empty.txt")
    with pytest.raises(MissingFileError):
        read_manifest(tmp_path / "missing.txt")


def test_run_summary_is_written_whole(tmp_path):
    rows = [{"input": "a.svs", "status": "ok", "nuclei": 3, "megapixels": 1.5, "seconds": 0.2, "worker": "h:1", "error": "", "extra": 1}]
    path = write_summary(tmp_path / "run_summary.csv", rows)
    header = "input,status,nuclei,megapixels,seconds,worker,error,tissue_mm2,classes,colour_distance,edge_blur_um,tiles_out_of_focus"
    assert path.read_text().splitlines() == [header, "a.svs,ok,3,1.5,0.2,h:1,,,,,,"]
    assert not list(tmp_path.rglob("*.partial"))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, shared_data: Path, write_pyramid) -> tuple[list[Path], Path]:
    """Four copies of a slide under other names and a broken slide; the serial run's outputs.

    The slide is a 1600² region of CMU-1 written as a tiled, JPEG-compressed pyramidal
    TIFF at CMU-1's pixel size: a real slide file with several `fast-cpu` tiles (so a
    worker killed mid-slide can leave committed batches to resume from) at 40 % of CMU-1's
    pixels, which this test reads eight times."""
    source = shared_data / "slides" / "CMU-1-Small-Region.svs"
    if not source.is_file():
        pytest.skip(f"{source} not found")
    folder = tmp_path_factory.mktemp("cohort")
    first = write_pyramid(folder / "a.tif", np.ascontiguousarray(tifffile.imread(source, key=0)[:1600, :1600]), CMU1_MPP)
    slides = [first]
    for name in ("b", "c", "d"):
        slides.append(Path(shutil.copy(first, folder / f"{name}.tif")))
    broken = folder / "broken.tif"
    broken.write_bytes(first.read_bytes()[:5000])  # a truncated TIFF
    slides.insert(2, broken)
    serial = folder / "serial"
    # One ONNX Runtime thread, as each Ray worker below: byte-equal outputs must not hang
    # on how a kernel splits its work between threads (near-ties differ by CPU and split).
    rows = run_cohort(slides, partial(process_input, out_dir=serial, settings=RunSettings(formats=FORMATS)), DetectorSpec("fast-cpu", "cpu", threads=1), progress=False)
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "ok", "ok"]
    return slides, serial


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".csv", ".geojson") and p.name != "run_summary.csv"}


@pytest.mark.slow
def test_a_cohort_on_local_ray_writes_what_the_serial_run_writes_and_survives_a_killed_worker(cohort, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray not installed (pip install 'micronet-sdk[cluster]')")
    slides, serial = cohort
    out = tmp_path / "ray"
    process = partial(process_input, out_dir=out, settings=RunSettings(formats=FORMATS))
    actors: list = []
    pids: dict[int, object] = {}
    killed: list[int] = []

    def remember(handles: list) -> None:
        actors.extend(handles)
        pids.update(zip(ray.get([a.pid.remote() for a in handles]), handles))

    def kill_one_worker(row: dict) -> None:
        # When the first slide comes back, kill the *other* worker, which is still in the
        # middle of its slide: Ray restarts it and retries that slide, which resumes
        # from its partial outputs (the lock died with the process).
        if not killed:
            done_pid = int(str(row["worker"]).rsplit(":", 1)[1])
            busy_pid = next(pid for pid in pids if pid != done_pid)
            killed.append(busy_pid)
            ray.kill(pids[busy_pid], no_restart=False)

    rows = run_cohort(
        slides, process, DetectorSpec("fast-cpu", "cpu", threads=1), ray_address="local", workers=2, progress=False,
        on_row=kill_one_worker, on_workers=remember,
    )  # fmt: skip
    assert killed and len(actors) == 2
    # One row per slide, in input order: nothing lost, nothing doubled.
    assert [Path(r["input"]).name for r in rows] == [p.name for p in slides]
    status = {Path(r["input"]).name: r["status"] for r in rows}
    # The killed worker's slide is "ok" when the kill came mid-slide (resumed from its
    # partial outputs), or "skipped" when the worker had just finished it before dying
    # (the retry finds it finished and verifies it): a race the test cannot steer.
    retried = [n for n, s in status.items() if s == "skipped"]
    assert len(retried) <= 1, status
    assert {n: ("ok" if s == "skipped" else s) for n, s in status.items()} == {
        "a.tif": "ok", "b.tif": "ok", "broken.tif": "failed", "c.tif": "ok", "d.tif": "ok"
    }
    assert "broken.tif" in next(r["error"] for r in rows if r["status"] == "failed")
    # The killed worker's slide was retried on its restarted actor (a new process).
    workers = {int(str(r["worker"]).rsplit(":", 1)[1]) for r in rows if r["status"] in ("ok", "skipped")}
    assert workers - set(pids), (workers, pids, killed)
    # Byte for byte the serial run's outputs; no partial file or lock left.
    assert _outputs(out) == _outputs(serial) and len(_outputs(out)) == 8
    assert not list(out.rglob("*.partial")) and not list(out.rglob("*.lock"))

    # A rerun of the cohort: the finished slides are verified and skipped, the broken
    # one fails again, and no output changes.
    before = _outputs(out)
    again = run_cohort(slides, process, DetectorSpec("fast-cpu", "cpu", threads=1), ray_address="local", workers=2, progress=False)
    assert [r["status"] for r in again] == ["skipped", "skipped", "failed", "skipped", "skipped"]
    assert _outputs(out) == before


def test_a_summary_merges_the_inputs_of_earlier_batches(tmp_path):
    path = tmp_path / "run_summary.csv"
    write_summary(path, [{"input": "a.png", "status": "ok", "nuclei": 1}, {"input": "b.png", "status": "failed", "error": "grey"}])
    write_summary(path, [{"input": "b.png", "status": "ok", "nuclei": 2}, {"input": "c.png", "status": "ok", "nuclei": 3}], merge=True)
    lines = path.read_text().splitlines()
    assert [ln.split(",")[:3] for ln in lines[1:]] == [["a.png", "ok", "1"], ["b.png", "ok", "2"], ["c.png", "ok", "3"]]
    write_summary(path, [{"input": "d.png", "status": "ok", "nuclei": 4}])  # without merge: this run only
    assert len(path.read_text().splitlines()) == 2


def test_the_spec_sent_to_ray_workers_keeps_tta_and_normalisation():
    """``--ray --tta``: the spec each Ray actor builds its Detector from is the caller's
    with only the device and threads settled (no Ray needed to check it)."""
    from micronet.runtime.runs.cohort import ray_plan

    asked = DetectorSpec("fast-cpu", "auto", threshold=0.4, tta=True, normalize="reinhard")
    spec, per_task, capacity = ray_plan(asked, {"CPU": 8.0})
    assert spec == DetectorSpec("fast-cpu", "cpu", threshold=0.4, threads=1, tta=True, normalize="reinhard")
    assert per_task == {"num_cpus": 1, "num_gpus": 0} and capacity == 8
    spec, per_task, capacity = ray_plan(DetectorSpec(device="cuda:0", tta=True), {"CPU": 8.0, "GPU": 2.0})
    assert spec.tta and per_task == {"num_cpus": 1, "num_gpus": 1} and capacity == 2
    with pytest.raises(InputError, match="the Ray cluster has none"):
        ray_plan(DetectorSpec(device="cuda", tta=True), {"CPU": 8.0})
