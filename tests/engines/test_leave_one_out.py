from __future__ import annotations

import json

from sgad_med.data.corrupted import CorruptedSlices
from sgad_med.engines.leave_one_out import format_leave_one_out, leave_one_type_out
from sgad_med.transforms.artifacts import ARTIFACT_KINDS
from tests.conftest import SAMPLE_DATA


def _set(seeds, split="train", **kwargs) -> CorruptedSlices:
    return CorruptedSlices(seeds, styles_per_anatomy=1, slices_per_volume=4, split=split, spacing=8.0,
                           mni_dir=SAMPLE_DATA / "mni", **kwargs)


def test_each_fold_trains_without_its_kind_and_is_scored_on_it_only(tmp_path, monkeypatch):
    seen_train_kinds, seen_test_kinds = [], []
    original = CorruptedSlices.with_kinds

    def spy(self, kinds, seed=None):
        (seen_test_kinds if self.split == "heldout" else seen_train_kinds).append(list(kinds))
        return original(self, kinds, seed)

    monkeypatch.setattr(CorruptedSlices, "with_kinds", spy)
    train = _set([0, 1])
    results = leave_one_type_out(
        train, _set([920, 921], corrupt_fraction=0.3, redraw=False), _set([10000, 10001], split="heldout",
                                                                           severity=0.5, redraw=False),
        {"init_features": 4, "growth_rate": 4, "block_config": (1, 1)}, kinds=["spike", "blob"], max_epochs=1,
        output_dir=tmp_path,
    )
    assert list(results["folds"]) == ["spike", "blob"]
    assert seen_test_kinds == [["spike"], ["blob"]]
    for left_out, kinds in zip(["spike", "spike", "blob", "blob"], seen_train_kinds):
        assert left_out not in kinds and len(kinds) == len(ARTIFACT_KINDS) - 1
    for fold in results["folds"].values():
        assert 0.0 <= fold["auroc"] <= 1.0 and fold["n_corrupted"] > 0 and fold["n_clean"] > 0
    assert train._stacks, "folds share the rendered clean slices"
    saved = json.loads((tmp_path / "leave_one_out.json").read_text())
    assert saved["mean_auroc"] == results["mean_auroc"]
    assert "mean" in format_leave_one_out(results)
