"""Metrics, classical baselines (Nyúl checked against intensity-normalization) and the held-out evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sgad_med.data.synthetic import HELDOUT_ANATOMY_SEEDS
from sgad_med.evaluation import (
    NyulStandardizer,
    evaluate_harmonization,
    format_table,
    head_mask,
    heldout_cases,
    histogram_matching,
    mae,
    psnr,
    volume_metrics,
    wasserstein_histogram,
)


def _phantom(seed=0, shape=(32, 32, 6)):
    rng = np.random.default_rng(seed)
    volume = np.zeros(shape, dtype=np.float32)
    volume[6:26, 6:26] = 0.5 + 0.3 * rng.random((20, 20, shape[2]))
    return volume


def test_metrics_on_known_values():
    x = _phantom()
    assert mae(x, x) == 0.0 and psnr(x, x) == 100.0
    assert mae(x + 0.1, x) == pytest.approx(0.1, abs=1e-6)
    assert psnr(x + 0.1, x) == pytest.approx(20.0, abs=1e-4)  # 10 log10(1 / 0.01)
    mask = x > 0
    y = x.copy()
    y[~mask] += 0.2  # damage only the background
    assert mae(y, x, mask) == 0.0 and mae(y, x) > 0.0
    scores = volume_metrics(x, x, head_mask(x))
    assert scores["ssim_mask"] == pytest.approx(1.0) and scores["wasserstein"] == 0.0


def test_wasserstein_is_zero_for_equal_and_the_shift_for_shifted_distributions():
    x = np.random.default_rng(1).random(1000)
    assert wasserstein_histogram(x, x) == 0.0
    assert wasserstein_histogram(x + 0.25, x) == pytest.approx(0.25)


def test_histogram_matching_matches_the_reference_distribution_on_the_foreground():
    source, reference = _phantom(0) ** 2, _phantom(1)
    mask, reference_mask = source > 0, reference > 0
    out = histogram_matching(source, reference, mask, reference_mask)
    assert wasserstein_histogram(out, reference, mask, reference_mask) < 0.01
    assert np.array_equal(out[~mask], source[~mask])


def test_nyul_maps_landmarks_onto_the_standard_scale():
    references = [_phantom(s) for s in range(3)]
    nyul = NyulStandardizer().fit(references)
    image = _phantom(7) ** 1.3  # zero background, so the foreground is the phantom
    out = nyul.transform(image)
    foreground = image > 0
    np.testing.assert_allclose(np.percentile(out[foreground], nyul.percentiles), nyul.standard_scale, atol=1e-3)


def test_nyul_matches_the_intensity_normalization_package():
    package = pytest.importorskip("intensity_normalization.normalizers.population.nyul",
                                  reason="intensity-normalization is a benchmark-only dependency")
    from intensity_normalization.adapters.images import NumpyImageAdapter

    references = [_phantom(s) for s in range(4)]
    image = _phantom(9) ** 1.5
    theirs = package.NyulNormalizer().fit_population([NumpyImageAdapter(r) for r in references])
    ours = NyulStandardizer(output_range=(1.0, 100.0)).fit(references)
    # the package interpolates float32 data through scipy's interp1d: agreement to float32 precision
    np.testing.assert_allclose(ours.standard_scale, theirs.standard_scale, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ours.transform(image), theirs.transform(NumpyImageAdapter(image)).get_data(),
                               rtol=1e-5, atol=1e-4)


def test_monotonic_baselines_cannot_undo_a_contrast_inversion():
    """Why a GAN is needed: CSF darker than WM in the reference, brighter in the source (T2-like)."""
    reference = np.zeros((30, 30, 4), dtype=np.float32)
    reference[5:15], reference[15:25] = 0.3, 0.9  # "CSF" rows, "WM" rows
    source = reference.copy()
    source[5:15], source[15:25] = 0.9, 0.4
    mask = reference > 0
    for out in (histogram_matching(source, reference, mask, mask),
                NyulStandardizer().fit([reference], [mask]).transform(source, mask)):
        assert out[10, 10, 0] > out[20, 20, 0], "a monotonic map keeps CSF brighter than WM"


def test_evaluate_harmonization_scores_an_oracle_above_doing_nothing(tmp_path):
    cases = heldout_cases(n_anatomies=1, styles_per_anatomy=2, spacing=8.0)
    assert {c["anatomy_seed"] for c in cases} <= set(HELDOUT_ANATOMY_SEEDS)
    results = evaluate_harmonization({"none": lambda c: c["source"], "oracle": lambda c: c["target"]}, cases,
                                     progress=False)
    oracle, none = results["methods"]["oracle"], results["methods"]["none"]
    assert oracle["ssim_mask"]["mean"] == pytest.approx(1.0) and oracle["mae_mask"]["mean"] == 0.0
    assert none["ssim_mask"]["mean"] < 0.95 and none["mae_mask"]["mean"] > 0.01
    assert results["preservation_mae_mask"]["none"] == 0.0
    table = format_table(results)
    assert "oracle" in table and "none" in table and "SSIM(mask)" in table
    json.dumps(results)  # JSON-serialisable


def test_real_scans_are_scored_without_truth():
    from sgad_med.evaluation import default_real_scans, edge_agreement, evaluate_real_scans, format_real_table

    scans = [s for s in default_real_scans() if "MR_small" in s[0]]
    assert scans, "pydicom's MR_small.dcm ships with pydicom"
    references = [heldout_cases(n_anatomies=1, styles_per_anatomy=1, spacing=8.0)[0]["target"]]
    rows = evaluate_real_scans(lambda v: v, scans, references)
    assert rows[0]["w1_before"] == pytest.approx(rows[0]["w1_after"])  # the identity changes no histogram
    assert rows[0]["edge_ncc"] == pytest.approx(1.0, abs=1e-4)  # ... and no edge
    assert "MR_small" in format_real_table(rows)
    volume = _phantom()
    assert edge_agreement(np.roll(volume, 5, axis=0), volume) < 0.9  # moved anatomy is caught
