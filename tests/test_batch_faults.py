"""`sgad-med run` under faults (issue 21, reliability): broken scans in a big batch, kill -9 and resume, a full disk.

The output contract (DESIGN.md): the good scans are written and the broken ones listed; outputs appear atomically,
so a run killed at any moment and re-run gives what an uninterrupted run gives, and nothing half written is left;
a full disk is a clear error, never a traceback or a partial file.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from sgad_med.cli import main
from tests.conftest import smooth_volume
from tests.tiny_bundles import make_tiny_bundles

SCAN_FILES = ("harmonized.nii.gz", "corrected.nii.gz", "slices.csv", "report.json")
NIFTI_OUTPUTS = ("harmonized.nii.gz", "corrected.nii.gz")
RUN_FILES = {"manifest.json", "report.html"}
SHAPE = (20, 18, 6)
AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])
# The untrained tiny detector scores these volumes 0.66-0.71, rising along the slices: 0.705 flags about one
# slice per scan (so restoring and the slice figures run too), 1.0 flags none (the fastest run, for 200 scans).
SOME_FLAGGED, NONE_FLAGGED = "0.705", "1"
# One torch thread: the tiny networks gain nothing from more, and on 2 shared cores threads fight (5x slower).
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> Path:
    return make_tiny_bundles(tmp_path_factory.mktemp("tiny") / "bundles")


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _good_scan(path: Path, seed: int, shape: tuple[int, ...] = SHAPE) -> None:
    nib.save(nib.Nifti1Image(smooth_volume(shape=shape, seed=seed), AFFINE), path)


def _nifti1_bytes(data: np.ndarray, dims: tuple[int, ...] | None = None) -> bytes:
    """An uncompressed single-file NIfTI-1 (header, 4 bytes of extension flag, voxels); ``dims`` overrides the
    header's dim[1:4] without touching the voxels."""
    image = nib.Nifti1Image(data, AFFINE)
    header = image.header.copy()
    if dims is not None:
        header["dim"][1:1 + len(dims)] = dims
    body = image.to_bytes()[header.sizeof_hdr:]  # the extension flag and the voxels, as nibabel wrote them
    return header.binaryblock + body


