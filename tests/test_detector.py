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


# --------------------------------------------------------------------------------------------------------------
# the slice-sequence detector (the shipped one)
# --------------------------------------------------------------------------------------------------------------

DETECTION_BUNDLE = SAMPLE_DATA.parent / "bundles" / "slice_anomaly_detection"


def _sequence_detector(**kwargs) -> SliceAnomalyDetector:
    from sgad_med.networks import SliceSequenceNet

    torch.manual_seed(0)
    net = SliceSequenceNet(channels=(4, 8), temporal_channels=8, dilations=(1, 2))
    net.set_calibration(2.0, 0.5)
    return SliceAnomalyDetector(net, device="cpu", batch_size=7, **kwargs)


def test_the_sequence_detector_scores_one_calibrated_probability_per_slice():
    scan = sgad_med.load_scan(SAMPLE_DATA / "synthetic_mr.nii.gz")
    detector = _sequence_detector()
    assert detector.is_sequence and not _detector().is_sequence
    scores = detector.score(scan)
    assert scores.shape == (scan.image.shape[-1],) and scores.dtype == np.float32
    assert ((scores >= 0) & (scores <= 1)).all()
    logits = detector.sequence_logits01(detector.normalize_scan(scan)[0])
    np.testing.assert_allclose(scores, torch.sigmoid(logits / 2.0).numpy(), atol=1e-6)
    np.testing.assert_array_equal(detector.flag(scan), scores >= 0.5)


def test_the_sequence_detector_scores_do_not_depend_on_the_batch_size_or_the_harmonized_flag():
    volume = torch.rand(40, 44, 11)
    scores = _sequence_detector().score01(volume)
    other = _sequence_detector()
    other.batch_size = 3
    np.testing.assert_allclose(other.score01(volume), scores, atol=1e-5)
    np.testing.assert_allclose(other.score01(volume, harmonized=True), scores, atol=1e-5)
    with pytest.raises(ValueError, match="volumes"):
        other.score01(torch.rand(4, 4))


def _damaged_in_scan_units(scan: sgad_med.Scan, slices: list[int], kind: str) -> sgad_med.Scan:
    """The scan with ``slices`` damaged in its own units (as a scanner would), before any normalization."""
    from sgad_med.transforms.artifacts import ARTIFACTS

    image = scan.image.as_tensor().clone()
    peak = float(image.max())
    rng = np.random.default_rng(0)
    for k in slices:
        image[0, :, :, k] = torch.from_numpy(ARTIFACTS[kind]((image[0, :, :, k] / peak).numpy(), 0.6, rng)) * peak
    return scan.with_image(image)


SHIPPED = pytest.mark.skipif(not (DETECTION_BUNDLE / "models" / "model.pt").is_file(), reason="no shipped weights")


@SHIPPED
@pytest.mark.parametrize("kind", ["rician", "spike", "intensity_jump", "ghosting", "signal_loss", "saturation"])
def test_damaging_a_few_slices_leaves_every_other_slices_score_alone(kind):
    """Damage on four slices of a 2 mm scan, in the scan's units, moves the scan's normalization percentiles (the
    high one by up to 10 %) and so the intensities of every slice: the other slices' scores must not follow."""
    detector = SliceAnomalyDetector.from_bundle(DETECTION_BUNDLE, device="cpu")
    scan = sgad_med.load_scan(SAMPLE_DATA / "synthetic_mr.nii.gz")
    damaged_slices = [14, 15, 16, 30]
    damaged = _damaged_in_scan_units(scan, damaged_slices, kind)
    before, after = detector.score(scan), detector.score(damaged)
    others = np.setdiff1d(np.arange(before.size), damaged_slices)
    assert np.abs(after[others] - before[others]).max() <= 0.1
    np.testing.assert_array_equal(after[others] >= detector.threshold, before[others] >= detector.threshold)
    assert (after[damaged_slices] >= detector.threshold).all()


@SHIPPED
@pytest.mark.xfail(strict=True, reason="measured 2026-12-02 (detection 0.4.0): on the 1 mm MNI T1 the low percentile "
                   "moves from 64 to 10-14 and slices 80-100 away change by up to 0.33 (slices 1, 54, 150-151, whose "
                   "scores lie between 0.2 and 0.8); the shared normalization is not robust to a few damaged slices")
@pytest.mark.parametrize("kind", ["rician", "spike"])
def test_damage_that_moves_the_low_percentile_a_long_way_leaves_the_other_slices_alone(kind):
    """The issue's case: damage over five slices of the clean MNI T1 lifts their air from 0, which moves the scan's
    low normalization percentile from 64 to 10-14 (a shift of a fifth of the range for every slice)."""
    detector = SliceAnomalyDetector.from_bundle(DETECTION_BUNDLE, device="cpu")
    scan = sgad_med.load_scan(SAMPLE_DATA / "mni" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    damaged_slices = [60, 61, 62, 63, 64]
    damaged = _damaged_in_scan_units(scan, damaged_slices, kind)
    params_before, params_after = detector.normalize_scan(scan)[1], detector.normalize_scan(damaged)[1]
    assert params_before.lo - params_after.lo > 0.2 * (params_before.hi - params_before.lo)  # it moved a lot
    before, after = detector.score(scan), detector.score(damaged)
    others = np.setdiff1d(np.arange(before.size), damaged_slices)
    assert np.abs(after[others] - before[others]).max() <= 0.1
