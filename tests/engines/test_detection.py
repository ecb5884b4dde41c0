from __future__ import annotations

import numpy as np
import pytest
import torch

from sgad_med.detector import SliceAnomalyDetector
from sgad_med.engines.detection import (
    calibrate_detector,
    calibrate_scan_reference,
    fit_logistic,
    neighbour_scores_for_calibration,
    stored_threshold,
)
from sgad_med.networks import SliceAnomalyNet


def test_fit_logistic_recovers_a_known_map():
    rng = np.random.default_rng(0)
    x = rng.normal(size=20000)
    y = (rng.random(20000) < 1.0 / (1.0 + np.exp(-(2.0 * x - 1.0)))).astype(np.float64)
    a, b = fit_logistic(x, y)
    assert abs(a - 2.0) < 0.15 and abs(b + 1.0) < 0.1


@pytest.mark.parametrize("slope", [2.0, -2.0])
def test_balanced_fit_logistic_weights_the_rare_positives_up(slope):
    rng = np.random.default_rng(0)
    x = rng.normal(size=20000)
    y = (rng.random(20000) < 1.0 / (1.0 + np.exp(-(slope * x - 4.0)))).astype(np.float64)
    assert 0.02 < y.mean() < 0.15  # imbalanced: few positives
    a, b = fit_logistic(x, y)
    a_balanced, b_balanced = fit_logistic(x, y, balanced=True)
    assert np.sign(a) == np.sign(a_balanced) == np.sign(slope)
    assert abs(a - slope) < 0.2
    # positives weighted n_neg / n_pos shift the offset up by about log(n_neg / n_pos)
    assert b_balanced > b + 1.0
    assert b_balanced - b == pytest.approx(np.log((1.0 - y.mean()) / y.mean()), abs=0.5)


