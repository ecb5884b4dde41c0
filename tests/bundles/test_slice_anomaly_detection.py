"""The slice_anomaly_detection bundle: train.json trains and calibrates, DDP runs, inference.json scores a folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from monai.bundle import ConfigWorkflow

from sgad_med.detector import SliceAnomalyDetector
from tests.bundles.conftest import BUNDLES, run_two_cpu_processes, tiny_training_overrides
from tests.conftest import SAMPLE_DATA

DETECTION = BUNDLES / "slice_anomaly_detection"
CONFIGS = DETECTION / "configs"
TINY_NETWORK = {"channels": [4, 8], "temporal_channels": 8, "dilations": [1, 2]}
# the leave-one-type-out experiment still trains the earlier 2.5D network (SliceAnomalyNet)
LEAVE_ONE_OUT_NETWORK = {"init_features": 4, "growth_rate": 4, "block_config": [1, 1]}


def _tiny(tmp_path: Path) -> dict:
    return tiny_training_overrides(DETECTION, tmp_path, **TINY_NETWORK, val_anatomies="$range(900, 902)",
                                   calibration_anatomies="$range(920, 923)", calibration_styles=1,
                                   harmonized_fraction=0.0, num_workers=0)


def test_training_saves_calibrated_weights_the_api_loads(tmp_path):
    workflow = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), workflow_type="train", **_tiny(tmp_path))
    workflow.initialize()
    assert not workflow.check_properties()
    workflow.run()
    workflow.finalize()
    weights = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert bool(weights["calibrated"]) and 0.0 < float(weights["threshold"]) <= 1.0
    assert float(weights["temperature"]) > 0.0
    summary = json.loads((tmp_path / "models" / "calibration.json").read_text())
    assert summary["target_fpr"] == 0.01 and summary["n_scans"] == 3 and summary["n_damaged"] > 0
    assert abs(summary["threshold"] - float(weights["threshold"])) < 1e-6
    # the stored threshold is the strictest of the groups' thresholds
    assert summary["threshold"] == max(summary["group_thresholds"].values())
    history = json.loads((tmp_path / "train_output" / "history.json").read_text())
    assert history["steps"] == 2 and history["validation"]  # one epoch of the two training anatomies

    # the API reads the bundle's inference.json network_def with these weights
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    config = json.loads((CONFIGS / "inference.json").read_text())
    config.update(TINY_NETWORK)
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    (bundle / "models").mkdir()
    (bundle / "models" / "model.pt").write_bytes((tmp_path / "models" / "model.pt").read_bytes())
    detector = SliceAnomalyDetector.from_bundle(bundle, device="cpu")
    assert abs(detector.threshold - float(weights["threshold"])) < 1e-6


def test_multi_gpu_config_trains_and_calibrates_with_two_cpu_processes(tmp_path):
    run_two_cpu_processes(CONFIGS, _tiny(tmp_path), port=29541)
    weights = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in weights), "DDP wrapper must not leak into the shipped weights"
    assert bool(weights["calibrated"])


def test_inference_config_scores_every_scan_of_a_folder(tmp_path):
    net_weights = tmp_path / "model.pt"
    from sgad_med.networks import SliceSequenceNet

    torch.save(SliceSequenceNet(**TINY_NETWORK, neighbour_difference=True).state_dict(), net_weights)
    workflow = ConfigWorkflow(config_file=str(CONFIGS / "inference.json"), workflow_type="inference",
                              bundle_root=str(DETECTION), checkpoint=str(net_weights),
                              dataset_dir=str(SAMPLE_DATA), output_dir=str(tmp_path / "out"), **TINY_NETWORK)
    workflow.initialize()
    workflow.run()
    written = sorted(p.name for p in (tmp_path / "out").glob("*_slice_scores.csv"))
    assert len(written) == 7, written  # the seven sample scans
    assert all(p.read_text().startswith("slice,score,flagged\n") for p in (tmp_path / "out").iterdir())


def test_the_shipped_weights_are_a_calibrated_sequence_detector_of_a_few_megabytes():
    detector = SliceAnomalyDetector.from_bundle(DETECTION, device="cpu")
    assert detector.is_sequence and bool(detector.network.calibrated)
    assert 0.0 < detector.threshold < 1.0
    assert (DETECTION / "models" / "model.pt").stat().st_size < 5 * 2**20


def test_leave_one_out_config_runs_each_fold(tmp_path):
    overrides = {
        "bundle_root": str(DETECTION), "output_dir": str(tmp_path), "spacing": 8.0, **LEAVE_ONE_OUT_NETWORK,
        "train_anatomies": "$range(0, 2)", "calibration_anatomies": "$range(920, 922)",
        "test_anatomies": "$range(10000, 10002)", "kinds": ["spike", "blob"], "max_epochs": 1,
    }
    workflow = ConfigWorkflow(config_file=str(CONFIGS / "leave_one_out.json"), workflow_type="inference", **overrides)
    workflow.initialize()
    workflow.run()
    results = json.loads((tmp_path / "leave_one_out.json").read_text())
    assert list(results["folds"]) == ["spike", "blob"]
    assert results["settings"]["test_split"] == "heldout"
