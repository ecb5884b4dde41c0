"""The restoration evaluation: classical baselines do what they should, the table and the JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sgad_med.evaluation.metrics import psnr
from sgad_med.evaluation.restoration import (
    CLASSICAL_METHODS,
    METHODS,
    RestorationEvaluation,
    dropped_region,
    evaluate_restoration,
    format_restoration_table,
    inpaint_dropout,
    interpolate_neighbours,
    nl_means,
    noise_sigma,
    quality_bar,
    restoration_cases,
    tv_chambolle,
)
from tests.conftest import SAMPLE_DATA

CONTEXT = 2


def _stack(seed: int = 0, size: int = 40) -> np.ndarray:
    """Five smooth slices of a blob-like 'head' that changes slowly along the slice axis."""
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    rng = np.random.default_rng(seed)
    cy, cx = rng.uniform(-0.1, 0.1, 2)
    slices = []
    for k in range(2 * CONTEXT + 1):
        r = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
        head = (r < 0.8 - 0.02 * k).astype(np.float64)
        slices.append(head * (0.5 + 0.3 * np.cos(3 * x + 0.05 * k) * np.sin(2 * y)))
    return np.clip(np.stack(slices), 0, 1).astype(np.float32)


def _cases(n: int = 3) -> list[dict]:
    cases = []
    for i in range(n):
        stack = _stack(i)
        cases.append({"stack": stack, "mask": stack[CONTEXT] > 0, "anatomy_seed": 10_000 + i, "style_seed": i,
                      "style": "test", "slice": i})
    return cases


def test_noise_sigma_estimates_gaussian_noise():
    rng = np.random.default_rng(0)
    image = 0.5 + 0.05 * rng.standard_normal((64, 64))
    assert noise_sigma(image) == pytest.approx(0.05, rel=0.15)
    assert noise_sigma(np.full((8, 8), 0.3)) == 0.0


@pytest.mark.parametrize("denoise", [nl_means, tv_chambolle])
def test_denoisers_reduce_noise(denoise):
    clean = _stack()[CONTEXT]
    noisy = np.clip(clean + 0.08 * np.random.default_rng(1).standard_normal(clean.shape), 0, 1).astype(np.float32)
    out = denoise(noisy)
    assert out.shape == clean.shape and out.dtype == np.float32
    assert psnr(out, clean) > psnr(noisy, clean) + 2.0


def test_interpolation_is_the_mean_of_the_nearest_neighbours():
    stack = _stack()
    assert np.allclose(interpolate_neighbours(stack, CONTEXT), 0.5 * (stack[1] + stack[3]))
    with pytest.raises(ValueError):
        interpolate_neighbours(stack[2:3], 0)


def test_the_dropped_region_is_found_and_inpainted():
    stack = _stack()
    damaged = stack.copy()
    damaged[CONTEXT, 12:20, 14:24] = 0.0
    region = dropped_region(damaged, CONTEXT)
    assert region[12:20, 14:24].all()
    assert region.sum() < 2 * 8 * 10 + 40, "only the dropped box (dilated by a pixel) is found"
    assert not dropped_region(stack, CONTEXT).any(), "a clean slice has no dropped region"
    out = inpaint_dropout(damaged, CONTEXT)
    assert psnr(out, stack[CONTEXT]) > psnr(damaged[CONTEXT], stack[CONTEXT]) + 5.0
    assert np.array_equal(inpaint_dropout(stack, CONTEXT), stack[CONTEXT])


def _oracle(cases):
    """A 'network' that knows the truth: restores every slice exactly."""
    truth = {c["stack"][[0, 1, 3, 4]].tobytes(): c["stack"][CONTEXT] for c in cases}
    return lambda stacks: np.stack([truth[s[[0, 1, 3, 4]].tobytes()] for s in stacks])


def test_evaluation_scores_every_method_kind_and_severity():
    cases = _cases()
    results = evaluate_restoration(cases, _oracle(cases), kinds=["dropout", "rician"], severities=[0.25, 0.5])
    assert set(results["severities"]) == {"0.25", "0.5"}
    per_kind = results["severities"]["0.5"]["per_kind"]
    assert set(per_kind["dropout"]) == set(METHODS)
    assert "inpaint_biharmonic" not in per_kind["rician"], "inpainting is scored on dropout kinds only"
    assert per_kind["rician"]["network"]["psnr_mask"] == 100.0 and per_kind["rician"]["network"]["ssim"] == 1.0
    assert per_kind["rician"]["nl_means"]["psnr_mask"] > per_kind["rician"]["corrupted"]["psnr_mask"]
    assert per_kind["dropout"]["inpaint_biharmonic"]["psnr_mask"] > per_kind["dropout"]["corrupted"]["psnr_mask"]
    assert results["clean_slice"]["network"]["mae_mask"] == 0.0
    assert set(results["clean_slice"]) == {"network", *CLASSICAL_METHODS}
    bar = quality_bar(results)
    assert bar["passed"] and bar["psnr_gain_over_corrupted_db"]["value"] > 6.0


def test_the_quality_bar_fails_a_network_that_does_nothing():
    cases = _cases(2)
    results = evaluate_restoration(cases, lambda stacks: stacks[:, CONTEXT], kinds=["rician"], severities=[0.5])
    bar = quality_bar(results)
    assert not bar["passed"]
    assert bar["psnr_gain_over_corrupted_db"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert bar["psnr_margin_over_best_classical_db"]["failing"] == ["rician"]
    assert bar["clean_slice_mae"]["passed"], "doing nothing does no harm to clean slices"


def test_the_results_are_reproducible():
    cases = _cases(2)
    first = evaluate_restoration(cases, _oracle(cases), kinds=["blob"], severities=[0.5], seed=3)
    second = evaluate_restoration(cases, _oracle(cases), kinds=["blob"], severities=[0.5], seed=3)
    assert first == second


def test_restoration_evaluation_prints_one_table_and_writes_json(tmp_path, capsys):
    cases = _cases(2)
    evaluation = RestorationEvaluation(cases, _oracle(cases), tmp_path / "eval", kinds=["dropout", "zipper"],
                                       severities=[0.25, 0.5, 0.75], settings={"note": "test"}, real_scans=False)
    results = evaluation.run()
    printed = capsys.readouterr().out
    assert "dropout @0.5" in printed and "mean @0.75" in printed and "clean slice" in printed
    assert "overall: pass" in printed
    saved = json.loads((tmp_path / "eval" / "restoration_evaluation.json").read_text())
    assert saved["settings"]["note"] == "test" and saved["settings"]["slices"] == 2
    assert saved["quality_bar"]["passed"] is True
    assert format_restoration_table(saved) == format_restoration_table(results)
    with pytest.raises(ValueError, match="moderate"):
        RestorationEvaluation(cases, _oracle(cases), tmp_path, severities=[0.25], moderate=0.5)


def test_held_out_cases_are_held_out_anatomies_in_held_out_styles():
    cases = restoration_cases(n_anatomies=1, slices_per_volume=2, spacing=8.0, mni_dir=SAMPLE_DATA / "mni")
    assert len(cases) == 2
    assert all(c["anatomy_seed"] >= 10_000 for c in cases)
    assert all("heldout" in c["style"] for c in cases)
    stack, mask = cases[0]["stack"], cases[0]["mask"]
    assert stack.shape[0] == 2 * CONTEXT + 1 and mask.shape == stack.shape[1:] and mask.any()
    assert stack.min() >= 0 and stack.max() <= 1


def test_validation_cases_come_from_other_anatomies_and_styles_built_the_same_way():
    cases = restoration_cases(slices_per_volume=2, spacing=8.0, mni_dir=SAMPLE_DATA / "mni",
                              anatomy_seeds=[960, 961], split="validation")
    assert [c["anatomy_seed"] for c in cases] == [960, 960, 961, 961]
    assert all(c["style"].endswith("-validation") for c in cases)
    with pytest.raises(ValueError, match="other split"):  # never a held-out anatomy outside the held-out split
        restoration_cases(slices_per_volume=1, spacing=8.0, mni_dir=SAMPLE_DATA / "mni", anatomy_seeds=[10_000],
                          split="validation")


# ------------------------------------------------------------------------------------------------------- real scans


def _epi() -> list[tuple[str, str, int | None]]:
    from sgad_med.evaluation.real_scans import default_real_volumes

    scans = [s for s in default_real_volumes() if "example4d" in s[1]]
    if not scans:
        pytest.skip("nibabel's example4d EPI is not installed")
    return scans


def _tiny_restorer():
    import torch

    from sgad_med.networks import SliceRestorationNet
    from sgad_med.restorer import SliceRestorer

    torch.manual_seed(0)
    return SliceRestorer(SliceRestorationNet(context=CONTEXT, features=(4, 4, 8, 8, 16, 4)), device="cpu",
                         batch_size=4)


def test_the_real_volume_listing_finds_the_nibabel_epi():
    from sgad_med.evaluation.harmonization import default_real_scans
    from sgad_med.evaluation.real_scans import default_real_volumes

    assert any(path.endswith("example4d.nii.gz") and index == 0 for _, path, index in default_real_volumes())
    assert any(path.endswith("example4d.nii.gz") for _, path, _ in default_real_scans())


def test_only_the_centre_slices_of_real_stacks_are_damaged():
    from sgad_med.evaluation.real_scans import load_real_volumes
    from sgad_med.evaluation.restoration import damage_stacks, real_scan_cases

    volume = load_real_volumes(_epi())[0]["volume"]
    cases = real_scan_cases([{"name": "epi", "volume": volume}], slices_per_volume=3, context=CONTEXT, seed=0)
    assert len(cases) == 3
    slices = [c["slice"] for c in cases]
    assert min(slices) >= CONTEXT and max(slices) < volume.shape[-1] - CONTEXT and np.diff(slices).min() >= 3
    for c in cases:
        k = c["slice"]
        assert np.array_equal(c["stack"], np.moveaxis(volume[..., k - CONTEXT : k + CONTEXT + 1], -1, 0))
        assert np.array_equal(c["mask"], volume[..., k] > 0.05)
    clean = np.stack([c["stack"] for c in cases])
    for kind in ("dropout", "spike"):
        damaged = damage_stacks(clean, kind, 0.5, CONTEXT, seed=0)
        differs = [j for j in range(2 * CONTEXT + 1) if not np.array_equal(damaged[:, j], clean[:, j])]
        assert differs == [CONTEXT], kind
        assert all(not np.array_equal(damaged[i, CONTEXT], clean[i, CONTEXT]) for i in range(len(cases)))


def test_the_real_scan_section_runs_with_a_tiny_network(tmp_path, capsys):
    from sgad_med.evaluation.restoration import evaluate_real_scans, format_real_scans_table

    scans = _epi()
    cases = _cases(2)
    evaluation = RestorationEvaluation(cases, _tiny_restorer(), tmp_path / "eval", kinds=["dropout", "rician"],
                                       severities=[0.5], real_scans=scans, real_slices_per_volume=2)
    results = evaluation.run()
    real = json.loads((tmp_path / "eval" / "restoration_evaluation.json").read_text())["real_scans"]
    for key in ("scans", "severity", "kinds", "per_kind", "mean", "clean_slice", "mask", "notes", "seconds"):
        assert key in real, key
    assert real["severity"] == "0.5" and set(real["per_kind"]) == {"dropout", "rician"}
    (row,) = real["scans"]
    assert row["name"] == scans[0][0] and row["shape"] == [128, 96, 24] and len(row["slices"]) == 2
    assert set(real["per_kind"]["dropout"]) == set(METHODS)
    assert "inpaint_biharmonic" not in real["per_kind"]["rician"]
    for method in ("corrupted", "network", "interpolation"):
        for metric in ("psnr_mask", "ssim_mask", "psnr", "ssim"):
            assert np.isfinite(real["mean"][method][metric])
        assert real["per_kind"]["rician"][method]["n"] == 2
    assert set(real["clean_slice"]) == {"network", *CLASSICAL_METHODS}
    printed = capsys.readouterr().out
    assert f"real scans (no truth; reference: the original slice): {scans[0][0]}" in printed
    assert "mask: original slice > 0.05" in printed and "clean slice: MAE whole" in printed
    assert format_real_scans_table(real) == format_real_scans_table(results["real_scans"])
    assert evaluate_real_scans([], lambda stacks: stacks[:, CONTEXT]) is None
