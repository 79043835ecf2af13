"""Detection while a slide is scanned (``Detector.stream``, micronet.runtime.stream).

The reference is always ``detect`` on the stitched image: fields painted on a white
(``BACKGROUND``) canvas, the first arrival on top, as the session defines it. Stream and
reference run the same tiles of the same pixels through the same kernels, so they are
compared exactly: stricter than the matcher's tolerance (``assert_same_detections`` in
tests/conftest.py) that comparisons across kernels need.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from micronet.runtime.detections import Detections
from micronet.runtime.detector import Detector
from micronet.runtime.stream import BACKGROUND, FinalRegion, StreamSession

CMU_MPP = 0.499  # CMU-1-Small-Region.svs, 20× (Aperio's MPP)
SAMPLE = Path(__file__).resolve().parents[2] / "runtime" / "models" / "sample.png"


# --- helpers ----------------------------------------------------------------------------


def grid_fields(height: int, width: int, field: tuple[int, int], step: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """``(x, y, w, h)`` of fields on a regular grid, cropped to the slide; a step above
    the field's side leaves gaps between fields, below it overlaps."""
    fh, fw = field
    sy, sx = step
    return [
        (x, y, min(fw, width - x), min(fh, height - y))
        for y in range(0, height, sy)
        for x in range(0, width, sx)
    ]


