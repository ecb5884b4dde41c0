"""The detection evaluation by damage layout and group of clean slices: it tells the groups apart and catches a
detector that flags the neighbours of damage."""

from __future__ import annotations

import numpy as np
import pytest

from sgad_med.evaluation.slice_groups import (
    HighFrequencyBaseline,
    TrivialBaseline,
    clean_groups,
    evaluate_slice_groups,
    evaluation_layout,
    format_slice_groups_table,
)


def test_clean_groups_split_isolated_adjacent_and_end_slices():
    damaged = np.zeros(12, bool)
    damaged[[5, 6]] = True
    foreground = np.full(12, 0.5)
    foreground[[0, 11]] = 0.05  # thin ends
    foreground[1] = 0.0  # an empty slice belongs to no group
    groups = clean_groups(damaged, foreground)
    assert np.flatnonzero(groups["adjacent"]).tolist() == [3, 4, 7, 8]
    assert np.flatnonzero(groups["isolated"]).tolist() == [2, 9, 10]
    assert np.flatnonzero(groups["end"]).tolist() == [0, 11]
    assert not any(g[damaged].any() for g in groups.values())


@pytest.mark.parametrize("density", [0.05, 0.25, 0.4])
def test_isolated_layouts_never_touch_and_contiguous_ones_come_in_runs_of_2_to_8(density):
    candidates = np.ones(80, bool)
    for seed in range(10):
        isolated = evaluation_layout(candidates, density, "isolated", np.random.default_rng(seed))
        assert not (isolated[1:] & isolated[:-1]).any()
        assert abs(isolated.sum() - round(density * 80)) <= 1
        contiguous = evaluation_layout(candidates, density, "contiguous", np.random.default_rng(seed))
        edges = np.flatnonzero(np.diff(np.r_[0, contiguous.astype(int), 0]))
        lengths = edges[1::2] - edges[::2]
        assert lengths.min() >= 2 and lengths.max() <= 8
        assert contiguous.sum() >= round(density * 80) - 1
    with pytest.raises(ValueError, match="layout"):
        evaluation_layout(candidates, 0.1, "scattered", np.random.default_rng(0))


def _smooth_volume(depth: int = 30, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-1:1:32j, -1:1:32j]
    head = (x**2 + y**2 < 0.7).astype(np.float32)
    volume = np.stack([head * (0.5 + 0.1 * np.sin(k / 5.0)) for k in range(depth)], axis=-1)
    volume += rng.normal(0, 0.002, volume.shape).astype(np.float32) * head[..., None]
    foreground = np.full(depth, head.mean())
    foreground[[0, -1]] = 0.05
    return {"name": f"smooth {seed}", "volume": np.clip(volume, 0, 1).astype(np.float32), "foreground": foreground}


class _Oracle:
    """Scores a slice by how far it is from the clean volume it was made from (the truth, for the test)."""

    def __init__(self, clean: dict[int, np.ndarray], spread: bool = False) -> None:
        self.clean, self.spread = clean, spread

    def score01(self, volume01: np.ndarray, harmonized: bool = False) -> np.ndarray:
        reference = self.clean[volume01.shape[-1]]
        damage = (np.abs(volume01 - reference).mean(axis=(0, 1)) > 0).astype(float)
        if self.spread:  # "differs from its neighbours": damage also raises the neighbours' scores
            damage = np.maximum(damage, np.convolve(damage, [1.0, 1.0, 1.0], mode="same").clip(0, 1))
        return damage


def test_a_perfect_detector_has_no_false_positives_and_finds_every_damaged_slice():
    item = _smooth_volume()
    methods = {"oracle": _Oracle({30: item["volume"]}), "trivial": TrivialBaseline()}
    results = evaluate_slice_groups(methods, {"oracle": 0.5, "trivial": 1.0}, [item], kinds=["spike", "bias"])
    assert [row["name"] for row in results["settings"]][0] == "clean"
    for row in results["settings"]:
        assert all(row["oracle"][g] in (0.0, None) for g in ("isolated", "adjacent", "end"))
        if row["name"] != "clean":
            assert row["oracle"]["sensitivity"] == 1.0 and row["trivial"]["sensitivity"] == 0.0
    assert results["overall"]["oracle"]["auroc"] == 1.0 and results["overall"]["trivial"]["auroc"] == 0.5
    assert results["per_kind"]["spike"]["oracle"]["sensitivity"] == 1.0
    table = format_slice_groups_table(results, "test")
    assert "contiguous 25%" in table and "adjacent" in table and "spike" in table


def test_a_detector_that_flags_the_neighbours_of_damage_shows_in_the_adjacent_group_only():
    item = _smooth_volume()
    methods = {"spreading": _Oracle({30: item["volume"]}, spread=True)}
    results = evaluate_slice_groups(methods, {"spreading": 0.5}, [item], kinds=["spike"], densities=[0.25])
    for row in results["settings"][1:]:
        assert row["spreading"]["adjacent"] > 0.3  # one slice on each side of every damaged one
        assert row["spreading"]["isolated"] in (0.0, None)


def test_the_high_frequency_baseline_flags_a_noisy_slice_among_smooth_ones():
    item = _smooth_volume()
    noisy = item["volume"].copy()
    noisy[..., 12] += np.random.default_rng(1).normal(0, 0.1, noisy.shape[:2]).astype(np.float32)
    baseline = HighFrequencyBaseline(window=5).fit_threshold(
        [{"volume": item["volume"], "head": item["foreground"] > 0.1}], fpr=0.0)
    scores = baseline.score01(noisy)
    assert scores.argmax() == 12 and scores[12] >= baseline.threshold
