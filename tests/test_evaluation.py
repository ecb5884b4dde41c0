"""Metrics, classical baselines (Nyúl checked against intensity-normalization) and the held-out evaluation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sgad_med.data.synthetic import HELDOUT_ANATOMY_SEEDS, REFERENCE_STYLE, SyntheticStyleGenerator
from sgad_med.evaluation import (
    ANATOMY_METRICS,
    METRICS,
    PSNR_CAP_DB,
    NyulStandardizer,
    evaluate_harmonization,
    format_table,
    harmonization_cases,
    head_mask,
    heldout_cases,
    histogram_matching,
    identity,
    mae,
    nyul_standardize,
    psnr,
    reference_volumes,
    ssim,
    uses_case,
    volume_metrics,
    wasserstein_histogram,
)

C1 = (0.01 * 1.0) ** 2  # SSIM's luminance constant for data range 1


def _phantom(seed: int = 0, shape: tuple[int, int, int] = (32, 32, 6)) -> np.ndarray:
    """A square "head" of random tissue in a zero background."""
    rng = np.random.default_rng(seed)
    volume = np.zeros(shape, dtype=np.float32)
    h, w = shape[0] - 12, shape[1] - 12
    volume[6 : 6 + h, 6 : 6 + w] = 0.5 + 0.3 * rng.random((h, w, shape[2]))
    return volume


@pytest.fixture(scope="module")
def generator() -> SyntheticStyleGenerator:
    from sgad_med.data.mni import load_mni_template

    return SyntheticStyleGenerator(template=load_mni_template(spacing=8.0), anatomy_cache=2)


# ---------------------------------------------------------------------------------------------------- metrics


def test_identical_images_score_perfectly_in_2d_and_3d():
    volume = _phantom()
    mask = volume > 0
    for x, m in ((volume, mask), (volume[..., 0], mask[..., 0])):
        assert ssim(x, x) == pytest.approx(1.0) and ssim(x, x, m) == pytest.approx(1.0)
        assert mae(x, x) == 0.0 and mae(x, x, m) == 0.0
        assert psnr(x, x) == PSNR_CAP_DB and psnr(x, x, m) == PSNR_CAP_DB  # capped, not inf: JSON stays strict
    scores = volume_metrics(volume, volume, head_mask(volume))
    assert set(scores) == set(METRICS)
    assert scores["ssim_mask"] == pytest.approx(1.0) and scores["mae"] == 0.0 and scores["wasserstein"] == 0.0


def test_a_known_offset_gives_the_known_mae_and_psnr():
    x = _phantom()
    assert mae(x + 0.1, x) == pytest.approx(0.1, abs=1e-6)
    assert psnr(x + 0.1, x) == pytest.approx(20.0, abs=1e-4)  # 10 log10(1 / 0.1^2)
    y = np.zeros((16, 16))
    z = y.copy()
    z[:8] += 0.2  # half the image off by 0.2
    top = np.zeros_like(y, dtype=bool)
    top[:8] = True
    assert mae(z, y) == pytest.approx(0.1)
    assert mae(z, y, top) == pytest.approx(0.2) and mae(z, y, ~top) == 0.0
    assert psnr(z, y) == pytest.approx(10 * math.log10(1 / 0.02))  # MSE 0.5 * 0.04
    assert psnr(z, y, top) == pytest.approx(10 * math.log10(1 / 0.04))


def test_ssim_of_constant_regions_matches_the_formula_and_masks_select_regions():
    # Where both images are locally constant (a, b), SSIM = (2ab + C1) / (a^2 + b^2 + C1): the structure and
    # contrast terms are C2 / C2. The window has radius 5, so columns >= 6 away from the edge at 16 are constant.
    x = np.full((32, 32), 0.5)
    y = x.copy()
    y[:, 16:] = 0.6
    left, right = np.zeros_like(x, dtype=bool), np.zeros_like(x, dtype=bool)
    left[:, :10], right[:, 22:] = True, True
    expected = (2 * 0.5 * 0.6 + C1) / (0.5**2 + 0.6**2 + C1)
    assert ssim(y, x, left) == pytest.approx(1.0)
    assert ssim(y, x, right) == pytest.approx(expected, rel=1e-9)
    assert ssim(y, x) < ssim(y, x, left)
    # a volume: per-slice maps stacked, so a 3D score is the voxel mean of the slices' maps
    volume_x, volume_y = np.stack([x, x], axis=-1), np.stack([x, y], axis=-1)
    assert ssim(volume_y, volume_x) == pytest.approx((1.0 + ssim(y, x)) / 2)


def test_masked_metrics_ignore_what_lies_outside_the_mask():
    x = _phantom()
    mask = x > 0
    y = x.copy()
    y[~mask] += 0.2  # damage only the background
    assert mae(y, x, mask) == 0.0 and psnr(y, x, mask) == PSNR_CAP_DB
    assert mae(y, x) > 0.0 and psnr(y, x) < 30.0 and ssim(y, x) < ssim(y, x, mask)
    scores = volume_metrics(y, x, mask)
    assert scores["mae_mask"] == 0.0 and scores["mae"] > 0.0 and scores["ssim"] < scores["ssim_mask"]
    with pytest.raises(ValueError, match="no voxel"):
        mae(y, x, np.zeros_like(mask))
    with pytest.raises(ValueError, match="shape"):
        psnr(y, x[..., :2])


def test_wasserstein_is_zero_for_equal_and_the_shift_for_shifted_distributions():
    x = np.random.default_rng(1).random(1000)
    assert wasserstein_histogram(x, x) == 0.0
    assert wasserstein_histogram(x + 0.25, x) == pytest.approx(0.25)
    # masks pick the voxels on each side, independently; histograms ignore where voxels are
    volume = _phantom()
    mask = volume > 0
    shuffled = volume.copy()
    shuffled[mask] = np.random.default_rng(2).permutation(volume[mask])
    assert wasserstein_histogram(shuffled, volume, mask, mask) == 0.0
    assert wasserstein_histogram(volume + 0.1, volume, mask, mask) == pytest.approx(0.1, abs=1e-6)
    assert wasserstein_histogram(volume, volume[mask], mask) == 0.0


def test_head_mask_is_closed_filled_and_not_eroded_at_the_border(generator):
    volume = _phantom()
    volume[14:18, 14:18] = 0.0  # a hole of "air" inside the head
    volume[10:12, 6:8] = 0.0  # a notch in the edge
    mask = head_mask(volume)
    assert mask[15, 15].all() and mask[10, 6].all()
    assert not mask[0, 0].any() and mask.sum() == 20 * 20 * volume.shape[2]
    touching = np.zeros((20, 20, 3), dtype=np.float32)
    touching[:10] = 0.5  # head cut by the field of view
    assert head_mask(touching).sum() == 10 * 20 * 3
    assert head_mask(touching[..., 0]).sum() == 10 * 20  # 2D
    anatomy = generator.anatomy(HELDOUT_ANATOMY_SEEDS[0])
    truth = generator.volume(HELDOUT_ANATOMY_SEEDS[0], REFERENCE_STYLE)
    from_truth, from_anatomy = head_mask(truth), head_mask(anatomy)
    assert from_truth.dtype == bool and from_truth.shape == truth.shape
    assert np.array_equal(from_truth, from_anatomy)  # the same head from the truth or from the tissue maps
    assert 0.2 < from_truth.mean() < 0.8


# ---------------------------------------------------------------------------------------------------- baselines


def test_identity_changes_nothing():
    volume = _phantom()
    assert np.array_equal(identity(volume), volume) and np.array_equal(identity(volume, _phantom(1)), volume)


def test_histogram_matching_matches_the_reference_distribution_on_the_foreground():
    source, reference = _phantom(0) ** 2, _phantom(1)
    mask, reference_mask = source > 0, reference > 0
    assert wasserstein_histogram(source, reference, mask, reference_mask) > 0.1
    out = histogram_matching(source, reference, mask, reference_mask)
    assert wasserstein_histogram(out, reference, mask, reference_mask) < 0.01
    np.testing.assert_allclose(
        np.percentile(out[mask], [5, 25, 50, 75, 95]),
        np.percentile(reference[reference_mask], [5, 25, 50, 75, 95]),
        atol=0.01,
    )
    assert np.array_equal(out[~mask], source[~mask])  # background left as is
    assert np.array_equal(histogram_matching(source, reference, mask), out)  # default reference mask: nonzero
    whole = histogram_matching(source, reference)  # no masks: whole volumes
    assert wasserstein_histogram(whole, reference) < 0.01


def test_nyul_maps_the_landmarks_onto_the_standard_scale():
    references = [_phantom(s) for s in range(3)]
    nyul = NyulStandardizer().fit(references)
    assert list(nyul.percentiles) == [1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99]
    # output_range=None: [s1, s2] at the references' mean 1st/99th percentiles (reference units)
    landmarks = np.array([nyul.landmarks(r) for r in references])
    assert nyul.standard_scale[0] == pytest.approx(landmarks[:, 0].mean())
    assert nyul.standard_scale[-1] == pytest.approx(landmarks[:, -1].mean())
    assert np.all(np.diff(nyul.standard_scale) > 0)
    image = _phantom(7) ** 1.3 * 0.6  # another scale and shape of histogram; zero background
    out = nyul.transform(image)
    foreground = image > 0
    np.testing.assert_allclose(np.percentile(out[foreground], nyul.percentiles), nyul.standard_scale, atol=1e-4)
    np.testing.assert_array_equal(out, nyul_standardize(image, nyul.standard_scale))
    np.testing.assert_array_equal(out, nyul(image))
    fixed = NyulStandardizer(output_range=(0.1, 0.9)).fit(references)
    assert fixed.standard_scale[[0, -1]] == pytest.approx([0.1, 0.9])
    with pytest.raises(RuntimeError, match="fitted"):
        NyulStandardizer().transform(image)


def test_nyul_matches_the_intensity_normalization_package():
    nyul_module = pytest.importorskip(
        "intensity_normalization.normalizers.population.nyul",
        reason="intensity-normalization is a test-only dependency",
    )
    from intensity_normalization.adapters.images import NumpyImageAdapter

    references = [_phantom(s) for s in range(4)]
    masks = [r > 0.6 for r in references]
    image = _phantom(9) ** 1.5
    image_mask = image > 0.3
    # The same percentiles and the same np.percentile calls (float32 ends of the map to [1, 100], float64
    # landmarks), so the standard scales agree to float64 rounding; the transform interpolates with np.interp
    # instead of scipy's interp1d and returns float32, so outputs agree to float32 rounding: 1e-6 relative, and
    # atol 1e-5 (about one float32 ulp at 100) for values extrapolated to near 0.
    for fit_masks, mask in ((None, None), (masks, image_mask)):
        theirs = nyul_module.NyulNormalizer()
        theirs.fit_population(
            [NumpyImageAdapter(r) for r in references],
            None if fit_masks is None else [NumpyImageAdapter(m) for m in fit_masks],
        )
        ours = NyulStandardizer(output_range=(1.0, 100.0)).fit(references, fit_masks)
        np.testing.assert_allclose(ours.percentiles, theirs.percentiles)
        np.testing.assert_allclose(ours.standard_scale, theirs.standard_scale, rtol=1e-12)
        expected = theirs.transform(
            NumpyImageAdapter(image), None if mask is None else NumpyImageAdapter(mask)
        ).get_data()
        np.testing.assert_allclose(ours.transform(image, mask), expected, rtol=1e-6, atol=1e-5)


def test_monotonic_baselines_cannot_undo_a_contrast_inversion(generator):
    """Why a GAN is needed: in a T2-like scan CSF is brighter than white matter, in the reference it is darker."""
    anatomy_seed = HELDOUT_ANATOMY_SEEDS[0]
    labels = generator.anatomy(anatomy_seed).labels()
    csf, wm = labels == 1, labels == 3
    pair = generator.pair(anatomy_seed, style_seed=0, split="heldout", family="t2")
    source, target = pair["source"], pair["target"]
    assert target[csf].mean() < target[wm].mean() and source[csf].mean() > source[wm].mean()
    mask = head_mask(target)
    reference = generator.volume(0, REFERENCE_STYLE)  # a training anatomy in the reference style
    nyul = NyulStandardizer().fit([reference], [head_mask(reference)])
    for out in (histogram_matching(source, reference, mask, head_mask(reference)), nyul.transform(source, mask)):
        assert wasserstein_histogram(out, target, mask, mask) < wasserstein_histogram(source, target, mask, mask)
        assert out[csf].mean() > out[wm].mean(), "a monotonic map keeps CSF brighter than white matter"
        # both are monotonic maps of the intensities: the voxel order is kept
        order = np.argsort(source[mask], kind="stable")
        assert np.all(np.diff(out[mask][order]) >= -1e-6)


# ---------------------------------------------------------------------------------------------------- evaluation


def _tiny_cases() -> list[dict]:
    cases = []
    for i in range(2):
        target = _phantom(10 + i, shape=(24, 24, 4))
        source = np.clip(1.0 - target, 0.0, 1.0) * (target > 0)  # inverted contrast inside the head
        cases.append(
            {"source": source, "target": target, "mask": head_mask(target), "anatomy_seed": i, "style": f"tiny-{i}"}
        )
    return cases


def test_evaluate_harmonization_scores_an_oracle_above_doing_nothing():
    cases = _tiny_cases()
    targets = {id(case["source"]): case["target"] for case in cases}
    methods = {
        "identity": identity,
        "oracle": lambda s: targets[id(s)],  # a closure over the truth: the method gets case["source"] itself
        "oracle (case)": uses_case(lambda case: case["target"]),
        "histogram matching": lambda s: histogram_matching(s, cases[0]["target"], s > 0),
    }
    results = evaluate_harmonization(methods, cases)
    assert set(results["methods"]) == set(methods) and results["n_cases"] == 2
    assert results["metrics"] == list(METRICS)
    for name in methods:
        assert set(results["methods"][name]) == set(METRICS) | set(ANATOMY_METRICS)
        for stats in results["methods"][name].values():
            assert set(stats) == {"mean", "std"} and math.isfinite(stats["mean"]) and stats["std"] >= 0
    assert [c["style"] for c in results["cases"]] == ["tiny-0", "tiny-1"]
    assert set(results["cases"][0]) == {"anatomy_seed", "style", *methods}
    oracle, none = results["methods"]["oracle"], results["methods"]["identity"]
    assert results["methods"]["oracle (case)"] == oracle
    assert oracle["ssim_mask"]["mean"] == pytest.approx(1.0) and oracle["mae_mask"]["mean"] == 0.0
    assert oracle["psnr_mask"]["mean"] == PSNR_CAP_DB and oracle["wasserstein"]["mean"] == 0.0
    for metric in ("ssim_mask", "ssim", "psnr_mask", "psnr"):
        assert none[metric]["mean"] < oracle[metric]["mean"]
    for metric in ("mae_mask", "mae", "wasserstein"):
        assert none[metric]["mean"] > oracle[metric]["mean"]
    assert "preservation_mae_mask" not in results  # no reference_input in these cases

    table = format_table(results)
    lines = table.splitlines()
    assert all(name in table for name in methods) and "SSIM(mask)" in lines[0] and "W1 hist" in lines[0]
    assert len(lines) == 2 + len(methods) and len({len(line) for line in lines}) == 1  # fixed width
    text = json.dumps(results, allow_nan=False)  # JSON-serialisable, strictly
    assert format_table(json.loads(text)) == table


def test_evaluate_harmonization_rejects_outputs_of_the_wrong_shape():
    with pytest.raises(ValueError, match="shape"):
        evaluate_harmonization({"crop": lambda s: s[..., :2]}, _tiny_cases())


def test_heldout_cases_and_the_preservation_check():
    cases = heldout_cases(n_anatomies=1, styles_per_anatomy=2, spacing=8.0)
    assert len(cases) == 2 and {c["anatomy_seed"] for c in cases} == {HELDOUT_ANATOMY_SEEDS[0]}
    for case in cases:
        assert case["style"].endswith("-heldout") and case["source"].shape == case["target"].shape
        assert case["mask"].dtype == bool and case["mask"].any()
        for key in ("source", "target"):
            assert case[key].dtype == np.float32 and case[key].min() >= 0.0 and case[key].max() <= 1.0
        assert case["target"].max() == 1.0  # percentile-normalized, like a real scan and like training targets
    assert cases[0]["style_params"] != cases[1]["style_params"]
    results = evaluate_harmonization({"none": identity, "oracle": uses_case(lambda c: c["target"])}, cases)
    none, oracle = results["methods"]["none"], results["methods"]["oracle"]
    assert oracle["ssim_mask"]["mean"] == pytest.approx(1.0) and none["ssim_mask"]["mean"] < 0.95
    assert none["mae_mask"]["mean"] > 0.01
    assert results["preservation_mae_mask"] == {"none": 0.0, "oracle": 0.0}
    assert "MAE on ref-style" in format_table(results)
    json.dumps(results, allow_nan=False)


@pytest.mark.parametrize("split", ["validation", "validation_low"])
def test_validation_cases_are_built_like_the_heldout_ones_from_training_pool_anatomies(split):
    cases = harmonization_cases([960], split, styles_per_anatomy=2, spacing=8.0)
    assert len(cases) == 2 and {c["anatomy_seed"] for c in cases} == {960}
    assert all(c["style"].endswith(f"-{split}") for c in cases)
    assert set(cases[0]) == set(heldout_cases(n_anatomies=1, styles_per_anatomy=1, spacing=8.0)[0])
    with pytest.raises(ValueError, match="other split"):
        harmonization_cases([HELDOUT_ANATOMY_SEEDS[0]], split, spacing=8.0)


def test_reference_volumes_refuse_heldout_anatomies():
    with pytest.raises(ValueError, match="held-out"):
        reference_volumes([HELDOUT_ANATOMY_SEEDS[0]], spacing=8.0)


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