def serpentine(fields: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Rows of fields, every other one right to left: how a scanner's stage moves."""
    rows: dict[int, list] = {}
    for f in fields:
        rows.setdefault(f[1], []).append(f)
    return [f for k, y in enumerate(sorted(rows)) for f in (rows[y] if k % 2 == 0 else rows[y][::-1])]


def stitched(image: np.ndarray, events: list[tuple[str, tuple[int, int, int, int]]]) -> np.ndarray:
    """The image the session sees: white, then each event painted from the last to the
    first, so the first arrival stays on top; a ``"skip"`` paints background."""
    out = np.full_like(image, BACKGROUND)
    for kind, (x, y, w, h) in reversed(events):
        out[y : y + h, x : x + w] = BACKGROUND if kind == "skip" else image[y : y + h, x : x + w]
    return out


def feed(session: StreamSession, image: np.ndarray, events: list[tuple[str, tuple[int, int, int, int]]]) -> Detections:
    """Every event in order, collecting ``ready()`` after each, then ``finish()``: all
    detections the session handed out."""
    got: list[Detections] = []
    for kind, (x, y, w, h) in events:
        if kind == "skip":
            session.skip(x, y, w, h)
        else:
            session.add(image[y : y + h, x : x + w], x, y)
        got += [r.detections for r in session.ready()]
    got.append(session.finish())
    return Detections.concat(got)


def assert_same(got: Detections, want: Detections) -> None:
    """The same detections, bit for bit, whatever their order; no duplicates."""
    assert len(got) == len(want), (len(got), len(want))
    g, w = np.lexsort((got.xy[:, 0], got.xy[:, 1])), np.lexsort((want.xy[:, 0], want.xy[:, 1]))
    np.testing.assert_array_equal(got.xy[g], want.xy[w])
    np.testing.assert_array_equal(got.scores[g], want.scores[w])
    if want.class_probabilities is not None:
        np.testing.assert_array_equal(got.class_probabilities[g], want.class_probabilities[w])


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fast() -> Detector:
    """The bundled int8 model with small tiles (256², cores of 96): many blocks per image."""
    return Detector("fast-cpu", device="cpu", threads=2, tile_size=256)


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    with Image.open(SAMPLE) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def cmu1(shared_data: Path) -> np.ndarray:
    tifffile = pytest.importorskip("tifffile")
    path = shared_data / "slides" / "CMU-1-Small-Region.svs"
    if not path.is_file():
        pytest.skip(f"CMU-1-Small-Region.svs not found in {path.parent}")
    return tifffile.imread(path, key=0)  # (2967, 2220, 3)


# --- the same answer as the whole image ---------------------------------------------------


@st.composite
def scans(draw: st.DrawFn, height: int, width: int) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Fields of random size and overlap (negative: gaps between them), some left out
    (gaps), some of those declared with ``skip``, all in a random order."""
    fh, fw = draw(st.integers(40, 220)), draw(st.integers(40, 220))
    sy = fh - draw(st.integers(-20, fh // 2))
    sx = fw - draw(st.integers(-20, fw // 2))
    fields = grid_fields(height, width, (fh, fw), (sy, sx))
    left_out = draw(st.sets(st.sampled_from(range(len(fields))), max_size=len(fields) // 4))
    skipped = draw(st.sets(st.sampled_from(sorted(left_out)), max_size=len(left_out))) if left_out else set()
    events = [("skip" if k in skipped else "add", f) for k, f in enumerate(fields) if k not in left_out or k in skipped]
    return draw(st.permutations(events))


@pytest.mark.data
@settings(max_examples=8, deadline=None)
@given(data=st.data(), mpp=st.sampled_from([None, 0.5, 0.6]))
def test_stream_equals_detect_on_the_stitched_image(fast, crchisto_images, data, mpp):
    image = crchisto_images[1][:360, :440]  # a real CRCHisto crop; at 0.5 or 0.6 µm/px resampled
    events = data.draw(scans(360, 440))
    want = fast.detect(stitched(image, events), mpp=mpp)
    with fast.stream(440, 360, mpp=mpp) as session:
        got = feed(session, image, events)
        assert session.counts().nuclei == len(want)
        assert session.counts().blocks_final == session.counts().blocks_total
    assert_same(got, want)
    assert got.image_shape == (360, 440) and got.mpp == mpp


@pytest.fixture(scope="module")
def cmu1_scan(cmu1: np.ndarray) -> tuple[Detector, list, list, Detections]:
    """CMU-1 cut into 512² fields overlapping by 10 % (step 461) at its 0.499 µm/px
    (resampled to the model's 0.55), two interior fields missing: one never comes
    (background from finish()), the other's hole between its neighbours is declared with
    ``skip``. The detector (fast-cpu, default tiles), the fields, the gap events and
    ``detect`` on the stitched slide, which no scan order changes."""
    det = Detector("fast-cpu", device="cpu", threads=2)
    h, w = cmu1.shape[:2]
    fields = grid_fields(h, w, (512, 512), (461, 461))
    missing = next(f for f in fields if f[:2] == (922, 1383))
    declared = next(f for f in fields if f[:2] == (461, 922))
    x, y = declared[:2]
    fields = [f for f in fields if f not in (missing, declared)]
    gaps = [("skip", (x + 51, y + 51, 410, 410))]  # the neighbours' 51 px overlaps cover the rest
    want = det.detect(stitched(cmu1, gaps + [("add", f) for f in fields]), mpp=CMU_MPP)
    return det, fields, gaps, want


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("order", ["row-major", "serpentine", "random"])
def test_cmu1_in_512_fields_with_overlap_and_gaps_equals_detect(cmu1, cmu1_scan, order):
    det, fields, gaps, want = cmu1_scan
    scan = {"row-major": fields, "serpentine": serpentine(fields)}.get(order)
    if scan is None:
        scan = [fields[k] for k in np.random.default_rng(24).permutation(len(fields))]
    events = [("add", f) for f in scan]
    events.insert(len(events) // 2, gaps[0])  # the gap declared mid-scan
    h, w = cmu1.shape[:2]
    with det.stream(w, h, mpp=CMU_MPP) as session:
        got = feed(session, cmu1, events)
    assert len(want) > 2000
    assert_same(got, want)


@pytest.mark.data
def test_classes_and_counts_equal_detect(crchisto_images):
    det = Detector("phenotypes", device="cpu", threads=2, tile_size=256)
    image = crchisto_images[2][:300, :400]
    events = [("add", f) for f in serpentine(grid_fields(300, 400, (128, 160), (110, 140)))]
    want = det.detect(image)
    with det.stream(400, 300) as session:
        got = feed(session, image, events)
        counts = session.counts()
    assert_same(got, want)
    assert got.class_names == want.class_names and len(want.class_names) == 4
    assert counts.nuclei == len(want) and counts.classes == want.class_counts()


# --- memory, threads, cancellation ---------------------------------------------------------


def no_network(det: Detector, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Replaces the detector's network with nothing (no detections), recording the tile
    shapes it is given: for bookkeeping tests that need no real inference."""
    shapes: list[tuple[int, int]] = []

    def detect_batch(images, **_):
        shapes.extend(im.shape[:2] for im in images)
        return [Detections.empty(im.shape[:2], class_names=det.class_names) for im in images]

    monkeypatch.setattr(det, "detect_batch", detect_batch)
    return shapes


@pytest.mark.parametrize("scan", [lambda f: f, serpentine])
def test_memory_is_about_two_strips_not_the_slide(monkeypatch, scan):
    det = Detector("fast-cpu", device="cpu", threads=1, tile_size=256)
    shapes = no_network(det, monkeypatch)
    width, height, field = 2000, 6000, 200
    rgb = np.full((field, field, 3), 200, np.uint8)
    with det.stream(width, height) as session:
        for x, y, w, h in scan(grid_fields(height, width, (field, field), (180, 180))):
            session.add(rgb[:h, :w], x, y)
        session.finish()
        assert len(shapes) == session.counts().blocks_total
        # A row of block windows (one tile high) plus the fields of the row being scanned
        # and the next, with their overlap: a bound two strips high, a fraction of the slide.
        backlog = 2 * det.batch_size * 3 * det.tile_size**2  # the default backlog of tiles
        strips = 3 * width * (det.tile_size + 2 * field) * (200 / 180) + backlog
        assert session.peak_held_bytes <= strips < 3 * width * height / 4
        assert session.held_bytes == 0


@pytest.mark.data
def test_one_thread_adds_while_another_reads(fast, crchisto_images):
    image = crchisto_images[3][:300, :300]
    events = [("add", f) for f in grid_fields(300, 300, (100, 100), (90, 90))]
    want = fast.detect(image)
    session = fast.stream(300, 300)
    regions: list[FinalRegion] = []
    reader = threading.Thread(target=lambda: regions.extend(session.ready(wait=True)))
    reader.start()
    for _, (x, y, w, h) in events:
        session.add(image[y : y + h, x : x + w], x, y)
    rest = session.finish()
    reader.join(timeout=60)
    assert not reader.is_alive()
    assert_same(Detections.concat([r.detections for r in regions] + [rest]), want)
    # The boxes of the final regions partition the slide (finish() handed out the rest).
    area = sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in (r.box for r in regions))
    assert area <= 300 * 300 and (len(regions) < session.counts().blocks_total or area == 300 * 300)


def test_a_declared_gap_completes_blocks_before_finish(fast, sample, monkeypatch):
    no_network(fast, monkeypatch)
    h, w = 300, 400
    with fast.stream(w, h) as session:
        session.add(sample[:h, :200], 0, 0)
        assert session.counts().blocks_final == 0  # the right half is still to come
        session.skip(200, 0, 200, h)
        deadline = time.monotonic() + 30
        while session.counts().blocks_final < session.counts().blocks_total and time.monotonic() < deadline:
            time.sleep(0.01)
        assert session.counts().blocks_final == session.counts().blocks_total
        assert len(list(session.ready())) == session.counts().blocks_total


def test_cancel_stops_the_session_from_another_thread(fast, sample):
    session = fast.stream(512, 512)
    reader_done = threading.Event()
    threading.Thread(target=lambda: (list(session.ready(wait=True)), reader_done.set()), daemon=True).start()
    session.add(sample[:256, :256], 0, 0)
    session.cancel()
    assert reader_done.wait(30)
    deadline = time.monotonic() + 30  # the worker drops the block it was running when done with it
    while session.held_bytes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert session.held_bytes == 0
    with pytest.raises(ValueError, match="cancelled"):
        session.add(sample[:256, :256], 256, 0)
    with pytest.raises(ValueError, match="cancelled"):
        session.finish()
    session.cancel()  # twice: nothing


def test_an_error_in_the_network_reaches_the_caller(fast, sample, monkeypatch):
    def broken(images, **_):
        raise RuntimeError("backend lost")

    monkeypatch.setattr(fast, "detect_batch", broken)
    with fast.stream(128, 128) as session:
        session.add(sample[:128, :128], 0, 0)  # completes the only block: the worker fails on it
        with pytest.raises(RuntimeError, match="backend lost"):
            list(session.ready(wait=True))
        with pytest.raises(RuntimeError, match="backend lost"):
            session.finish()


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, says",
    [
        (lambda s, rgb: s.add(rgb, 300, 0), "reaches past the slide's W×H 400×300"),
        (lambda s, rgb: s.add(rgb, -1, 0), "x: expected an integer >= 0"),
        (lambda s, rgb: s.add(rgb, 0.5, 0), "x: expected an integer"),
        (lambda s, rgb: s.add(rgb.astype(np.float32) / 255, 0, 0), "float32"),
        (lambda s, rgb: s.add(rgb.astype(np.uint16), 0, 0), "16-bit"),
        (lambda s, rgb: s.add(rgb[..., 0], 0, 0), "grayscale"),
        (lambda s, rgb: s.add(rgb, 0, 0, mpp=0.25), "0.25 µm/px, the stream at 0.5"),
        (lambda s, rgb: s.add(str(SAMPLE), 0, 0), "got a path"),
        (lambda s, rgb: s.skip(0, 250, 10, 100), "gap at .* reaches past"),
    ],
)
def test_bad_fields_raise_one_clear_error(fast, sample, call, says):
    with fast.stream(400, 300, mpp=0.5) as session:
        with pytest.raises((ValueError, TypeError), match=says):
            call(session, sample[:128, :128])
        assert session.counts().fields == 0


def test_bad_sessions_raise_one_clear_error(fast, sample):
    with pytest.raises(ValueError, match="width: expected an integer >= 1"):
        fast.stream(0, 100)
    with pytest.raises(ValueError, match="looks like a magnification"):
        fast.stream(100, 100, mpp=20)
    with pytest.raises(ValueError, match="colour_stats="):
        Detector("fast-cpu", device="cpu", threads=1, normalize="reinhard").stream(100, 100)
    with fast.stream(64, 64) as session:
        session.add(sample[:64, :64], 0, 0)
        assert len(session.finish()) == len(fast.detect(sample[:64, :64]))
        with pytest.raises(ValueError, match="this stream is finished"):
            session.add(sample[:64, :64], 0, 0)
