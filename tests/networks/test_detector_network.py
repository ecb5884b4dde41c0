from __future__ import annotations

import io
import math

import pytest
import torch

from sgad_med.networks import SliceAnomalyNet


def _tiny() -> SliceAnomalyNet:
    torch.manual_seed(0)
    return SliceAnomalyNet(context=1, init_features=4, growth_rate=4, block_config=(1, 1)).eval()


def test_logits_features_and_probability_shapes_for_any_slice_size():
    net = _tiny()
    for shape in ((2, 3, 32, 48), (1, 3, 57, 41)):
        stack = torch.rand(*shape)
        assert net(stack).shape == (shape[0], 1)
        assert net.embed(stack).ndim == 2
        probability = net.probability(stack)
        assert probability.shape == (shape[0],) and ((probability >= 0) & (probability <= 1)).all()


def test_uncalibrated_probability_is_the_sigmoid_of_the_logit():
    net = _tiny()
    stack = torch.rand(3, 3, 32, 32)
    assert torch.allclose(net.probability(stack), torch.sigmoid(net(stack)[:, 0]))


def test_calibrated_probability_takes_the_stronger_of_classifier_and_novelty():
    net = _tiny()
    n = net.novelty_mean.numel()
    net.set_calibration(torch.zeros(n), torch.eye(n), temperature=2.0, novelty_scale=1.0, novelty_offset=-3.0,
                        threshold=0.7)
    logit = torch.tensor([4.0, -4.0, -4.0])
    novelty = torch.tensor([0.0, 10.0, 0.0])
    expected = torch.sigmoid(torch.tensor([2.0, 7.0, -2.0]))
    assert torch.allclose(net.combine(logit, novelty), expected)
    assert abs(float(net.threshold) - 0.7) < 1e-6 and bool(net.calibrated)


def test_novelty_is_zero_at_the_clean_mean_and_grows_away_from_it():
    net = _tiny()
    n = net.novelty_mean.numel()
    mean = torch.rand(n)
    net.set_calibration(mean, torch.eye(n) * 4.0, 1.0, 1.0, 0.0, 0.5)
    distances = net.novelty(torch.stack([mean, mean + 1.0 / n**0.5, mean + 2.0 / n**0.5]))
    assert torch.allclose(distances, torch.tensor([0.0, 2.0, 4.0]), atol=1e-5)


def test_calibration_travels_with_the_state_dict():
    net = _tiny()
    n = net.novelty_mean.numel()
    net.set_calibration(torch.ones(n), torch.eye(n) * 2.0, 1.5, 0.3, -1.0, 0.42)
    other = _tiny()
    other.load_state_dict(net.state_dict())
    assert bool(other.calibrated) and abs(float(other.threshold) - 0.42) < 1e-6
    stack = torch.rand(2, 3, 32, 32)
    assert torch.allclose(other.probability(stack), net.probability(stack))


def test_high_pass_input_adds_the_laplacian_energy_of_every_slice():
    torch.manual_seed(0)
    net = SliceAnomalyNet(context=1, init_features=4, growth_rate=4, block_config=(1, 1), high_pass=True).eval()
    assert net.densenet.features[0].in_channels == 6
    flat = torch.full((1, 3, 32, 32), 0.5)
    inputs = net._inputs(flat)
    assert inputs.shape == (1, 6, 32, 32)
    assert torch.equal(inputs[:, :3], flat)
    assert inputs[:, 3:, 1:-1, 1:-1].abs().max() == 0  # a flat slice has no high-frequency energy inside
    assert net(torch.rand(2, 3, 40, 44)).shape == (2, 1)
    assert "laplacian" not in net.state_dict(), "the fixed kernel is not a weight"


def _calibrated(reference=None) -> SliceAnomalyNet:
    net = _tiny()
    n = net.novelty_mean.numel()
    net.set_calibration(torch.zeros(n), torch.eye(n), temperature=1.0, novelty_scale=1.0, novelty_offset=-5.0,
                        threshold=0.5, scan_reference=reference)
    return net


