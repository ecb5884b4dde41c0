from __future__ import annotations

import numpy as np
import pytest
import torch

import sgad_med
from sgad_med.detector import ScoreFolder, SliceAnomalyDetector
from sgad_med.networks import SliceAnomalyNet
from sgad_med.transforms.artifacts import apply_slice_artifact
from sgad_med.transforms.intensity import normalize
from sgad_med.transforms.slice_statistics import texture_slice_scores
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


def test_slice_evidence_is_what_combine_takes_and_skips_what_is_not_asked_for():
    volume = torch.rand(40, 44, 11)
    detector = _detector()
    logit, novelty, shift, z = detector.slice_evidence01(volume)
    own_logit, own_novelty = detector.evidence01(volume)
    torch.testing.assert_close(logit, own_logit)
    torch.testing.assert_close(novelty, own_novelty)
    assert shift.shape == (2,)
    np.testing.assert_allclose(z.numpy(), texture_slice_scores(volume.numpy()), rtol=1e-6)
    assert detector.slice_evidence01(volume, scan_shift=False, neighbour=False)[2:] == (None, None)
    np.testing.assert_allclose(detector.score01(volume), detector.network.combine(logit, novelty, shift).numpy(),
                               atol=1e-6)


NEIGHBOUR_MAP = (6.0, -31.0)  # logit > 2.2 (probability > 0.9) only where log(1 + z) > 5.53, i.e. z > 250


def _neighbour_detector(neighbour_map=None, **kwargs) -> SliceAnomalyDetector:
    """Threshold 0.9, which the tiny network's own evidence (sigmoid of logits near 0, no novelty) never reaches."""
    detector = _detector(**kwargs)
    n = detector.network.novelty_mean.numel()
    detector.network.set_calibration(torch.zeros(n), torch.eye(n), 1.0, 0.0, -30.0, 0.9, neighbour_map=neighbour_map)
    return detector


def test_neighbour_statistics_flag_a_slice_the_networks_own_evidence_misses():
    scan = sgad_med.load_scan(SAMPLE_DATA / "synthetic_mr.nii.gz")
    volume = np.asarray(normalize(scan.image.as_tensor()[0:1], modality=scan.modality)[0])[0]
    k = volume.shape[-1] // 2
    corrupted = np.asarray(apply_slice_artifact(volume[None], "rician", [k], 0.75, seed=0)[0])[0]

    plain = _neighbour_detector()
    with_map = _neighbour_detector(NEIGHBOUR_MAP)
    assert not plain.network.uses_neighbour_evidence and with_map.network.uses_neighbour_evidence
    without_map = plain.score01(corrupted)
    assert (without_map < plain.threshold).all(), "the network alone flags nothing"

    scores = with_map.score01(corrupted)
    assert scores.shape == (volume.shape[-1],) and scores.dtype == np.float32
    np.testing.assert_array_equal(np.flatnonzero(scores >= with_map.threshold), [k])
    z = texture_slice_scores(corrupted)
    a, b = NEIGHBOUR_MAP
    assert scores[k] == pytest.approx(1.0 / (1.0 + np.exp(-(a * np.log1p(z[k]) + b))), abs=1e-5)
    assert not (with_map.score01(volume) >= with_map.threshold).any(), "the clean scan stays unflagged"

    # switched off, the detector scores as if the weights carried no neighbour map
    off = _neighbour_detector(NEIGHBOUR_MAP, neighbour_statistics=False)
    np.testing.assert_allclose(off.score01(corrupted), without_map, atol=1e-6)
    # and a harmonized volume is always judged by the network alone
    np.testing.assert_allclose(with_map.score01(corrupted, harmonized=True), without_map, atol=1e-6)


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
