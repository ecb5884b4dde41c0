"""The slice_anomaly_detection bundle's evaluate.json runs through ``monai.bundle run`` on a tiny temporary bundle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sgad_med.networks import SliceSequenceNet
from tests.bundles.conftest import BUNDLES
from tests.conftest import SAMPLE_DATA

CONFIGS = BUNDLES / "slice_anomaly_detection" / "configs"
TINY_NET = {"channels": [4, 8], "temporal_channels": 8, "dilations": [1, 2]}


def tiny_detection_bundle(root: Path) -> Path:
    """A bundle folder with the real evaluate.json, a tiny network_def and its untrained weights."""
    bundle = root / "slice_anomaly_detection"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    shutil.copy2(CONFIGS / "evaluate.json", bundle / "configs" / "evaluate.json")
    shutil.copy2(BUNDLES / "style_harmonization" / "configs" / "logging.conf", bundle / "configs" / "logging.conf")
    inference = {"imports": ["$import sgad_med"], "bundle_root": ".",
                 "network_def": {"_target_": "sgad_med.networks.SliceSequenceNet", **TINY_NET}}
    (bundle / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    torch.manual_seed(0)
    net = SliceSequenceNet(**TINY_NET)
    torch.save({"model": net.state_dict()}, bundle / "models" / "model.pt")
    return bundle


def tiny_overrides(tmp_path: Path) -> dict:
    return {
        "n_anatomies": 1,
        "kinds": ["spike", "bias"],
        "densities": [0.25],
        "layouts": ["contiguous"],
        "spacing": 8.0,
        "validation_anatomies": "$range(900, 901)",
        "dataset_dir": str(SAMPLE_DATA / "mni"),
        "harmonizer_bundle": str(BUNDLES / "style_harmonization"),
        "output_dir": str(tmp_path / "eval_output"),
        "device": "cpu",
    }


def _check_results(path: Path, harmonized: bool = True) -> None:
    results = json.loads(path.read_text())
    heldout = results["heldout"]
    assert heldout["kinds"] == ["spike", "bias"] and heldout["densities"] == [0.25]
    assert heldout["methods"] == ["detector", "classical", "hf-neighbours", "trivial"]
    names = [row["name"] for row in heldout["settings"]]
    # the shipped harmonizer was found and used, or switched off with use_harmonizer=false
    assert names == (["clean", "clean harmonized"] if harmonized else ["clean"]) + ["contiguous 25%"]
    row = heldout["settings"][-1]
    assert set(row["detector"]) == {"isolated", "adjacent", "end", "sensitivity"} and row["n"]["adjacent"] > 0
    assert set(heldout["per_kind"]["spike"]) >= {"detector", "classical", "hf-neighbours", "trivial", "n_positive"}
    # the real volumes: nibabel's EPI and anatomical image (and pydicom-data's MR where installed)
    assert any("anatomical" in name for name in results["real_scans"]["volumes"])
    assert results["settings"]["validation_anatomy_seeds"] == [900]


def test_evaluate_json_runs_through_monai_bundle_run(tmp_path):
    if not (BUNDLES / "style_harmonization" / "models" / "model.pt").is_file():
        pytest.skip("the style_harmonization bundle has no shipped weights")
    bundle = tiny_detection_bundle(tmp_path)
    overrides = []
    for key, value in tiny_overrides(tmp_path).items():
        overrides += [f"--{key}", json.dumps(value) if isinstance(value, list) else str(value)]
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "evaluate.json"),
               "--bundle_root", str(bundle), *overrides]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "false-positive rate by group of clean slices" in result.stdout
    _check_results(tmp_path / "eval_output" / "detection_evaluation.json")


def test_sgad_med_evaluate_detector_runs_the_bundle_with_set_overrides(tmp_path):
    from sgad_med.cli import main

    bundle = tiny_detection_bundle(tmp_path)
    overrides = dict(tiny_overrides(tmp_path), use_harmonizer="false", threshold=0.25)
    out = overrides.pop("output_dir")
    arguments = ["evaluate", "detector", "--bundle", str(bundle), "--out", out]
    for key, value in overrides.items():
        arguments += ["--set", f"{key}={json.dumps(value) if isinstance(value, list) else value}"]
    assert main(arguments) == 0
    _check_results(Path(out) / "detection_evaluation.json", harmonized=False)
    results = json.loads((Path(out) / "detection_evaluation.json").read_text())
    assert results["heldout"]["thresholds"]["detector"] == 0.25
    assert results["settings"]["detector_threshold"] == "override"