def test_scan_shift_is_how_far_the_scans_median_evidence_lies_above_the_reference():
    net = _calibrated(reference=(-4.0, 2.0))
    logit = torch.tensor([-1.0, -2.0, -3.0, 5.0, -2.0])  # median -2: 2 above the classifier reference
    novelty = torch.tensor([1.0, 0.0, 1.5, 9.0, 0.5])  # evidence median 1 - 5: below the novelty reference
    shift = net.scan_shift(logit, novelty)
    assert torch.allclose(shift, torch.tensor([2.0, 0.0]))
    # the scan's outlier slice keeps its lead over the scan; the typical slices drop
    probability = net.combine(logit, novelty, shift)
    assert torch.allclose(probability, torch.sigmoid(torch.maximum(logit - 2.0, novelty - 5.0)))
    assert probability[3] > 0.95 and (probability[[0, 1, 2, 4]] < 0.1).all()


def test_no_scan_shift_without_a_reference_too_few_slices_or_calibration():
    logit, novelty = torch.full((8,), 3.0), torch.full((8,), 3.0)
    assert torch.equal(_calibrated().scan_shift(logit, novelty), torch.zeros(2))  # reference +inf
    assert torch.equal(_calibrated((0.0, 0.0)).scan_shift(logit[:3], novelty[:3]), torch.zeros(2))
    assert torch.equal(_tiny().scan_shift(logit, novelty), torch.zeros(2))


def test_weights_saved_before_the_scan_reference_load_without_a_shift():
    net = _calibrated(reference=(1.0, 1.0))
    state = net.state_dict()
    del state["scan_reference"]
    other = _tiny()
    other.load_state_dict(state)  # strict: the missing reference is filled in, not an error
    assert torch.isinf(other.scan_reference).all() and bool(other.calibrated)
    assert torch.allclose(_calibrated(reference=(2.0, 3.0)).state_dict()["scan_reference"], torch.tensor([2.0, 3.0]))


def _with_neighbour_map(neighbour_map=(2.0, -6.0), reference=None, gate=0.0) -> SliceAnomalyNet:
    net = _tiny()
    n = net.novelty_mean.numel()
    net.set_calibration(torch.zeros(n), torch.eye(n), temperature=1.0, novelty_scale=1.0, novelty_offset=-5.0,
                        threshold=0.5, scan_reference=reference, neighbour_map=neighbour_map, neighbour_gate=gate)
    return net


def test_neighbour_scores_are_ignored_without_a_calibrated_neighbour_map():
    logit, novelty = torch.tensor([-4.0, 1.0, 3.0]), torch.tensor([0.0, 2.0, 9.0])
    huge = torch.full((3,), 1e4)
    uncalibrated = _tiny()
    uncalibrated.neighbour_scale.fill_(5.0)  # a map without calibration is not used either
    assert not uncalibrated.uses_neighbour_evidence
    assert torch.equal(uncalibrated.combine(logit, novelty, neighbour=huge), torch.sigmoid(logit))
    scale_zero = _calibrated()
    assert bool(scale_zero.calibrated) and float(scale_zero.neighbour_scale) == 0.0
    assert not scale_zero.uses_neighbour_evidence
    assert torch.equal(scale_zero.combine(logit, novelty, neighbour=huge), scale_zero.combine(logit, novelty))
    assert torch.allclose(scale_zero.combine(logit, novelty, neighbour=huge),
                          torch.sigmoid(torch.maximum(logit, novelty - 5.0)))


def test_a_large_neighbour_score_sets_the_probability_and_the_scan_shift_does_not_lower_it():
    a, b = 2.0, -6.0
    net = _with_neighbour_map((a, b))
    assert net.uses_neighbour_evidence
    assert float(net.neighbour_scale) == a and float(net.neighbour_offset) == b
    logit = torch.tensor([-4.0, -4.0, 3.0])
    novelty = torch.zeros(3)  # novelty evidence -5 everywhere
    neighbour = torch.tensor([0.0, 1000.0, 0.0])  # evidence -6, 2 log(1001) - 6 = 7.8, -6
    strong = a * math.log1p(1000.0) + b
    assert torch.allclose(net.neighbour_evidence(neighbour), torch.tensor([b, strong, b]))
    probability = net.combine(logit, novelty, neighbour=neighbour)
    assert torch.allclose(probability, torch.sigmoid(torch.tensor([-4.0, strong, 3.0])))
    assert probability[1] > 0.999 and probability[0] < 0.05

    # the scan shift lowers the classifier and novelty evidence, never the neighbour evidence
    shifted = net.combine(logit, novelty, torch.tensor([2.0, 0.0]), neighbour)
    assert torch.allclose(shifted, torch.sigmoid(torch.tensor([-5.0, strong, 1.0])))
    huge_shift = net.combine(logit, novelty, torch.tensor([100.0, 100.0]), neighbour)
    assert torch.allclose(huge_shift, torch.sigmoid(torch.tensor([b, strong, b])))


