"""The detection evaluation: score metrics, the classical baseline, its validation threshold, the end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sgad_med.data.synthetic import HELDOUT_ANATOMY_SEEDS, TRAIN_ANATOMY_SEEDS
from sgad_med.detector import SliceAnomalyDetector
from sgad_med.evaluation.detection import (
    ClassicalBaseline,
    DetectionEvaluation,
    auroc,
    average_precision,
    corrupted_slices_for,
    detection_cases,
    format_table,
    threshold_at_fpr,
    validation_volumes,
)
from sgad_med.networks.detector import SliceAnomalyNet
from tests.conftest import SAMPLE_DATA

MNI = SAMPLE_DATA / "mni"
SPACING = 8.0  # 25 x 29 x 24 voxels: seconds, not minutes


@pytest.fixture(scope="module")
def case() -> dict:
    return detection_cases(n_anatomies=1, spacing=SPACING, mni_dir=MNI)[0]


def tiny_detector() -> SliceAnomalyDetector:
    torch.manual_seed(0)
    net = SliceAnomalyNet(context=1, init_features=4, growth_rate=4, block_config=(1, 1))
    return SliceAnomalyDetector(net, device="cpu", batch_size=8)


class SmoothingHarmonizer:
    """Stands in for the GAN: any change of appearance that keeps the anatomy."""

    def harmonize01(self, volume01: torch.Tensor) -> torch.Tensor:
        return torch.clamp(volume01 * 0.9 + 0.05, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------- metrics


def test_auroc_and_auprc_of_a_perfect_ranking_are_one():
    labels = np.r_[np.ones(5), np.zeros(20)]
    scores = np.r_[np.linspace(0.6, 1.0, 5), np.linspace(0.0, 0.5, 20)]
    assert auroc(scores, labels) == pytest.approx(1.0)
    assert average_precision(scores, labels) == pytest.approx(1.0)


def test_auroc_and_auprc_of_an_inverted_ranking():
    n_pos, n_neg = 4, 16
    labels = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    scores = np.r_[np.linspace(0.0, 0.1, n_pos), np.linspace(0.5, 1.0, n_neg)]
    assert auroc(scores, labels) == pytest.approx(0.0)
    # every positive comes after all negatives: precision i / (n_neg + i) at recall i / n_pos
    expected = np.mean([i / (n_neg + i) for i in range(1, n_pos + 1)])
    assert average_precision(scores, labels) == pytest.approx(expected)


def test_auroc_and_auprc_of_random_scores_are_chance():
    rng = np.random.default_rng(0)
    labels = rng.random(20_000) < 0.1
    scores = rng.random(20_000)
    assert auroc(scores, labels) == pytest.approx(0.5, abs=0.02)
    assert average_precision(scores, labels) == pytest.approx(labels.mean(), abs=0.02)


def test_average_precision_by_hand_and_with_ties():
    # ranks 1..4: hit, miss, hit, miss -> 0.5 * 1 + 0.5 * 2/3
    assert average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(0.5 + 1 / 3)
    # all tied: one threshold, precision = prevalence; AUROC counts ties one half
    assert average_precision(np.ones(8), [1, 0, 0, 0, 1, 0, 0, 0]) == pytest.approx(0.25)
    assert auroc(np.ones(8), [1, 0, 0, 0, 1, 0, 0, 0]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="positive and one negative"):
        auroc([0.1, 0.2], [1, 1])


def test_threshold_at_fpr_flags_at_most_that_fraction():
    clean = np.arange(100.0)
    threshold = threshold_at_fpr(clean, 0.01)
    assert np.mean(clean >= threshold) == pytest.approx(0.01)
    assert 98.0 < threshold <= 99.0
    assert np.mean(clean >= threshold_at_fpr(clean, 0.0)) == 0.0


# --------------------------------------------------------------------------------------------------------- baseline


def test_corrupted_slices_are_head_slices_apart_from_each_other(case):
    head = case["head"]
    chosen = corrupted_slices_for(head, count=4, min_gap=3, seed=[0, 1])
    assert len(chosen) == 4 and head[chosen].all()
    assert np.diff(chosen).min() >= 3
    assert 0 < chosen.min() and chosen.max() < head.size - 1
    np.testing.assert_array_equal(chosen, corrupted_slices_for(head, 4, 3, [0, 1]))


def test_baseline_threshold_comes_from_training_anatomies_only():
    with pytest.raises(ValueError, match="held-out"):
        validation_volumes([HELDOUT_ANATOMY_SEEDS[0]], spacing=SPACING, mni_dir=MNI)
    volumes = validation_volumes(range(900, 902), spacing=SPACING, mni_dir=MNI)
    baseline = ClassicalBaseline().fit_threshold(volumes, fpr=0.01)
    assert baseline.validation_anatomy_seeds == [900, 901]
    assert all(a in TRAIN_ANATOMY_SEEDS for a in baseline.validation_anatomy_seeds)
    clean = np.concatenate([baseline.score01(v["volume"])[v["head"]] for v in volumes])
    assert np.mean(clean >= baseline.threshold) <= 0.01
    assert baseline.n_validation_slices == clean.size


# ------------------------------------------------------------------------------------------------------- end to end


def test_detection_evaluation_runs_end_to_end_and_writes_json(tmp_path, capsys):
    detector = tiny_detector()
    evaluation = DetectionEvaluation(
        detector, harmonizer=SmoothingHarmonizer(), n_anatomies=1, severities=[0.5], kinds=["spike", "shift"],
        slices_per_volume=2, spacing=SPACING, mni_dir=MNI, output_dir=tmp_path / "out",
        validation_anatomies=range(900, 902), progress=False,
    )
    results = evaluation()
    written = json.loads((tmp_path / "out" / "detection_evaluation.json").read_text())
    assert written == json.loads(json.dumps(results))
    for key in ("methods", "thresholds", "kinds", "severities", "per_kind", "mean", "clean", "clean_harmonized",
                "seconds_per_volume", "settings", "seconds"):
        assert key in written, key
    assert written["methods"] == ["detector", "baseline"]
    assert written["kinds"] == ["spike", "shift"] and written["severities"] == ["0.5"]
    for kind in ("spike", "shift"):
        row = written["per_kind"][kind]["0.5"]
        assert row["n_positive"] == 2 and row["n_negative"] > 10
        for method in ("detector", "baseline"):
            for metric in ("auroc", "auprc", "sensitivity"):
                assert 0.0 <= row[method][metric] <= 1.0
    for block in ("clean", "clean_harmonized"):
        assert 0.0 <= written[block]["detector"]["fpr"] <= 1.0
        assert 0.0 <= written[block]["baseline"]["fpr"] <= 1.0
    assert written["thresholds"]["detector"] == pytest.approx(detector.threshold)

    # the baseline's threshold is the one set on the (training-anatomy) validation volumes, never the evaluated ones
    settings = written["settings"]
    assert settings["anatomy_seeds"] == [HELDOUT_ANATOMY_SEEDS[0]]
    assert settings["validation_anatomy_seeds"] == [900, 901]
    assert not set(settings["anatomy_seeds"]) & set(settings["validation_anatomy_seeds"])
    expected = ClassicalBaseline().fit_threshold(validation_volumes(range(900, 902), spacing=SPACING, mni_dir=MNI),
                                                 0.01, SmoothingHarmonizer())
    assert written["thresholds"]["baseline"] == pytest.approx(expected.threshold)

    printed = capsys.readouterr().out
    assert "spike" in printed and "mean" in printed and "clean after harmonization" in printed
    assert format_table(written) == format_table(results)


def test_evaluation_refuses_validation_anatomies_that_are_evaluated(tmp_path, case):
    evaluation = DetectionEvaluation(tiny_detector(), kinds=["spike"], severities=[0.5], spacing=SPACING,
                                     mni_dir=MNI, output_dir=tmp_path, cases=[case],
                                     validation_anatomies=[case["anatomy_seed"]], progress=False)
    with pytest.raises(ValueError, match="anatom"):
        evaluation.run()


# ------------------------------------------------------------------------------------------------------- real scans


def _epi() -> list[tuple[str, str, int | None]]:
    from sgad_med.evaluation.real_scans import default_real_volumes

    scans = [s for s in default_real_volumes() if "example4d" in s[1]]
    if not scans:
        pytest.skip("nibabel's example4d EPI is not installed")
    return scans


def test_the_real_volume_listing_finds_the_nibabel_epi():
    from sgad_med.evaluation import harmonization, real_scans

    name, path, index = _epi()[0]
    assert "EPI" in name and path.endswith("example4d.nii.gz") and index == 0
    assert harmonization.default_real_scans is real_scans.default_real_scans, "the old import path still works"
    assert any("example4d" in s[1] for s in harmonization.default_real_scans())
    (item,) = real_scans.load_real_volumes([(name, path, index)])
    assert item["name"] == name and item["shape"] == [128, 96, 24]
    assert item["volume"].dtype == np.float32 and 0.0 <= item["volume"].min() and item["volume"].max() <= 1.0


def test_only_the_chosen_slices_of_a_real_volume_are_corrupted():
    from sgad_med.evaluation.detection import corrupt_real_volume, real_scan_head
    from sgad_med.evaluation.real_scans import load_real_volumes

    volume = load_real_volumes(_epi())[0]["volume"]
    original = volume.copy()
    chosen = corrupted_slices_for(real_scan_head(volume), 4, 3, [0, 5])
    assert len(chosen) == 4 and np.diff(chosen).min() >= 3 and 0 < chosen.min() and chosen.max() < 23
    corrupted = corrupt_real_volume(volume, "spike", chosen, 0.5, seed=1)
    changed = [k for k in range(volume.shape[-1]) if not np.array_equal(corrupted[..., k], original[..., k])]
    assert changed == list(chosen)
    assert np.array_equal(volume, original), "the input is not modified"


def test_the_real_scan_section_runs_with_a_tiny_detector(tmp_path, capsys, case):
    from sgad_med.evaluation.detection import format_real_scans_table

    scans = _epi()
    detector = tiny_detector()
    evaluation = DetectionEvaluation(
        detector, kinds=["spike", "shift"], severities=[0.5], slices_per_volume=2, spacing=SPACING, mni_dir=MNI,
        output_dir=tmp_path / "out", cases=[case], validation_anatomies=range(900, 901), progress=False,
        real_scans=scans,
    )
    results = evaluation()
    real = json.loads((tmp_path / "out" / "detection_evaluation.json").read_text())["real_scans"]
    for key in ("scans", "methods", "thresholds", "kinds", "severity", "per_kind", "mean", "notes", "seconds"):
        assert key in real, key
    assert real["kinds"] == ["spike", "shift"] and real["severity"] == "0.5"
    assert real["thresholds"] == results["thresholds"]
    (row,) = real["scans"]
    assert row["name"] == scans[0][0] and row["shape"] == [128, 96, 24] and row["n_slices"] == 24
    for method in ("detector", "baseline"):
        assert 0.0 <= row["flagged"][method] <= 1.0
        assert 0.0 <= real["mean"][method]["auroc"] <= 1.0
        for kind in ("spike", "shift"):
            assert real["per_kind"][kind]["n_positive"] == 2 and real["per_kind"][kind]["n_negative"] == 24
            assert 0.0 <= real["per_kind"][kind][method]["auroc"] <= 1.0
    printed = capsys.readouterr().out
    assert f"real scans (no truth): {scans[0][0]}" in printed and "presumed clean" in printed
    assert format_real_scans_table(real) == format_real_scans_table(results["real_scans"])

    off = DetectionEvaluation(detector, kinds=["spike"], severities=[0.5], slices_per_volume=2, spacing=SPACING,
                              mni_dir=MNI, output_dir=tmp_path / "off", cases=[case],
                              validation_anatomies=range(900, 901), progress=False, real_scans=False)
    assert off.real_scan_list() == []
