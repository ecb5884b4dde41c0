"""Training (resumable, for a budget) and calibration (temperature, one threshold for every group) of the
slice-sequence detector."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sgad_med.data.slice_runs import SliceRunVolumes
from sgad_med.engines.sequence_detection import (
    calibrate_sequence_detector,
    clean_slice_groups,
    masked_bce,
    train_sequence_detector,
)
from sgad_med.networks import SliceSequenceNet

TINY = {"channels": (4, 8), "temporal_channels": 8, "dilations": (1, 2)}


def test_masked_bce_ignores_slices_without_weight():
    logits, label = torch.tensor([5.0, -5.0, 5.0]), torch.tensor([1.0, 0.0, 0.0])
    weight = torch.tensor([1.0, 1.0, 0.0])
    assert float(masked_bce(logits, label, weight)) < 0.01
    assert float(masked_bce(logits, label, torch.ones(3))) > 1.0
    assert float(masked_bce(logits, label, torch.zeros(3))) == 0.0


def test_clean_slice_groups():
    label = np.array([0, 0, 0, 1, 0, 0, 0, 0], float)
    foreground = np.array([0.05, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.0])
    groups = clean_slice_groups(label, foreground)
    assert np.flatnonzero(groups["adjacent"]).tolist() == [1, 2, 4, 5]
    assert np.flatnonzero(groups["isolated"]).tolist() == [6]
    assert np.flatnonzero(groups["end"]).tolist() == [0]


def test_training_writes_the_best_weights_and_resumes_where_it_stopped(tmp_path):
    torch.manual_seed(0)
    train = SliceRunVolumes(range(0, 3), spacing=8.0)
    val = SliceRunVolumes(range(900, 901), spacing=8.0, redraw=False, whole_fraction=1.0, seed=1, density=0.3)
    net = SliceSequenceNet(**TINY)
    history = train_sequence_detector(net, train, val, tmp_path / "run", tmp_path / "model.pt", max_steps=2,
                                      num_workers=0)
    assert history["steps"] == 2 and len(history["validation"]) == 1
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "run" / "checkpoint.pt").is_file()
    # a re-run picks up the checkpoint and continues the step count
    history = train_sequence_detector(SliceSequenceNet(**TINY), train, val, tmp_path / "run", tmp_path / "model.pt",
                                      max_steps=4, num_workers=0)
    assert history["steps"] == 4
    assert json.loads((tmp_path / "run" / "history.json").read_text())["steps"] == 4
    # the wall-clock budget ends training too
    history = train_sequence_detector(SliceSequenceNet(**TINY), train, val, tmp_path / "other", tmp_path / "m.pt",
                                      max_minutes=0.0, num_workers=0)
    assert history["steps"] == 1


def _item(depth: int, damaged: list[int], seed: int, harmonized: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    image = np.full((depth, 24, 24), 0.4, np.float32) + rng.normal(0, 0.01, (depth, 24, 24)).astype(np.float32)
    label = np.zeros(depth, np.float32)
    for k in damaged:
        image[k] = rng.uniform(0, 1, (24, 24))
        label[k] = 1.0
    foreground = np.full(depth, 0.5)
    foreground[[0, -1]] = 0.05
    return {"image": torch.from_numpy(image), "label": torch.from_numpy(label), "foreground": foreground,
            "harmonized": harmonized}


def test_calibration_takes_the_strictest_groups_threshold():
    torch.manual_seed(0)
    net = SliceSequenceNet(**TINY)
    items = [_item(16, [5, 6, 7], seed=i) for i in range(6)] + [_item(16, [], seed=10, harmonized=True)]
    summary = calibrate_sequence_detector(net, items, target_fpr=0.05)
    assert summary["threshold"] == max(summary["group_thresholds"].values())
    assert set(summary["group_thresholds"]) == {"isolated", "adjacent", "end", "harmonized"}
    assert all(rate <= 0.05 for rate in summary["fpr_at_threshold"].values())
    assert float(net.threshold) == pytest.approx(summary["threshold"]) and bool(net.calibrated)
    assert summary["temperature"] > 0
    with pytest.raises(ValueError, match="damaged and clean"):
        calibrate_sequence_detector(net, [_item(8, [], seed=0)])