def test_weights_saved_before_the_neighbour_evidence_load_without_it():
    state = _with_neighbour_map().state_dict()
    del state["neighbour_scale"], state["neighbour_offset"]
    other = _with_neighbour_map((3.0, -1.0))  # whatever it held, the old weights are scored as they were then
    other.load_state_dict(state)  # strict: the missing buffers are filled in, not an error
    assert bool(other.calibrated) and not other.uses_neighbour_evidence
    assert float(other.neighbour_scale) == 0.0 and float(other.neighbour_offset) == -30.0
    logit, novelty = torch.tensor([-4.0, 0.5]), torch.tensor([0.0, 1.0])
    assert torch.equal(other.combine(logit, novelty, neighbour=torch.full((2,), 1e4)), other.combine(logit, novelty))


def test_the_neighbour_map_survives_saving_and_loading_the_state_dict():
    net = _with_neighbour_map((1.25, -4.5))
    assert {"neighbour_scale", "neighbour_offset"} <= set(net.state_dict())
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    other = _tiny()
    assert not other.uses_neighbour_evidence
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert other.uses_neighbour_evidence
    assert float(other.neighbour_scale) == 1.25 and float(other.neighbour_offset) == -4.5
    logit, novelty, neighbour = torch.tensor([-4.0, 0.5]), torch.tensor([0.0, 1.0]), torch.tensor([0.0, 500.0])
    expected = net.combine(logit, novelty, neighbour=neighbour)
    assert expected[1] > 0.5  # the neighbour evidence decides slice 1
    assert torch.equal(other.combine(logit, novelty, neighbour=neighbour), expected)


def test_below_the_gate_the_neighbour_evidence_does_not_count():
    gate = math.log1p(4.0)
    net = _with_neighbour_map((2.0, -3.0), gate=gate)
    assert float(net.neighbour_gate) == pytest.approx(gate)
    logit, novelty = torch.full((4,), -6.0), torch.zeros(4)  # network evidence -5 (novelty) on every slice
    neighbour = torch.tensor([0.0, 3.9, 4.0, 1000.0])
    evidence = net.neighbour_evidence(neighbour)
    assert torch.isinf(evidence[:2]).all() and (evidence[:2] < 0).all()
    assert torch.allclose(evidence[2:], 2.0 * torch.log1p(neighbour[2:]) - 3.0)
    probability = net.combine(logit, novelty, neighbour=neighbour)
    # without the gate z = 3.9 would give 2 log(4.9) - 3 = 0.18 > -5: the network's evidence decides instead
    assert torch.allclose(probability[:2], torch.sigmoid(torch.tensor([-5.0, -5.0])))
    assert torch.allclose(probability[2:], torch.sigmoid(evidence[2:]))
    ungated = _with_neighbour_map((2.0, -3.0))
    assert ungated.combine(logit, novelty, neighbour=neighbour)[1] > 0.5


def test_weights_saved_before_the_gate_load_with_every_z_counting():
    state = _with_neighbour_map((2.0, -3.0), gate=1.5).state_dict()
    assert "neighbour_gate" in state
    del state["neighbour_gate"]
    other = _with_neighbour_map((1.0, -1.0), gate=9.0)
    other.load_state_dict(state)  # strict: the missing gate is filled in with 0
    assert float(other.neighbour_gate) == 0.0 and float(other.neighbour_scale) == 2.0
    assert torch.isfinite(other.neighbour_evidence(torch.tensor([0.0, 0.5]))).all()
