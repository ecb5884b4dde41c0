"""`sgad-med run`: the output contract of DESIGN.md, failures inside a batch, resuming, and torchrun batches."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

from sgad_med.batch import BatchRunner, shard
from sgad_med.cli import main
from sgad_med.io.dicom_write import write_new_series
from tests.conftest import oblique_affine, smooth_volume
from tests.tiny_bundles import make_tiny_bundles

SCAN_FILES = ("harmonized.nii.gz", "corrected.nii.gz", "slices.csv", "report.json")
NIFTI_IDS = ["scan0", "scan1", "scan2"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> Path:
    return make_tiny_bundles(tmp_path_factory.mktemp("tiny") / "bundles")


def _inputs(folder: Path, corrupt: bool = True, dicom: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(NIFTI_IDS):
        affine = oblique_affine(flips=(-1, 1, 1)) if k == 0 else np.diag([1.5, 1.5, 3.0, 1.0])
        nib.save(nib.Nifti1Image(smooth_volume(shape=(20, 18, 6 + k), seed=k), affine), folder / f"{name}.nii.gz")
    if corrupt:
        (folder / "bad.nii.gz").write_bytes(b"not a nifti file")
    if dicom:
        shutil.copy2(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    return folder


def _run(inputs: Path, out: Path, bundles: Path, *extra: str) -> int:
    return main(["run", str(inputs), "--out", str(out), "--bundles", str(bundles), "--quiet", *extra])


def _manifest(out: Path) -> dict[str, dict]:
    return {entry["scan_id"]: entry for entry in json.loads((out / "manifest.json").read_text())["scans"]}


def test_contract_files_per_scan_manifest_and_a_failing_scan(tmp_path, bundles, capsys):
    inputs = _inputs(tmp_path / "in")
    before = {p: p.read_bytes() for p in inputs.iterdir()}
    out = tmp_path / "out"
    code = _run(inputs, out, bundles, "--threshold", "0.5", "--workers", "2")
    printed = capsys.readouterr().out
    assert code == 1, "one scan failed: exit code 1, the others written"
    assert "4 scans: 3 ok, 1 failed, 0 skipped" in printed
    entries = _manifest(out)
    assert set(entries) == {*NIFTI_IDS, "bad"}
    assert entries["bad"]["status"] == "failed" and "bad.nii.gz" in entries["bad"]["error"]
    assert not (out / "bad").exists()
    for k, scan_id in enumerate(NIFTI_IDS):
        entry = entries[scan_id]
        assert entry["status"] == "ok" and entry["error"] == "" and entry["dir"] == scan_id
        folder = out / scan_id
        for name in SCAN_FILES:
            assert (folder / name).is_file(), name
        source = nib.load(inputs / f"{scan_id}.nii.gz")
        for name in ("harmonized.nii.gz", "corrected.nii.gz"):
            written = nib.load(folder / name)
            assert written.shape == source.shape and np.allclose(written.affine, source.affine)
        with open(folder / "slices.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert {"slice", "score", "flagged", "restored"} <= set(rows[0])
        assert [int(r["slice"]) for r in rows] == list(range(6 + k)) and entry["n_slices"] == 6 + k
        assert all(0.0 <= float(r["score"]) <= 1.0 and r["flagged"] in "01" and r["restored"] in "01" for r in rows)
        assert sum(int(r["flagged"]) for r in rows) == entry["n_flagged"]
        report = json.loads((folder / "report.json").read_text())
        assert report["settings"]["threshold"] == 0.5 and report["inputs"]
    assert (out / "report.html").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temporary files left"
    assert {p: p.read_bytes() for p in inputs.iterdir()} == before, "inputs are never modified"


def test_resume_skips_finished_scans_ignores_leftovers_and_overwrite_redoes(tmp_path, bundles):
    inputs = _inputs(tmp_path / "in", corrupt=False)
    out = tmp_path / "out"
    assert _run(inputs, out, bundles, "--workers", "0") == 0
    stamp = {s: (out / s / "report.json").stat().st_mtime_ns for s in NIFTI_IDS}

    # A run killed with -9 while writing scan1 leaves only its hidden temporary folder, never scan1/.
    shutil.rmtree(out / "scan1")
    leftover = out / ".tmp-scan1-999999"
    leftover.mkdir()
    (leftover / "harmonized.nii.gz").write_bytes(b"half written")
    assert _run(inputs, out, bundles) == 0
    entries = _manifest(out)
    assert entries["scan0"]["status"] == entries["scan2"]["status"] == "skipped"
    assert entries["scan0"]["resumed"] and "--overwrite" in entries["scan0"]["error"]
    assert entries["scan0"]["n_slices"] == 6, "counts of a skipped scan come from its report.json"
    assert entries["scan1"]["status"] == "ok" and (out / "scan1" / "report.json").is_file()
    assert not leftover.exists()
    assert all((out / s / "report.json").stat().st_mtime_ns == stamp[s] for s in ("scan0", "scan2"))

    assert _run(inputs, out, bundles, "--overwrite") == 0
    assert all(e["status"] == "ok" for e in _manifest(out).values())
    assert all((out / s / "report.json").stat().st_mtime_ns != stamp[s] for s in ("scan0", "scan2"))


def test_dicom_input_with_format_both_gets_a_derived_series_and_key_object(tmp_path, bundles):
    inputs = _inputs(tmp_path / "in", corrupt=False, dicom=True)
    out = tmp_path / "out"
    assert _run(inputs / "ct.dcm", out, bundles, "--format", "both", "--threshold", "0") == 0
    (scan_id,) = _manifest(out)
    assert scan_id.startswith("dcm-")
    dicom = sorted(p.name for p in (out / scan_id / "dicom").iterdir())
    assert len(dicom) == 2 and all(name.endswith(".dcm") for name in dicom)
    assert all((out / scan_id / name).is_file() for name in SCAN_FILES)


def test_dicom_outputs_say_why_something_was_not_written(tmp_path, bundles, capsys):
    inputs = _inputs(tmp_path / "in", corrupt=False, dicom=True)
    out = tmp_path / "out"
    # nothing flagged (threshold 1): the derived series is written, the Key Object Selection cannot be
    assert _run(inputs / "ct.dcm", out, bundles, "--format", "dicom", "--threshold", "1") == 0
    (scan_id,) = _manifest(out)
    assert [p.name for p in (out / scan_id / "dicom").iterdir()] == ["IM00001.dcm"]
    dicom = json.loads((out / scan_id / "report.json").read_text())["dicom"]
    assert dicom["key_object"] is None and dicom["derived_series"] == "dicom/" and dicom["files"] == 1
    assert "no slice was flagged" in dicom["note"] and "Key Object Selection" in dicom["note"]
    assert "no slice was flagged" in _manifest(out)[scan_id]["dicom_note"]
    assert "no Key Object Selection written" in capsys.readouterr().err
    derived = pydicom.dcmread(out / scan_id / "dicom" / "IM00001.dcm")
    assert str(derived.SeriesDescription).count("sgad-med") == 1, derived.SeriesDescription

    # NIfTI input: no DICOM study to derive from, said in report.json, the manifest and on the console
    out = tmp_path / "out-nifti"
    assert _run(inputs / "scan0.nii.gz", out, bundles, "--format", "dicom") == 0
    assert not (out / "scan0" / "dicom").exists()
    dicom = json.loads((out / "scan0" / "report.json").read_text())["dicom"]
    assert dicom["derived_series"] is None and "input is not DICOM" in dicom["note"]
    assert "input is not DICOM" in capsys.readouterr().err


def test_quiet_still_says_why_a_scan_failed(tmp_path, bundles, capsys):
    inputs = _inputs(tmp_path / "in")
    assert _run(inputs, tmp_path / "out", bundles) == 1
    printed = capsys.readouterr()
    assert "failed: bad: " in printed.err and "bad.nii.gz" in printed.err
    assert "4 scans: 3 ok, 1 failed, 0 skipped" in printed.out


def test_outputs_respect_the_umask(tmp_path, bundles):
    inputs = _inputs(tmp_path / "in", corrupt=False)
    old = os.umask(0o027)
    try:
        assert _run(inputs / "scan0.nii.gz", tmp_path / "out", bundles) == 0
    finally:
        os.umask(old)
    out = tmp_path / "out"
    for path in [out / "manifest.json", out / "report.html", *(out / "scan0").rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o750 if path.is_dir() else 0o640), (path, oct(mode))
    assert (out / "scan0").stat().st_mode & 0o777 == 0o750


def test_outputs_inside_an_input_folder_are_not_taken_as_inputs(tmp_path, bundles):
    inputs = _inputs(tmp_path / "in", corrupt=False)
    out = inputs / "results"
    assert _run(inputs, out, bundles) == 0
    assert _run(inputs, out, bundles) == 0
    assert set(_manifest(out)) == set(NIFTI_IDS)


def test_bad_usage_exits_2(tmp_path, bundles, capsys):
    inputs = _inputs(tmp_path / "in", corrupt=False)
    assert main(["run", str(inputs)]) == 2, "--out is required"
    assert main(["run", "--out", str(tmp_path / "o")]) == 2, "an input is required"
    assert _run(inputs, tmp_path / "o", bundles, "--threshold", "2") == 2
    assert _run(inputs, tmp_path / "o", bundles, "--format", "jpeg") == 2
    assert _run(inputs, tmp_path / "o", bundles, "--batch-size", "0") == 2
    assert _run(inputs, tmp_path / "o", bundles, "--device", "tpu-of-dreams") == 2
    if not torch.cuda.is_available():
        assert _run(inputs, tmp_path / "o", bundles, "--device", "cuda") == 2
    code = main(["run", str(inputs), "--out", str(tmp_path / "o"), "--bundles", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code == 2 and "nowhere" in err and "Traceback" not in err


def test_missing_input_is_a_failed_entry(tmp_path, bundles):
    inputs = _inputs(tmp_path / "in", corrupt=False)
    out = tmp_path / "out"
    code = main(["run", str(inputs / "scan0.nii.gz"), str(tmp_path / "missing"), "--out", str(out),
                 "--bundles", str(bundles), "--quiet"])
    assert code == 1
    entries = json.loads((out / "manifest.json").read_text())["scans"]
    assert [e["status"] for e in entries] == ["ok", "failed"] and "does not exist" in entries[1]["error"]


def test_shard_is_deterministic_and_covers_every_scan_once():
    ids = [f"s{k}" for k in (5, 1, 4, 2, 3)]
    parts = [shard(ids, rank, 2, key=str) for rank in range(2)]
    assert parts == [["s1", "s3", "s5"], ["s2", "s4"]]
    assert sorted(sum(parts, [])) == sorted(ids)


def test_runner_takes_a_pipeline_factory_and_loads_nothing_when_all_is_done(tmp_path, bundles):
    from sgad_med.pipeline import SGADPipeline

    inputs = _inputs(tmp_path / "in", corrupt=False)
    made = []

    def factory():
        made.append(1)
        return SGADPipeline.from_bundles(bundles, device="cpu")

    BatchRunner(factory, tmp_path / "out", quiet=True).run([inputs])
    runner = BatchRunner(factory, tmp_path / "out", quiet=True)
    entries = runner.run([inputs])
    assert len(made) == 1 and runner.exit_code == 0 and all(e["status"] == "skipped" for e in entries)


def test_torchrun_two_cpu_processes_split_the_scans_and_merge_one_manifest(tmp_path, bundles):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    inputs = _inputs(tmp_path / "in", corrupt=True)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "sgad_med.cli", "run", str(inputs),
               "--out", str(out), "--bundles", str(bundles), "--quiet", "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]  # the corrupt file fails: exit 1 on every rank
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    entries = {e["scan_id"]: e for e in manifest["scans"]}
    assert len(manifest["scans"]) == len(entries) == 4, "every scan once"
    assert entries["bad"]["status"] == "failed"
    assert {e["rank"] for e in entries.values()} == {0, 1}, "both ranks did work"
    assert all(entries[s]["status"] == "ok" and (out / s / "report.json").is_file() for s in NIFTI_IDS)
    assert (out / "report.html").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "partial manifests and temporary folders gone"
    assert result.stdout.count("4 scans: 3 ok, 1 failed") == 1, "rank 0 alone prints the summary"


def test_no_harmonize_debug_tracebacks_and_duplicate_inputs(tmp_path, bundles, capsys):
    inputs = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    code = main(["--debug", "run", str(inputs), str(inputs / "scan0.nii.gz"), "--out", str(out), "--bundles",
                 str(bundles), "--quiet", "--no-harmonize", "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" in err and "bad.nii.gz" in err
    entries = _manifest(out)
    assert sorted(entries) == sorted([*NIFTI_IDS, "bad"]), "a scan named twice is processed once"
    report = json.loads((out / "scan0" / "report.json").read_text())
    assert report["settings"]["harmonize"] is False
    source = nib.load(inputs / "scan0.nii.gz").get_fdata()
    assert np.allclose(nib.load(out / "scan0" / "harmonized.nii.gz").get_fdata(), source, rtol=1e-5, atol=1e-3)

    code = _run(inputs, tmp_path / "out2", bundles)
    assert code == 1 and "Traceback" not in capsys.readouterr().err


def test_unsupported_inputs_are_skipped_with_the_reason_or_processed_with_a_warning(tmp_path, bundles, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    perfusion = get_testdata_file("eCT_Supplemental.dcm")  # an rCBF map (ImageType ...\PERFUSION\RCBF)
    shutil.copy2(perfusion, inputs / "rcbf.dcm")
    nib.save(nib.Nifti1Image(smooth_volume(shape=(8, 8, 5)), np.eye(4)), inputs / "tiny.nii.gz")
    # one diffusion slice in several directions, stored as a series: every image at the same position
    repeats = write_new_series(smooth_volume(shape=(20, 18, 3)), np.diag([1.0, 1.0, 2.0, 1.0]), tmp_path / "dwi")
    (inputs / "dwi").mkdir()
    for k, path in enumerate(repeats):
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [0.0, 0.0, 0.0]
        ds.save_as(inputs / "dwi" / f"{k}.dcm")
    out = tmp_path / "out"
    assert _run(inputs, out, bundles) == 0, "unsupported scans are skipped, not failures"
    entries = _manifest(out)
    assert len(entries) == 3 and all(e["status"] == "skipped" and e["dir"] is None for e in entries.values())
    reasons = {scan_id: e["unsupported"] for scan_id, e in entries.items()}
    assert any("relative cerebral blood flow" in r and "RCBF" in r for r in reasons.values())
    assert "8x8 pixels" in reasons["tiny"]
    assert any("share one position" in r for r in reasons.values())
    assert all("--on-unsupported warn" in e["error"] for e in entries.values())

    out = tmp_path / "out-warn"
    assert _run(inputs / "rcbf.dcm", out, bundles, "--on-unsupported", "warn") == 0
    ((scan_id, entry),) = _manifest(out).items()
    assert entry["status"] == "ok" and "parametric map" in entry["warning"]
    assert "parametric map" in json.loads((out / scan_id / "report.json").read_text())["settings"]["unsupported"]
    assert "processed anyway" in capsys.readouterr().err


def test_background_is_kept_bit_for_bit_and_the_slice_axis_recorded(tmp_path, bundles):
    from tests.io.test_slice_axis import PLANE_AFFINES

    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in (24, 20, 9)), indexing="ij")
    head = np.where(x**2 + y**2 + 0.3 * z**2 < 0.6, smooth_volume(shape=(24, 20, 9), low=300, high=900), 0.0)
    write_new_series(head, PLANE_AFFINES["sagittal"](3.0), tmp_path / "sagittal", modality="MR")
    out = tmp_path / "out"
    assert _run(tmp_path / "sagittal", out, bundles) == 0
    ((scan_id, entry),) = _manifest(out).items()
    assert entry["slice_axis"] == "R"
    report = json.loads((out / scan_id / "report.json").read_text())
    assert report["slice_axis"]["plane"] == "sagittal" and report["counts"]["slices"] == 9
    with open(out / scan_id / "slices.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and {r["slice_axis"] for r in rows} == {"R"}
    import sgad_med

    source = sgad_med.load_scan(tmp_path / "sagittal").image.numpy()[0]  # RAS: slices along axis 0
    keep = source == 0
    assert keep.mean() > 0.3
    keep[[int(r["slice"]) for r in rows if r["restored"] == "1"]] = False  # restored slices are new throughout
    for name in ("harmonized.nii.gz", "corrected.nii.gz"):
        written = sgad_med.load_scan(out / scan_id / name).image.numpy()[0]
        assert np.array_equal(written[keep], source[keep]), name


def test_threads_option_sets_and_records_the_network_threads(tmp_path, bundles):
    inputs = _inputs(tmp_path / "in", corrupt=False)
    before = torch.get_num_threads()
    try:
        assert _run(inputs / "scan0.nii.gz", tmp_path / "out", bundles, "--threads", "1") == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    report = json.loads((tmp_path / "out" / "scan0" / "report.json").read_text())
    assert report["settings"]["threads"] == 1
