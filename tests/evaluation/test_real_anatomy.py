"""The real-scan anatomy check of the pipeline evaluation: corrected keeps the input's edges, or it is reported."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgad_med.evaluation.real_anatomy import evaluate_real_anatomy, format_real_anatomy, real_anatomy_scans
from sgad_med.pipeline import SGADPipeline


class _Harmonizer:
    def __init__(self, shift: int = 0) -> None:
        self.shift, self.batch_size, self.progress, self.device = shift, 4, False, torch.device("cpu")

    def harmonize01(self, volume01):
        return torch.roll(volume01, self.shift, dims=0) if self.shift else volume01**0.7  # a new contrast


class _Detector:
    threshold, batch_size, progress, device = 0.5, 4, False, torch.device("cpu")

    def score01(self, volume01, harmonized=False):
        return np.zeros(volume01.shape[-1], dtype=np.float32)


def test_real_scans_are_found_offline(tmp_path):
    names = [name for name, _, _ in real_anatomy_scans(tmp_path)]
    assert any("anatomical" in n for n in names) and any("example4d" in n for n in names)
    assert any("minc1_1_scale" in n for n in names), "MINC1 needs no extra package"


def test_a_contrast_change_keeps_the_anatomy_and_moved_anatomy_is_caught(tmp_path):
    scans = [s for s in real_anatomy_scans(tmp_path) if "anatomical" in s[0]]
    keeps = SGADPipeline(_Harmonizer(), _Detector(), None, restore_policy="none", device=None)
    row = evaluate_real_anatomy(keeps, scans)[0]
    assert row["tissue_slices"] > 10 and row["grad_corr_min"] > 0.9 and row["slices_below"] == 0
    moves = SGADPipeline(_Harmonizer(shift=4), _Detector(), None, restore_policy="none", device=None)
    moved = evaluate_real_anatomy(moves, scans)[0]
    assert moved["grad_corr_min"] < 0.9 and moved["slices_below"] > 0
    assert "anatomical" in format_real_anatomy([row, moved])
    assert row["flagged"] == 0 and row["fallback"] == 0


@pytest.mark.parametrize("scope", ["scan"])
def test_the_fallback_scope_is_reported(tmp_path, scope):
    class _AllFlagged(_Detector):
        def score01(self, volume01, harmonized=False):
            return np.full(volume01.shape[-1], 1.0 if harmonized else 0.0, dtype=np.float32)

    scans = [s for s in real_anatomy_scans(tmp_path) if "anatomical" in s[0]]
    class _Restorer:
        batch_size, progress, device = 4, False, torch.device("cpu")

    pipeline = SGADPipeline(_Harmonizer(shift=4), _AllFlagged(), _Restorer(), device=None)
    row = evaluate_real_anatomy(pipeline, scans)[0]
    assert row["fallback_scope"] == scope and row["grad_corr_min"] > 0.99  # the input itself
