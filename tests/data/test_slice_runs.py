"""Scans with every slice labelled: runs, clean slices beside damage, near-empty end slices, the truth per slice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgad_med.data.slice_runs import (
    CLEAN,
    SliceRunVolumes,
    apply_damage_layout,
    distance_to_damage,
    draw_damage_layout,
)
from sgad_med.transforms.artifacts import ARTIFACT_KINDS


def _runs(damaged: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of every run of True."""
    runs, start = [], None
    for k, d in enumerate(np.r_[damaged, False]):
        if d and start is None:
            start = k
        elif not d and start is not None:
            runs.append((start, k - start))
            start = None
    return runs


def test_distance_to_damage():
    damaged = np.array([0, 0, 1, 0, 0, 0, 1, 1], bool)
    assert distance_to_damage(damaged).tolist() == [2, 1, 0, 1, 2, 1, 0, 0]
    assert distance_to_damage(np.zeros(4, bool)).tolist() == [4, 4, 4, 4]


def test_layouts_hold_runs_of_one_kind_sandwiched_clean_slices_and_damaged_ends():
    layouts = [draw_damage_layout(60, np.random.default_rng(i), density=0.3) for i in range(40)]
    lengths, sandwiched, ends = [], 0, 0
    for kind, severity in layouts:
        damaged = kind != CLEAN
        assert abs(damaged.mean() - 0.3) <= 0.1
        assert (severity[damaged] > 0).all() and (severity[~damaged] == 0).all()
        for start, length in _runs(damaged):
            lengths.append(length)
            assert length <= 8 or len(set(kind[start : start + length])) > 1  # touching runs of other kinds
        # a clean slice with damage one or two slices away on both sides
        for k in np.flatnonzero(~damaged):
            left, right = damaged[max(k - 2, 0) : k], damaged[k + 1 : k + 3]
            sandwiched += bool(left.any() and right.any())
        ends += bool(damaged[0] or damaged[-1])
    assert min(lengths) == 1 and max(lengths) >= 8 and np.mean([n >= 2 for n in lengths]) > 0.5
    assert sandwiched > 20 and ends > 5


def test_density_regimes_include_clean_scans_sparse_damage_and_up_to_40_percent():
    fractions = [np.mean(draw_damage_layout(100, np.random.default_rng(i))[0] != CLEAN) for i in range(200)]
    fractions = np.array(fractions)
    assert (fractions == 0).mean() > 0.05  # clean scans
    assert ((fractions > 0) & (fractions <= 0.1)).mean() > 0.2  # about 5 %
    assert fractions.max() >= 0.35 and fractions.max() <= 0.5


def test_candidates_and_kinds_are_respected():
    candidates = np.zeros(30, bool)
    candidates[10:20] = True
    kind, _ = draw_damage_layout(30, np.random.default_rng(0), kinds=["spike"], density=0.5, candidates=candidates)
    assert set(np.flatnonzero(kind != CLEAN)) <= set(range(10, 20))
    assert set(kind[kind != CLEAN]) == {ARTIFACT_KINDS.index("spike")}
    with pytest.raises(ValueError, match="kinds"):
        draw_damage_layout(30, np.random.default_rng(0), kinds=["nope"])


def test_apply_labels_only_slices_the_artifact_changed_and_leaves_the_rest_bit_for_bit():
    rng = np.random.default_rng(0)
    volume = np.zeros((16, 16, 6), np.float32)
    volume[4:12, 4:12, 1:] = rng.uniform(0.3, 0.9, (8, 8, 5))  # slice 0 empty
    kind = np.full(6, CLEAN)
    kind[[0, 2, 3]] = ARTIFACT_KINDS.index("signal_loss")  # signal loss on an empty slice changes nothing
    severity = np.where(kind != CLEAN, 0.5, 0.0).astype(np.float32)
    damaged, label = apply_damage_layout(volume, kind, severity, np.random.default_rng(1))
    assert label.tolist() == [0, 0, 1, 1, 0, 0]
    untouched = label == 0
    assert np.array_equal(damaged[..., untouched], volume[..., untouched])
    assert not np.array_equal(damaged[..., 2], volume[..., 2])