def _write_broken(folder: Path, good: bytes) -> dict[str, str]:
    """Twenty scans broken in ten ways, two of each; returns {scan_id: file name}."""
    rng = np.random.default_rng(7)
    volume = smooth_volume(shape=SHAPE, seed=1)
    with_nan, with_inf = volume.copy(), volume.copy()
    with_nan[3, 4, 2] = np.nan
    with_inf[5, 6, 1] = np.inf
    raw = _nifti1_bytes(volume)
    kinds: dict[str, tuple[str, bytes]] = {
        "garbage": (".nii.gz", rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()),
        "truncated-gzip": (".nii.gz", good[: len(good) // 2]),
        "empty-gz": (".nii.gz", b""),
        "empty": (".nii", b""),
        "nan": (".nii.gz", gzip.compress(_nifti1_bytes(with_nan))),
        "inf": (".nii.gz", gzip.compress(_nifti1_bytes(with_inf))),
        "absurd-dims": (".nii", _nifti1_bytes(volume, dims=(30000, 30000, 30000))),
        "truncated-voxels": (".nii", raw[: len(raw) - volume.nbytes // 2]),
        "gzipped-garbage": (".nii.gz", gzip.compress(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())),
        "header-only": (".nii", raw[:348]),
    }
    broken = {}
    for kind, (suffix, content) in kinds.items():
        for copy in (1, 2):
            scan_id = f"broken-{kind}-{copy}"
            (folder / f"{scan_id}{suffix}").write_bytes(content)
            broken[scan_id] = f"{scan_id}{suffix}"
    return broken


def _manifest(out: Path) -> dict[str, dict]:
    return {entry["scan_id"]: entry for entry in json.loads((out / "manifest.json").read_text())["scans"]}


def _leftovers(out: Path) -> list[str]:
    """Hidden files and folders anywhere under ``out``: ``.tmp-*``/``.old-*`` of an interrupted write."""
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*"))


def _finished(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")} if out.exists() else set()


def _assert_complete(folder: Path, shape: tuple[int, ...] = SHAPE) -> None:
    """A finished scan folder: every file of the contract, readable, nothing else but the figures."""
    assert {p.name for p in folder.iterdir()} == {*SCAN_FILES, "figures"}, folder
    for name in NIFTI_OUTPUTS:
        image = nib.load(folder / name)
        assert image.shape == shape and np.allclose(image.affine, AFFINE), (folder, name)
        assert np.isfinite(np.asarray(image.dataobj)).all()
    with open(folder / "slices.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["slice"]) for r in rows] == list(range(shape[-1])), folder
    report = json.loads((folder / "report.json").read_text())
    assert report["counts"]["slices"] == shape[-1] and len(report["slices"]) == shape[-1]
    assert (folder / "figures" / "scores.png").stat().st_size > 0


# --- 1. a batch of 200 scans, 10 % of them broken ----------------------------------------------------------------


def test_200_scans_with_20_broken_write_the_good_and_list_the_broken(tmp_path, bundles, one_thread, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for k in range(180):
        _good_scan(inputs / f"scan-{k:03d}.nii.gz", seed=k)
    broken = _write_broken(inputs, (inputs / "scan-000.nii.gz").read_bytes())
    assert len(broken) == 20
    before = {p.name: p.read_bytes() for p in inputs.iterdir()}
    out = tmp_path / "out"

    code = main(["run", str(inputs), "--out", str(out), "--bundles", str(bundles), "--quiet", "--workers", "1",
                 "--threshold", NONE_FLAGGED, "--device", "cpu"])
    printed = capsys.readouterr()
    assert code == 1, printed.err[-3000:]
    assert "200 scans: 180 ok, 20 failed, 0 skipped" in printed.out
    assert "Traceback" not in printed.err

    entries = _manifest(out)
    assert len(entries) == 200
    good = {f"scan-{k:03d}" for k in range(180)}
    for scan_id in good:
        entry = entries[scan_id]
        assert entry["status"] == "ok" and entry["error"] == "" and entry["dir"] == scan_id, entry
        assert entry["n_slices"] == SHAPE[-1]
    for scan_id, name in broken.items():
        entry = entries[scan_id]
        assert entry["status"] == "failed" and entry["dir"] is None, entry
        assert name in entry["error"], f"the error names the file: {entry['error']}"
        assert f"failed: {scan_id}: " in printed.err, "--quiet still lists every failure"
    # every good scan complete; nothing else in DIR: no folder of a broken scan, no hidden leftover
    assert {p.name for p in out.iterdir()} == good | RUN_FILES
    assert _leftovers(out) == []
    for scan_id in good:
        _assert_complete(out / scan_id)
    assert {p.name: p.read_bytes() for p in inputs.iterdir()} == before, "inputs are never modified"


# --- 2. kill -9 at random moments, then re-run -------------------------------------------------------------------


def _run_command(inputs: Path, out: Path, bundles: Path) -> list[str]:
    return [sys.executable, "-m", "sgad_med.cli", "run", str(inputs), "--out", str(out), "--bundles", str(bundles),
            "--quiet", "--workers", "1", "--threshold", SOME_FLAGGED, "--device", "cpu"]


def _comparable_report(folder: Path) -> dict:
    """report.json without what differs between two runs of the same scan: the timings."""
    report = json.loads((folder / "report.json").read_text())
    report.pop("timings")
    return report


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_kill_9_at_random_moments_then_rerun_gives_the_outputs_of_an_uninterrupted_run(tmp_path, bundles):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shapes = {f"scan-{k:02d}": (20 + k % 3, 18, 5 + k % 4) for k in range(12)}
    for k, (scan_id, shape) in enumerate(shapes.items()):
        _good_scan(inputs / f"{scan_id}.nii.gz", seed=100 + k, shape=shape)
    (inputs / "broken.nii.gz").write_bytes(b"not a nifti file")  # fails in every run, killed or not
    env = {**os.environ, **ONE_THREAD_ENV}

    reference = tmp_path / "reference"
    done = subprocess.run(_run_command(inputs, reference, bundles), capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]

    out = tmp_path / "resumed"
    rng = random.Random(21)
    kills, seen_leftovers = 0, []
    for _ in range(4):
        # Kill once `ahead` more scans are finished (0: possibly still starting), after a random part of a scan's time.
        # Capped short of the end, so that a fast machine still kills runs rather than sees them finish.
        ahead, delay = rng.randint(0, 3), rng.uniform(0.0, 0.6)
        target = min(len(_finished(out)) + ahead, len(shapes) - 3)
        process = subprocess.Popen(_run_command(inputs, out, bundles), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, env=env, cwd=tmp_path)
        deadline = time.monotonic() + 120
        while process.poll() is None and len(_finished(out)) < target and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        if process.poll() is None:
            process.kill()  # SIGKILL: no handler, no finally, no atexit runs
        process.wait(timeout=60)
        if process.returncode == -9:
            kills += 1
            seen_leftovers += _leftovers(out) if out.exists() else []
            for scan_id in _finished(out):  # what a killed run left as a scan folder is always complete
                _assert_complete(out / scan_id, shapes[scan_id])
    assert kills >= 3, f"only {kills} of 4 runs were killed before they finished"
    # A kill while the run's own files are written leaves atomic_file's temporary names (random timing seldom hits
    # that moment, so it is set up here): the next run must remove them too.
    (out / ".tmp-manifest.json.k9x2a1.json").write_text('{"scans": [')
    (out / ".tmp-report.html.q0w9e8.html").write_text("<html><body>half")

    final = subprocess.run(_run_command(inputs, out, bundles), capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=300)
    assert final.returncode == 1, final.stderr[-3000:]
    assert "Traceback" not in final.stderr
    assert _leftovers(out) == [], "the re-run removed what the killed runs left"

    # the same folders and files, the same voxels, the same per-slice results
    assert {p.name for p in out.iterdir()} == {p.name for p in reference.iterdir()} == set(shapes) | RUN_FILES
    assert _leftovers(reference) == []
    flagged = 0
    for scan_id, shape in shapes.items():
        ours, theirs = out / scan_id, reference / scan_id
        _assert_complete(ours, shape)
        assert _files(ours) == _files(theirs), scan_id
        for name in NIFTI_OUTPUTS:
            a, b = nib.load(ours / name), nib.load(theirs / name)
            assert np.array_equal(a.get_fdata(), b.get_fdata()), (scan_id, name)
            assert np.array_equal(a.affine, b.affine) and a.get_data_dtype() == b.get_data_dtype()
        assert (ours / "slices.csv").read_text() == (theirs / "slices.csv").read_text(), scan_id
        for figure in sorted((theirs / "figures").iterdir()):
            assert (ours / "figures" / figure.name).read_bytes() == figure.read_bytes(), (scan_id, figure.name)
        assert _comparable_report(ours) == _comparable_report(theirs), scan_id
        flagged += _comparable_report(ours)["counts"]["flagged"]
    assert 0 < flagged < sum(shape[-1] for shape in shapes.values()), "some slices flagged and restored, not all"

    # manifest.json: scans finished by a killed run are "skipped" (resumed), with the same counts
    ours, theirs = _manifest(out), _manifest(reference)
    assert set(ours) == set(theirs) == {*shapes, "broken"}
    for scan_id in shapes:
        assert theirs[scan_id]["status"] == "ok"
        assert ours[scan_id]["status"] == "ok" or (ours[scan_id]["status"] == "skipped" and ours[scan_id]["resumed"])
        for key in ("n_slices", "n_flagged", "n_restored", "dir"):
            assert ours[scan_id][key] == theirs[scan_id][key], (scan_id, key)
    assert ours["broken"]["status"] == theirs["broken"]["status"] == "failed"
    assert ours["broken"]["error"] == theirs["broken"]["error"] and "broken.nii.gz" in ours["broken"]["error"]
    print(f"{kills} kills; hidden leftovers the re-runs removed: {sorted(set(seen_leftovers))}")


# --- 3. a full disk ----------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only; skipped where mounting is not permitted, e.g. an unprivileged container)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _noisy_scans(folder: Path, count: int) -> None:
    """Scans of noise (gzip cannot shrink them): about 150 kB per output volume, so 2 MiB holds a few."""
    folder.mkdir()
    rng = np.random.default_rng(3)
    for k in range(count):
        volume = rng.normal(500.0, 200.0, (48, 48, 16)).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, AFFINE), folder / f"noise-{k:02d}.nii.gz")


def _assert_no_partial_files(out: Path) -> None:
    assert _leftovers(out) == []
    for scan_id in _finished(out):
        folder = out / scan_id
        assert {p.name for p in folder.iterdir()} == {*SCAN_FILES, "figures"}, folder
        for name in NIFTI_OUTPUTS:
            assert nib.load(folder / name).get_fdata().shape == (48, 48, 16)
        json.loads((folder / "report.json").read_text())
    assert {p.name for p in out.iterdir() if p.is_file()} <= RUN_FILES
    if (out / "manifest.json").exists():
        json.loads((out / "manifest.json").read_text())


def test_a_full_disk_fails_the_scans_that_do_not_fit_clearly_and_leaves_nothing_partial(
    tmp_path, bundles, small_disk, one_thread, capsys
):
    inputs = tmp_path / "in"
    _noisy_scans(inputs, 12)
    out = small_disk / "out"
    run = ["run", str(inputs), "--out", str(out), "--bundles", str(bundles), "--quiet", "--workers", "1",
           "--threshold", NONE_FLAGGED, "--device", "cpu"]

    code = main(run)
    printed = capsys.readouterr()
    assert code == 1, printed.err[-3000:]
    assert "Traceback" not in printed.err and "Errno" not in printed.err, printed.err[-3000:]
    _assert_no_partial_files(out)
    entries = _manifest(out)
    failed = {s for s, e in entries.items() if e["status"] == "failed"}
    ok = {s for s, e in entries.items() if e["status"] == "ok"}
    assert ok and failed and ok | failed == set(entries) and len(entries) == 12, printed.err[-3000:]
    assert _finished(out) == ok
    for scan_id in failed:
        error = entries[scan_id]["error"]
        assert f"no space left on the device holding {out}" in error, error
        assert "--out" in error and scan_id in error, error

    # space freed: the re-run writes the rest and keeps what was finished
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    assert main(run) == 0
    entries = _manifest(out)
    assert {s for s, e in entries.items() if e["status"] == "ok"} == failed
    assert {s for s, e in entries.items() if e["status"] == "skipped" and e["resumed"]} == ok
    _assert_no_partial_files(out)
    assert _finished(out) == set(entries)


def test_a_disk_too_full_for_the_manifest_says_so_and_exits_1(tmp_path, bundles, small_disk, one_thread, capsys):
    inputs = tmp_path / "in"
    _noisy_scans(inputs, 2)
    out = small_disk / "out"
    out.mkdir()
    with open(small_disk / "filler", "wb", buffering=0) as filler:  # fill every last block of the tmpfs
        with pytest.raises(OSError, match="No space left"):
            while True:
                filler.write(b"\0" * 65536)
    code = main(["run", str(inputs), "--out", str(out), "--bundles", str(bundles), "--quiet", "--workers", "0",
                 "--threshold", NONE_FLAGGED, "--device", "cpu"])
    printed = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in printed.err and "Errno" not in printed.err, printed.err[-3000:]
    assert f"manifest.json not written: no space left on the device holding {out}" in printed.err
    assert f"report.html not written: no space left on the device holding {out}" in printed.err
    assert printed.err.count("no space left on the device") == 4, "both scans and both run files said so"
    assert list(out.iterdir()) == [], "nothing partial: no scan folder, no temporary file, no manifest"
