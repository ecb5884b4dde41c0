"""Anatomy-preservation metrics, the tissue-LUT oracle, the stress styles and the extended harmonization evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sgad_med.data.synthetic import HELDOUT_ANATOMY_SEEDS, style_split
from sgad_med.evaluation import heldout_cases, histogram_matching, reference_volumes, uses_case
from sgad_med.evaluation.anatomy import gradient_correlation, hallucination_rate, slice_flicker
from sgad_med.evaluation.harmonization import HarmonizationEvaluation, format_anatomy_table
from sgad_med.evaluation.harmonization_oracle import cosine_basis, fit_log_bias, tissue_lut_oracle
from sgad_med.evaluation.harmonization_stress import (
    STRESS_STYLES,
    cross_style_ssim,
    stress_cases,
    three_style_cases,
)


def _head(shape=(40, 40, 5)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    disc = (yy - 20) ** 2 + (xx - 20) ** 2 < 15**2
    inner = (yy - 20) ** 2 + (xx - 22) ** 2 < 7**2
    truth = np.where(inner, 0.86, np.where(disc, 0.4, 0.0)).astype(np.float32)
    return np.repeat(truth[..., None], shape[2], axis=-1), np.repeat(disc[..., None], shape[2], axis=-1)


def test_gradient_correlation_is_contrast_invariant_and_drops_when_anatomy_changes():
    truth, mask = _head()
    inverted = np.where(mask, 1.0 - truth, 0.0)
    assert gradient_correlation(truth, truth, mask).min() == pytest.approx(1.0)
    assert gradient_correlation(inverted, truth, mask).min() > 0.8  # same edges, other contrast
    moved = np.roll(truth, 6, axis=1)
    assert gradient_correlation(moved, truth, mask).max() < 0.6


def test_hallucination_counts_invented_edges_and_noise_but_not_the_anatomy():
    truth, mask = _head()
    assert hallucination_rate(truth, truth, mask) == 0.0
    painted = truth.copy()
    painted[24:30, 10:16] = 1.0  # a bright blob the anatomy lacks
    assert hallucination_rate(painted, truth, mask) > 0.01
    noisy = np.clip(truth + np.random.default_rng(0).normal(0, 0.08, truth.shape), 0, 1).astype(np.float32)
    assert hallucination_rate(noisy, truth, mask) > hallucination_rate(truth * 0.9, truth, mask)


def test_slice_flicker_is_zero_for_a_consistent_map_and_grows_with_slice_to_slice_gain_changes():
    truth, mask = _head()
    assert slice_flicker(truth * 0.8, truth, mask) == pytest.approx(0.0, abs=1e-7)
    gains = np.array([0.8, 1.0, 0.8, 1.0, 0.8], dtype=np.float32)
    assert slice_flicker(truth * gains, truth, mask) > 0.05


def test_the_oracle_recovers_bias_and_contrast_with_the_true_labels():
    truth, mask = _head((40, 40, 6))
    labels = np.where(truth > 0.8, 2, np.where(truth > 0.3, 1, 0))
    bias = np.exp(0.2 * cosine_basis(truth.shape, 1)[3])  # along the first axis
    source = np.where(labels == 2, 0.3, np.where(labels == 1, 0.7, 0.02)).astype(np.float32) * bias
    source = np.clip(source, 0, 1)
    field = fit_log_bias(source, labels, mask)
    assert np.log(field / bias)[mask].std() < 0.02  # up to a constant factor, which the tables absorb
    out = tissue_lut_oracle(source, truth, labels, mask)
    assert np.abs(out - truth)[mask].mean() < 0.02
    matched = histogram_matching(source, truth[mask], mask, np.ones(int(mask.sum()), bool))
    assert np.abs(matched - truth)[mask].mean() > 5 * np.abs(out - truth)[mask].mean()


def test_stress_styles_are_held_out_and_invert_or_degrade_as_named():
    for style in STRESS_STYLES.values():
        assert style_split(style) == "heldout"
    t2 = STRESS_STYLES["t2-inverted-sharp"]
    assert t2.wm < t2.gm < t2.csf and t2.blur_sigma_inplane == 0 and t2.csf - t2.other > 0.8
    cases = stress_cases(n_anatomies=1, spacing=8.0)
    assert [c["style"] for c in cases] == list(STRESS_STYLES)
    assert all(c["anatomy_seed"] == HELDOUT_ANATOMY_SEEDS[0] and c["labels"].shape == c["source"].shape
               for c in cases)


def test_cross_style_ssim_is_one_for_the_truth_and_lower_for_no_harmonization():
    groups = three_style_cases(n_anatomies=1, spacing=8.0)
    assert len(groups) == 1 and len(groups[0]) == 3
    assert len({c["style"] for c in groups[0]}) == 3
    assert cross_style_ssim(lambda c: c["target"], groups) == pytest.approx(1.0)
    assert cross_style_ssim(lambda c: c["source"], groups) < 0.9


class _Identity(torch.nn.Module):
    context = 1

    def forward(self, stack):
        return stack[:, 1:2]


def test_the_evaluation_prints_every_row_and_group(tmp_path, capsys):
    from sgad_med.harmonizer import Harmonizer

    cases = heldout_cases(n_anatomies=1, styles_per_anatomy=1, spacing=8.0)
    assert "labels" in cases[0]
    evaluation = HarmonizationEvaluation(
        cases, Harmonizer(_Identity(), device="cpu"), reference_volumes([0], spacing=8.0), tmp_path,
        name="identity net", comparison={"second net": Harmonizer(_Identity(), device="cpu")},
        stress=stress_cases(n_anatomies=1, spacing=8.0, styles=["t2-inverted-sharp"]),
        cross_style=three_style_cases(n_anatomies=1, spacing=8.0))
    results = evaluation.run()
    printed = capsys.readouterr().out
    for row in ("oracle: tissue LUT + bias", "oracle: + guided filter", "identity net", "second net",
                "histogram matching", "nyul-udupa", "t2-inverted-sharp", "pairwise SSIM"):
        assert row in printed, row
    none, net = results["methods"]["none"], results["methods"]["identity net"]
    assert net["ssim_mask"]["mean"] == pytest.approx(none["ssim_mask"]["mean"], abs=1e-6)
    assert results["methods"]["oracle: tissue LUT + bias"]["ssim_mask"]["mean"] > none["ssim_mask"]["mean"]
    assert results["cross_style_ssim"]["identity net"] == pytest.approx(results["cross_style_ssim"]["none"])
    assert set(results["real_scans"]) == {"identity net", "second net"}
    saved = json.loads((tmp_path / "harmonization_evaluation.json").read_text())
    assert saved["stress"]["n_cases"] == 1
    assert "grad corr" in format_anatomy_table(results, "held-out")


def test_methods_without_labels_get_no_oracle_rows():
    cases = [{k: v for k, v in c.items() if k != "labels"}
             for c in heldout_cases(n_anatomies=1, styles_per_anatomy=1, spacing=8.0)]
    evaluation = HarmonizationEvaluation(cases, None, reference_volumes([0], spacing=8.0), "unused")
    evaluation.generators = lambda: {"x": uses_case(lambda c: c["source"])}
    assert not any(name.startswith("oracle") for name in evaluation.methods())
