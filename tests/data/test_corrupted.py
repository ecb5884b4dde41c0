from __future__ import annotations

import pytest
import torch

from sgad_med.data.corrupted import CLEAN, CorruptedSlices
from sgad_med.transforms.artifacts import ARTIFACT_KINDS
from sgad_med.transforms.slices import pad_to_multiple
from tests.conftest import SAMPLE_DATA

MNI = SAMPLE_DATA / "mni"


def _dataset(**kwargs) -> CorruptedSlices:
    options = dict(anatomy_seeds=[0], styles_per_anatomy=2, slices_per_volume=6, spacing=8.0, mni_dir=MNI)
    options.update(kwargs)
    return CorruptedSlices(**options)


def test_items_carry_consistent_truth():
    dataset = _dataset(corrupt_fraction=0.5, context=1)
    item = dataset[0]
    n = item["image"].shape[0]
    assert item["image"].shape[1] == 3 and item["clean"].shape == (n, 1, *item["image"].shape[2:])
    for k in range(n):
        centre_changed = not torch.equal(item["image"][k, 1], item["clean"][k, 0])
        if item["label"][k, 0] == 1:
            assert item["kind"][k] >= 0 and item["severity"][k] > 0
        else:
            assert item["kind"][k] == CLEAN and not centre_changed
    assert (item["label"][:, 0] == 1).sum() >= 1 and (item["label"][:, 0] == 0).sum() >= 1


def test_only_the_requested_kinds_are_drawn():
    dataset = _dataset(corrupt_fraction=1.0, kinds=["spike", "blob"])
    kinds = torch.cat([dataset[i]["kind"] for i in range(len(dataset))])
    assert set(kinds.tolist()) <= {ARTIFACT_KINDS.index("spike"), ARTIFACT_KINDS.index("blob")}
    with pytest.raises(ValueError, match="kinds"):
        _dataset(kinds=["not-an-artifact"])


def test_fixed_sets_repeat_and_training_sets_redraw_damage():
    fixed = _dataset(redraw=False, corrupt_fraction=1.0)
    assert torch.equal(fixed[0]["image"], fixed[0]["image"])
    fresh = _dataset(redraw=True, corrupt_fraction=1.0)
    first, second = fresh[0]["image"], fresh[0]["image"]
    assert not torch.equal(first, second)
    assert torch.equal(_dataset(redraw=True, corrupt_fraction=1.0)[0]["image"], first), "deterministic per seed"


def test_damaged_neighbours_leave_the_centre_truth_alone():
    dataset = _dataset(corrupt_fraction=0.0, neighbour_fraction=1.0, context=2)
    item = dataset[1]
    assert (item["label"] == 0).all()
    assert torch.equal(item["image"][:, 2:3], item["clean"])
    clean = pad_to_multiple(dataset.clean_stacks(1), 16)[0]
    assert item["image"].shape == clean.shape
    assert not torch.equal(item["image"][:, [0, 1, 3, 4]], clean[:, [0, 1, 3, 4]])


def test_damage_stays_inside_the_slice_and_padding_stays_zero():
    dataset = _dataset(corrupt_fraction=1.0, kinds=["gibbs", "spike", "motion"], context=1)
    item = dataset[0]
    height, width = dataset.clean_stacks(0).shape[-2:]
    (left, _right, top, _bottom) = pad_to_multiple(dataset.clean_stacks(0), 16)[1]
    border = torch.ones_like(item["image"][0, 0], dtype=torch.bool)
    border[top : top + height, left : left + width] = False
    assert (item["image"][:, :, border] == 0).all(), "k-space damage must not ring into the padding"