@pytest.fixture(scope="module")
def volumes():
    return SliceRunVolumes(range(0, 6), spacing=8.0, whole_fraction=1.0, density=0.3, redraw=False)


def test_items_label_every_slice_and_leave_clean_slices_untouched(volumes):
    seen_adjacent = seen_damaged_end = seen_clean_end = 0
    for i in range(len(volumes)):
        item = volumes[i]
        clean, foreground = volumes.clean_volume(i)
        depth = clean.shape[-1]
        assert item["image"].shape == (depth, *clean.shape[:2]) and item["label"].shape == (depth,)
        for key in ("kind", "severity", "foreground", "weight"):
            assert item[key].shape == (depth,), key
        label = item["label"].numpy() > 0
        assert ((item["kind"].numpy() != CLEAN) == label).all()
        image = item["image"].numpy()
        reference = clean.permute(2, 0, 1).numpy()
        assert np.array_equal(image[~label], reference[~label])  # clean slices, neighbours of damage included
        assert all(not np.array_equal(image[k], reference[k]) for k in np.flatnonzero(label))
        near = (distance_to_damage(label) <= 2) & ~label
        seen_adjacent += int(near.sum())
        assert (item["weight"].numpy()[near] == volumes.neighbour_weight).all()
        end = (foreground > 0) & (foreground < 0.1)
        seen_damaged_end += int((end & label).sum())
        seen_clean_end += int((end & ~label).sum())
        assert not item["truncated"].any() and (item["weight"] > 0).all()
    assert seen_adjacent > 0 and seen_damaged_end > 0 and seen_clean_end > 0


def test_fixed_items_repeat_and_training_items_are_redrawn():
    fixed = SliceRunVolumes(range(0, 2), spacing=8.0, redraw=False, density=0.3)
    assert torch.equal(fixed[0]["image"], fixed[0]["image"])
    fresh = SliceRunVolumes(range(0, 2), spacing=8.0, redraw=True, density=0.3, whole_fraction=1.0)
    assert not torch.equal(fresh[0]["label"], fresh[0]["label"]) or not torch.equal(fresh[0]["image"],
                                                                                      fresh[0]["image"])


def test_cut_runs_carry_no_loss_weight_at_their_cut_ends():
    cut = SliceRunVolumes(range(0, 4), spacing=8.0, whole_fraction=0.0, min_slices=8, max_slices=10, margin=2,
                          zoom_fraction=1.0, zoom=(1.5, 1.5), shift_fraction=1.0)
    for i in range(4):
        item = cut[i]
        depth = item["label"].shape[0]
        assert 8 <= depth <= 10 and item["image"].shape[1] > cut.clean_volume(i)[0].shape[0]  # zoomed in
        start_cut, end_cut = item["truncated"].tolist()
        if start_cut:
            assert (item["weight"][:2] == 0).all()
        if end_cut:
            assert (item["weight"][-2:] == 0).all()


def test_some_items_are_cut_in_sagittal_or_coronal_slices_with_their_own_head_fractions():
    axial = SliceRunVolumes(range(0, 6), spacing=8.0, whole_fraction=1.0, density=0.3, redraw=False)
    planes = SliceRunVolumes(range(0, 6), spacing=8.0, whole_fraction=1.0, density=0.3, redraw=False,
                             plane_fraction=1.0)
    shapes = set()
    for i in range(len(planes)):
        clean, _ = planes.clean_volume(i)
        item = planes[i]
        depth = item["image"].shape[0]
        assert depth in (clean.shape[0], clean.shape[1]), "slices along R (sagittal) or A (coronal)"
        shapes.add(depth)
        axis = 0 if depth == clean.shape[0] and depth != clean.shape[1] else 1
        truth = (np.moveaxis(planes.generator.pair(planes.anatomy_seed(i), style_seed=i)["target"], axis, -1) > 0.05)
        np.testing.assert_allclose(item["foreground"].numpy(), truth.mean(axis=(0, 1)), atol=1e-6)
        assert item["foreground"][0] < 0.05, "the first sagittal or coronal slice is outside the head"
    assert len(shapes) == 2, "both planes occur"
    # plane_fraction 0 keeps the axial items exactly as they were
    assert all(axial[i]["image"].shape[0] == axial.clean_volume(i)[0].shape[-1] for i in range(len(axial)))
