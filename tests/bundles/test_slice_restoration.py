"""The slice_restoration bundle: training (one process and 2-process DDP), evaluation and inference run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from sgad_med.io import load_scan
from tests.bundles.conftest import BUNDLES, run_two_cpu_processes, tiny_training_overrides
from tests.conftest import SAMPLE_DATA

RESTORATION = BUNDLES / "slice_restoration"
CONFIGS = RESTORATION / "configs"
TINY_FEATURES = [4, 4, 8, 8, 16, 4]


def tiny_restoration_overrides(tmp_path: Path) -> dict:
    return tiny_training_overrides(RESTORATION, tmp_path, features=TINY_FEATURES, amp=False)


@pytest.fixture
def tiny_restoration(tmp_path: Path) -> dict:
    return tiny_restoration_overrides(tmp_path)


def _workflow(files, workflow_type: str, overrides: dict) -> ConfigWorkflow:
    workflow = ConfigWorkflow(config_file=files, workflow_type=workflow_type, **overrides)
    workflow.initialize()
    assert not workflow.check_properties()
    workflow.run()
    workflow.finalize()
    return workflow


def test_training_runs_and_saves_the_best_network(tiny_restoration, tmp_path):
    tiny_restoration["max_epochs"] = 2
    workflow = _workflow(str(CONFIGS / "train.json"), "train", tiny_restoration)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 4
    assert np.isfinite(trainer.state.output["loss"].item())
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    assert np.isfinite(evaluator.state.best_metric)
    weights = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert "unet.final_conv.conv.weight" in weights or any(k.startswith("unet.") for k in weights)
    assert (tmp_path / "train_output" / "checkpoint_final.pt").exists()


def test_multi_gpu_config_runs_with_two_cpu_processes(tiny_restoration, tmp_path):
    run_two_cpu_processes(CONFIGS, tiny_restoration, port=29547)
    weights = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in weights), "DDP wrapper must not leak into the shipped weights"


def test_evaluation_runs_on_a_tiny_set_and_writes_the_table(tiny_restoration, tmp_path, capsys):
    _workflow(str(CONFIGS / "train.json"), "train", tiny_restoration)
    overrides = {
        "bundle_root": str(RESTORATION),
        "features": TINY_FEATURES,
        "checkpoint": str(tmp_path / "models" / "model.pt"),
        "spacing": 8.0,
        "n_anatomies": 1,
        "slices_per_volume": 2,
        "kinds": ["dropout", "rician"],
        "severities": [0.5],
        "output_dir": str(tmp_path / "eval"),
    }
    _workflow(str(CONFIGS / "evaluate.json"), "inference", overrides)
    printed = capsys.readouterr().out
    assert "dropout @0.5" in printed and "rician @0.5" in printed and "quality bar" in printed
    results = json.loads((tmp_path / "eval" / "restoration_evaluation.json").read_text())
    assert set(results["severities"]["0.5"]["per_kind"]) == {"dropout", "rician"}
    assert results["settings"]["anatomy_seeds"] == [10_000]
    assert "passed" in results["quality_bar"]


@pytest.mark.skipif(not (RESTORATION / "models" / "model.pt").exists(), reason="the bundle's weights are not trained")
def test_inference_restores_the_chosen_slices_of_the_sample_data(tmp_path):
    overrides = {"bundle_root": str(RESTORATION), "output_dir": str(tmp_path / "out"), "slices": [3, -4]}
    workflow = _workflow(str(CONFIGS / "inference.json"), "inference", overrides)
    folder = workflow.parser.get_parsed_content("evaluator")
    assert folder.failed == {}
    source = load_scan(SAMPLE_DATA / "synthetic_mr.nii.gz")
    depth = source.image.shape[-1]
    assert folder.restored["synthetic_mr"] == [3, depth - 4]
    restored = load_scan(tmp_path / "out" / "synthetic_mr_restored.nii.gz")
    a, b = source.image.as_tensor(), restored.image.as_tensor()
    changed = [k for k in range(depth) if not torch.equal(a[..., k], b[..., k])]
    assert changed and set(changed) <= {3, depth - 4}


def test_verify_net_in_out_passes():
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def",
         "--meta_file", str(CONFIGS / "metadata.json"), "--config_file", str(CONFIGS / "inference.json"),
         "--bundle_root", str(RESTORATION), "--n", "4", "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "verified with no error" in result.stdout + result.stderr
