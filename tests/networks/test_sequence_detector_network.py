"""SliceSequenceNet: one logit per slice of a scan, any in-plane size, calibration in buffers saved with the weights."""

from __future__ import annotations

import pytest
import torch

from sgad_med.networks import SliceSequenceNet

TINY = {"channels": (4, 8), "temporal_channels": 8, "dilations": (1, 2)}


@pytest.mark.parametrize(("batch", "depth", "height", "width"), [(1, 7, 24, 20), (2, 12, 33, 41), (1, 1, 16, 16)])
def test_one_logit_per_slice_for_any_scan_size(batch, depth, height, width):
    net = SliceSequenceNet(**TINY).eval()
    logits = net(torch.rand(batch, depth, height, width))
    assert logits.shape == (batch, depth)
    assert net.probability(torch.rand(batch, depth, height, width)).shape == (batch, depth)


def test_encoding_slices_apart_gives_the_same_logits_as_the_whole_scan():
    torch.manual_seed(0)
    net = SliceSequenceNet(**TINY).eval()
    scan = torch.rand(1, 9, 24, 24)
    with torch.no_grad():
        features = torch.cat([net.encode(scan[0, :4]), net.encode(scan[0, 4:])])
        assert torch.allclose(net.sequence_logits(features[None]), net(scan), atol=1e-5)


def test_the_scan_reference_is_a_median_so_a_few_damaged_slices_do_not_move_it():
    torch.manual_seed(0)
    net = SliceSequenceNet(**TINY).eval()
    features = torch.rand(1, 20, net.n_features)
    features[0, 3] = 1.5  # a slice above the median in every feature
    damaged = features.clone()
    damaged[0, 3] += 100.0  # far above: a mean would move, the median does not
    with torch.no_grad():
        far = torch.arange(20) > 3 + 2 * sum(2 * d for d in TINY["dilations"])
        assert torch.allclose(net.sequence_logits(features)[0, far], net.sequence_logits(damaged)[0, far], atol=1e-5)


def test_calibration_lives_in_the_state_dict():
    net = SliceSequenceNet(**TINY)
    logits = torch.tensor([[-2.0, 0.0, 3.0]])
    assert torch.allclose(net.calibrated_probability(logits), torch.sigmoid(logits))
    net.set_calibration(2.0, 0.3)
    assert torch.allclose(net.calibrated_probability(logits), torch.sigmoid(logits / 2.0))
    other = SliceSequenceNet(**TINY)
    other.load_state_dict(net.state_dict())
    assert float(other.temperature) == 2.0 and abs(float(other.threshold) - 0.3) < 1e-7 and bool(other.calibrated)
    with pytest.raises(ValueError, match="temperature"):
        net.set_calibration(0.0, 0.5)
    with pytest.raises(ValueError, match="threshold"):
        net.set_calibration(1.0, 1.5)


def test_neighbour_differences_need_the_neighbours_and_the_whole_scan_supplies_them():
    torch.manual_seed(0)
    net = SliceSequenceNet(**TINY, neighbour_difference=True).eval()
    scan = torch.rand(1, 6, 20, 20)
    with pytest.raises(ValueError, match="neighbours"):
        net.encode(scan[0])
    with torch.no_grad():
        previous = torch.cat([scan[0, :1], scan[0, :-1]])
        following = torch.cat([scan[0, 1:], scan[0, -1:]])
        features = net.encode(scan[0], previous, following)
        assert torch.allclose(net.sequence_logits(features[None]), net(scan), atol=1e-5)


def test_weights_of_a_network_without_neighbour_differences_start_one_with_them_where_it_was():
    from sgad_med.engines.sequence_detection import load_matching_weights

    torch.manual_seed(0)
    plain = SliceSequenceNet(**TINY).eval()
    wider = SliceSequenceNet(**TINY, neighbour_difference=True).eval()
    load_matching_weights(wider, plain.state_dict())
    scan = torch.rand(1, 8, 24, 24)
    with torch.no_grad():
        assert torch.allclose(plain(scan), wider(scan), atol=1e-5)
