from __future__ import annotations

import numpy as np
import pytest
import torch

import sgad_med
from sgad_med.detector import ScoreFolder, SliceAnomalyDetector
from sgad_med.networks import SliceAnomalyNet
from tests.conftest import SAMPLE_DATA


def _detector(**kwargs) -> SliceAnomalyDetector:
    torch.manual_seed(0)
    net = SliceAnomalyNet(context=1, init_features=4, growth_rate=4, block_config=(1, 1))
    n = net.novelty_mean.numel()
    net.set_calibration(torch.zeros(n), torch.eye(n), 1.0, 0.0, -30.0, 0.5)
    return SliceAnomalyDetector(net, device="cpu", batch_size=7, **kwargs)


def test_scores_one_probability_per_slice_along_the_last_axis():
    scan = sgad_med.load_scan(SAMPLE_DATA / "synthetic_mr.nii.gz")
    detector = _detector()
    scores = detector.score(scan)
    assert scores.shape == (scan.image.shape[-1],) and scores.dtype == np.float32
    assert ((scores >= 0) & (scores <= 1)).all()
    np.testing.assert_array_equal(detector.flag(scan), scores >= 0.5)


def test_batching_does_not_change_the_scores():
    volume = torch.rand(40, 44, 11)
    a = _detector().score01(volume)
    other = _detector()
    other.batch_size = 3
    np.testing.assert_allclose(other.score01(volume), a, atol=1e-5)


def test_threshold_override_and_validation():
    assert _detector().threshold == pytest.approx(0.5)
    assert _detector(threshold=0.9).threshold == 0.9
    scan = sgad_med.load_scan(SAMPLE_DATA / "synthetic_mr.nii.gz")
    np.testing.assert_array_equal(_detector(threshold=1.0).flag(scan), _detector().score(scan) >= 1.0)
    assert _detector(threshold=0.0).flag(scan).all()
    with pytest.raises(ValueError, match="threshold"):
        _detector(threshold=1.5)


def test_a_scan_that_looks_unusual_throughout_is_judged_against_its_own_median():
    net = _detector().network
    n = net.novelty_mean.numel()
    net.set_calibration(torch.zeros(n), torch.eye(n), 1.0, 0.0, -30.0, 0.5, scan_reference=(-1.0, -100.0))
    volume = torch.rand(40, 44, 11) * 0.5 + 0.25
    relative = SliceAnomalyDetector(net, device="cpu").score01(volume)
    absolute = SliceAnomalyDetector(net, device="cpu", scan_relative=False).score01(volume)
    logit, _ = SliceAnomalyDetector(net, device="cpu").evidence01(volume)
    np.testing.assert_allclose(absolute, torch.sigmoid(logit).numpy(), atol=1e-6)
    # every slice has anatomy, so each slice's evidence drops by the scan's median excess over the reference
    assert abs(float(logit.median())) < 1.0  # the tiny network's logits lie near 0, above the reference -1
    np.testing.assert_allclose(relative, torch.sigmoid(logit - (logit.median() + 1.0)).numpy(), atol=1e-6)


def test_score_folder_writes_a_csv_per_scan_and_survives_a_bad_one(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "scan.nii.gz").write_bytes((SAMPLE_DATA / "synthetic_mr.nii.gz").read_bytes())
    (data / "broken.nii.gz").write_bytes(b"not a nifti")
    runner = ScoreFolder(sgad_med.discover_scans(data), _detector(), tmp_path / "out")
    failed = runner.run()
    assert list(failed) == ["broken"]
    lines = (tmp_path / "out" / "scan_slice_scores.csv").read_text().splitlines()
    assert lines[0] == "slice,score,flagged" and len(lines) == 1 + 40
    assert [int(line.split(",")[0]) for line in lines[1:]] == list(range(40))
