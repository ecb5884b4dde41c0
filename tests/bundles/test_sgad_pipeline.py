"""The sgad_pipeline bundle runs the whole chain via monai.bundle and writes what `sgad-med run` writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from sgad_med.cli import main
from tests.bundles.conftest import BUNDLES
from tests.conftest import SAMPLE_DATA, smooth_volume
from tests.tiny_bundles import make_tiny_bundles


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_bundle_inference_writes_the_same_outputs_as_the_cli(tmp_path):
    bundles = make_tiny_bundles(tmp_path / "bundles")
    shutil.copytree(BUNDLES / "sgad_pipeline", bundles / "sgad_pipeline",
                    ignore=shutil.ignore_patterns("inference_output"))
    data = tmp_path / "data"
    data.mkdir()
    for k in range(2):
        nib.save(nib.Nifti1Image(smooth_volume(shape=(20, 18, 5), seed=k), np.diag([2.0, 2.0, 3.0, 1.0])),
                 data / f"case{k}.nii.gz")
    (data / "broken.nii.gz").write_bytes(b"broken")

    # Run from the folder holding bundles/, without --bundle_root, as the README shows.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
               "bundles/sgad_pipeline/configs/inference.json", "--dataset_dir", str(data),
               "--output_dir", str(tmp_path / "bundle_out"), "--threshold", "0.0", "--quiet", "true"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "3 scans: 2 ok, 1 failed" in result.stdout

    cli_out = tmp_path / "cli_out"
    code = main(["run", str(data), "--out", str(cli_out), "--bundles", str(bundles), "--threshold", "0", "--quiet",
                 "--device", "cpu"])
    assert code == 1
    assert _files(tmp_path / "bundle_out") == _files(cli_out)
    bundle_manifest = json.loads((tmp_path / "bundle_out" / "manifest.json").read_text())
    assert {e["scan_id"]: e["status"] for e in bundle_manifest["scans"]} == {"case0": "ok", "case1": "ok",
                                                                              "broken": "failed"}
    for scan_id in ("case0", "case1"):
        for name in ("harmonized.nii.gz", "corrected.nii.gz"):
            a = nib.load(tmp_path / "bundle_out" / scan_id / name).get_fdata()
            b = nib.load(cli_out / scan_id / name).get_fdata()
            # float32 sums differ with the thread count (the bundle runs in a 1-thread subprocess): compare to scale
            assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max(), f"{scan_id}/{name}: same networks, same result"


def test_evaluate_pipeline_runs_the_bundle_evaluation(tmp_path, capsys):
    bundles = make_tiny_bundles(tmp_path / "bundles")
    shutil.copytree(BUNDLES / "sgad_pipeline" / "configs", bundles / "sgad_pipeline" / "configs")
    code = main(["evaluate", "pipeline", "--bundles", str(bundles), "--out", str(tmp_path / "eval"),
                 "--set", "n_anatomies=1", "--set", "spacing=8.0", "--set", "threshold=0.0",
                 "--set", "device=cpu", "--set", "slices_per_volume=2", "--set", f"dataset_dir={SAMPLE_DATA / 'mni'}"])
    assert code == 0
    results = json.loads((tmp_path / "eval" / "pipeline_evaluation.json").read_text())
    detection = results["detection"]
    assert detection["corrupted_flagged"] == 1.0, "threshold 0 flags every slice"
    # every clean head slice is flagged too; those beside a damaged slice are counted apart
    assert detection["clean_flagged"] == 1.0
    assert 0 < detection["clean_flagged_beside_damage"] == detection["n_clean_beside_damage"] < detection["n_clean"]
    assert results["unchanged_elsewhere"] is True
    assert set(results["restoration"]) == {"harmonized, not restored", "sgad-med pipeline",
                                           "neighbour mean (perfect detection)"}
    assert "corrupted slices flagged" in capsys.readouterr().out
