"""The pipeline's fallback mapping: a per-scan lookup table from the input to the harmonized intensities."""

from __future__ import annotations

import numpy as np
import torch

from sgad_med.transforms.scan_lut import apply_intensity_lut, fit_intensity_lut


def test_the_table_learns_a_non_monotonic_map_and_keeps_the_background():
    rng = np.random.default_rng(0)
    source = rng.uniform(0.1, 1.0, (30, 30, 6)).astype(np.float32)
    source[:5] = 0.0  # background
    target = np.where(source > 0.05, 1.0 - source, 0.0).astype(np.float32)  # a contrast inversion
    table = fit_intensity_lut(source, target, np.ones(6, bool))
    mapped = apply_intensity_lut(torch.from_numpy(source), table).numpy()
    assert np.abs(mapped - target)[5:].max() < 0.03
    assert np.array_equal(mapped[:5], source[:5])  # background never lifted


def test_too_few_trusted_voxels_give_no_table_and_the_input_is_kept():
    source = np.full((10, 10, 3), 0.5, np.float32)
    assert fit_intensity_lut(source, source, np.array([True, False, False])) is None
    kept = apply_intensity_lut(source, None)
    assert np.array_equal(kept.numpy(), source)


def test_only_trusted_slices_are_fitted_on():
    source = np.random.default_rng(1).uniform(0.1, 1, (40, 40, 4)).astype(np.float32)
    target = source * 0.5
    target[..., 3] = 1.0  # a wrecked slice: not trusted
    table = fit_intensity_lut(source, target, np.array([True, True, True, False]))
    mapped = apply_intensity_lut(source[..., 3], table).numpy()
    assert np.abs(mapped - 0.5 * source[..., 3]).max() < 0.02