def _batches(n_batches: int = 8, seed: int = 0):
    """Clean stacks are smooth; damaged ones carry a bright noisy centre slice, so the evidence separates."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(n_batches):
        image = torch.rand(16, 3, 32, 32, generator=generator) * 0.1 + 0.4
        label = (torch.arange(16) % 2).float()[:, None]
        damaged = label[:, 0] == 1
        image[damaged, 1] += torch.rand(int(damaged.sum()), 32, 32, generator=generator)
        yield {"image": image, "label": label}


def test_calibration_sets_the_threshold_for_the_target_false_positive_rate():
    torch.manual_seed(0)
    net = SliceAnomalyNet(init_features=4, growth_rate=4, block_config=(1, 1))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for batch in _batches(20, seed=1):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(batch["image"]), batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    summary = calibrate_detector(net, list(_batches(10, seed=2)), target_fpr=0.05)
    assert bool(net.calibrated) and abs(float(net.threshold) - summary["threshold"]) < 1e-6
    assert summary["validation"]["fpr_at_threshold"] <= 0.05
    assert summary["validation"]["auroc_calibrated"] > 0.9
    assert summary["temperature"] > 0 and summary["novelty_scale"] >= 0
    with torch.no_grad():  # on fresh clean slices the stored threshold keeps roughly the target rate
        fresh = [b for b in _batches(10, seed=3)]
        probability = torch.cat([net.probability(b["image"]) for b in fresh])
        clean = torch.cat([b["label"][:, 0] for b in fresh]) == 0
    assert (probability[clean] >= net.threshold).float().mean() <= 0.15


def test_calibration_refuses_a_set_without_both_classes():
    net = SliceAnomalyNet(init_features=4, growth_rate=4, block_config=(1, 1))
    only_clean = [{"image": torch.rand(4, 3, 32, 32), "label": torch.zeros(4, 1)}]
    with pytest.raises(ValueError, match="clean and corrupted"):
        calibrate_detector(net, only_clean)
    with pytest.raises(ValueError, match="target_fpr"):
        calibrate_detector(net, only_clean, target_fpr=0.0)


def _scan(seed: int, depth: int = 12, offset: float = 0.0) -> dict:
    """A clean synthetic volume: smooth tissue in the middle, air around it; ``offset`` brightens every slice."""
    rng = np.random.default_rng(seed)
    volume = np.zeros((32, 32, depth), dtype=np.float32)
    volume[6:26, 6:26] = 0.4 + offset + 0.1 * rng.random((20, 20, depth), dtype=np.float32)
    return {"volume": volume, "head": np.ones(depth, dtype=bool)}


def test_scan_reference_calibration_sets_the_threshold_on_whole_clean_scans():
    torch.manual_seed(0)
    net = SliceAnomalyNet(init_features=4, growth_rate=4, block_config=(1, 1))
    calibrate_detector(net, list(_batches(4, seed=2)), target_fpr=0.05)
    summary = calibrate_scan_reference(net, [_scan(s) for s in range(4)], target_fpr=0.05)
    assert summary["n_scans"] == 4 and summary["n_head_slices"] == 48
    assert torch.isfinite(net.scan_reference).all()
    assert abs(float(net.threshold) - summary["threshold"]) < 1e-6
    assert summary["fpr_at_threshold"] <= 0.05
    # the stored threshold, used as the detector uses it, keeps the rate on the same scans
    detector = SliceAnomalyDetector(net, device="cpu")
    scores = np.concatenate([detector.score01(_scan(s)["volume"]) for s in range(4)])
    assert (scores >= detector.threshold).mean() <= 0.05


def test_scan_reference_calibration_needs_a_calibrated_network_and_two_scans():
    net = SliceAnomalyNet(init_features=4, growth_rate=4, block_config=(1, 1))
    with pytest.raises(ValueError, match="calibrate_detector first"):
        calibrate_scan_reference(net, [_scan(0), _scan(1)])
    calibrate_detector(net, list(_batches(2, seed=2)))
    with pytest.raises(ValueError, match="two clean"):
        calibrate_scan_reference(net, [_scan(0)])


def test_stored_threshold_keeps_the_rate_after_float32_rounding():
    # 1 % of 100 may be flagged: the 0.5. Just above 0.25 in float64 is 0.25 itself in float32, which would flag
    # the clean 0.25 too unless the stored threshold steps up.
    clean = np.concatenate([[0.5, 0.25], np.linspace(0.0, 0.2, 98)])
    threshold = stored_threshold(clean, 0.01)
    stored = float(torch.tensor(threshold, dtype=torch.float32))
    assert stored == threshold  # what the buffer holds is what was computed
    assert (clean >= stored).mean() <= 0.01
    assert 0.0 < stored <= 1.0


def _calibrated_net() -> SliceAnomalyNet:
    torch.manual_seed(0)
    net = SliceAnomalyNet(init_features=4, growth_rate=4, block_config=(1, 1))
    calibrate_detector(net, list(_batches(4, seed=2)), target_fpr=0.05)
    return net


def test_scan_reference_calibration_fits_the_neighbour_evidence_unless_told_not_to():
    net = _calibrated_net()
    assert not net.uses_neighbour_evidence  # calibrate_detector leaves it off
    summary = calibrate_scan_reference(net, [_scan(s) for s in range(4)], target_fpr=0.05, neighbour_evidence=True)
    assert float(net.neighbour_scale) > 0 and net.uses_neighbour_evidence
    assert summary["neighbour_map"]["scale"] == pytest.approx(float(net.neighbour_scale))
    assert summary["neighbour_map"]["offset"] == pytest.approx(float(net.neighbour_offset))
    assert summary["fpr_at_threshold"] <= 0.05
    assert 0.0 <= summary["fpr_at_threshold_without_neighbour"] <= 1.0

    off = _calibrated_net()
    summary_off = calibrate_scan_reference(off, [_scan(s) for s in range(4)], target_fpr=0.05,
                                           neighbour_evidence=False)
    assert not off.uses_neighbour_evidence and float(off.neighbour_scale) == 0.0
    assert summary_off["neighbour_map"]["scale"] == 0.0
    assert summary_off["fpr_at_threshold"] <= 0.05


def test_a_smaller_neighbour_share_makes_the_neighbour_evidence_less_eager():
    """The share of the false-positive budget moves only the offset: a smaller share asks a larger z."""
    maps = {}
    for share in (0.1, 0.5):
        net = _calibrated_net()
        maps[share] = calibrate_scan_reference(net, [_scan(s) for s in range(4)], target_fpr=0.05,
                                               neighbour_evidence=True, neighbour_share=share)["neighbour_map"]
    assert maps[0.1]["scale"] == pytest.approx(maps[0.5]["scale"]) and maps[0.1]["scale"] > 0
    assert maps[0.1]["offset"] < maps[0.5]["offset"]


def test_the_neighbour_gate_is_the_clean_head_slices_quantile_of_their_statistics():
    from sgad_med.transforms.slice_statistics import texture_slice_scores

    scans = [_scan(s) for s in range(4)]
    clean = np.log1p(np.concatenate([texture_slice_scores(s["volume"])[s["head"]] for s in scans]))
    gates = {}
    for quantile in (0.0, 0.5, 0.99):
        net = _calibrated_net()
        summary = calibrate_scan_reference(net, scans, target_fpr=0.05, neighbour_evidence=True,
                                           neighbour_gate_quantile=quantile)
        gates[quantile] = float(net.neighbour_gate)
        assert summary["neighbour_map"]["gate"] == pytest.approx(gates[quantile])
        assert summary["fpr_at_threshold"] <= 0.05
    assert gates[0.0] == 0.0  # no gate: every z counts
    assert gates[0.5] == pytest.approx(float(np.quantile(clean, 0.5)), rel=1e-5)
    assert gates[0.99] == pytest.approx(float(np.quantile(clean, 0.99)), rel=1e-5)
    assert 0.0 < gates[0.5] < gates[0.99]
    off = _calibrated_net()
    calibrate_scan_reference(off, scans, target_fpr=0.05, neighbour_evidence=False)
    assert float(off.neighbour_gate) == 0.0


def test_neighbour_scores_for_calibration_score_damaged_slices_above_clean_ones():
    volumes = [(_scan(s)["volume"], _scan(s)["head"]) for s in range(4)]
    scores, labels = neighbour_scores_for_calibration(volumes, corrupted_per_volume=4, seed=0)
    assert scores.shape == labels.shape and set(np.unique(labels)) == {0.0, 1.0}
    assert (labels == 0).sum() == 4 * 12  # every clean head slice
    assert 0 < (labels == 1).sum() <= 4 * 4  # up to four damaged slices per volume
    assert (scores >= 0).all()
    assert scores[labels == 1].mean() > scores[labels == 0].mean()
    assert np.median(scores[labels == 1]) > np.median(scores[labels == 0])
    again, _ = neighbour_scores_for_calibration(volumes, corrupted_per_volume=4, seed=0)
    np.testing.assert_array_equal(scores, again)  # deterministic
