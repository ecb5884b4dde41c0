"""Slice artifacts: only reported slices change, they change visibly, severity is monotone, runs reproduce."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor, list_data_collate

from sgad_med.transforms import (
    ARTIFACT_KINDS,
    ARTIFACTS,
    ARTIFACTS_META_KEY,
    RandSliceArtifact,
    RandSliceArtifactd,
    SliceArtifact,
    SliceArtifactd,
    apply_slice_artifact,
    artifact_records,
    slice_labels,
)

AFFINE = torch.tensor(
    [[0.0, -0.8, 0.0, 10.0], [0.9, 0.0, 0.0, -20.0], [0.0, 0.0, 2.5, 5.0], [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64
)
DEPTH = 8


def phantom2d(h: int = 32, w: int = 32, shift: float = 0.0) -> np.ndarray:
    """An elliptical 'body' with smooth texture and two inserts, zero background, values in [0, 1]."""
    y, x = np.mgrid[:h, :w]
    y = (y - h / 2 + 0.5) / (h / 2)
    x = (x - w / 2 + 0.5) / (w / 2) + shift
    s = np.zeros((h, w))
    body = (y / 0.85) ** 2 + (x / 0.7) ** 2 < 1
    s[body] = 0.45 + 0.1 * np.sin(4 * x[body]) + 0.05 * np.cos(5 * y[body])
    s[(y / 0.3) ** 2 + ((x - 0.2) / 0.25) ** 2 < 1] = 0.8
    s[((y + 0.4) / 0.15) ** 2 + ((x + 0.3) / 0.15) ** 2 < 1] = 0.25
    return s.astype(np.float32)


def volume(channels: int = 1) -> MetaTensor:
    """``[C, 32, 32, 8]`` MetaTensor, slices slightly different from each other, with an affine."""
    vol = np.stack([phantom2d(shift=0.02 * k) for k in range(DEPTH)], axis=-1)[None]
    vol = np.concatenate([vol * (0.9 + 0.1 * c) for c in range(channels)], axis=0)
    return MetaTensor(torch.as_tensor(vol, dtype=torch.float32), affine=AFFINE.clone(), meta={"scan_id": "s-01"})


def slice_change(kind: str, severity: float, seed: int) -> float:
    s = phantom2d()
    return float(np.abs(ARTIFACTS[kind](s, severity, np.random.default_rng(seed)) - s).mean())


def test_registry_lists_all_kinds() -> None:
    assert tuple(ARTIFACTS) == ARTIFACT_KINDS
    assert len(ARTIFACT_KINDS) >= 17


@pytest.mark.parametrize("kind", ARTIFACT_KINDS)
def test_registry_function_is_deterministic_float32(kind: str) -> None:
    s = phantom2d()
    a = ARTIFACTS[kind](s, 0.5, np.random.default_rng(3))
    b = ARTIFACTS[kind](s, 0.5, np.random.default_rng(3))
    assert a.dtype == np.float32 and a.shape == s.shape
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0.0 and a.max() <= 1.0


@pytest.mark.parametrize("kind", ARTIFACT_KINDS)
def test_only_chosen_slices_change_and_visibly(kind: str) -> None:
    img = volume(channels=2)
    out = SliceArtifact(kind, slices=[1, 5], severity=0.5, seed=7)(img)
    assert isinstance(out, MetaTensor)
    assert out.dtype == torch.float32 and out.shape == img.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    for k in range(DEPTH):
        if k in (1, 5):
            diff = (out[..., k] - img[..., k]).abs()
            assert float(diff.mean()) > 0.01, f"{kind}: slice {k} mean change {float(diff.mean()):.4f}"
            assert float(diff.max()) > 0.1, f"{kind}: slice {k} max change {float(diff.max()):.4f}"
        else:
            assert torch.equal(out[..., k].as_tensor(), img[..., k].as_tensor()), f"{kind}: slice {k} changed"
    torch.testing.assert_close(out.affine, AFFINE)
    assert out.meta["scan_id"] == "s-01"


@pytest.mark.parametrize("kind", ARTIFACT_KINDS)
def test_severity_is_monotone(kind: str) -> None:
    seeds = range(6)
    changes = [np.mean([slice_change(kind, sev, seed) for seed in seeds]) for sev in (0.1, 0.5, 0.9)]
    assert changes[0] < changes[1] < changes[2], f"{kind}: {changes}"


@pytest.mark.parametrize("kind", ARTIFACT_KINDS)
def test_same_seed_same_result_channels_share_parameters(kind: str) -> None:
    img = volume(channels=2)
    a = SliceArtifact(kind, [3], 0.6, seed=11)(img)
    b = SliceArtifact(kind, [3], 0.6, seed=11)(img)
    assert torch.equal(a.as_tensor(), b.as_tensor())
    # channel 1 is 1.0x channel 0 scaled: the same parameters give the same single-channel result
    single = SliceArtifact(kind, [3], 0.6, seed=11)(img[1:])
    assert torch.equal(a[1:].as_tensor(), single.as_tensor())


def test_record_and_meta() -> None:
    img = volume()
    t = SliceArtifact("blob", slices=[6, -1, 2, 2], severity=0.4, seed=5)
    out = t(img)
    record = t.last_record
    assert record is not None
    assert record["kind"] == "blob" and record["slices"] == [2, 6, 7]
    assert record["severity"] == pytest.approx(0.4) and record["seed"] == 5
    assert len(record["params"]) == 3 and {"center", "sigma", "amplitude"} <= set(record["params"][0])
    assert artifact_records(out) == [record]
    assert ARTIFACTS_META_KEY not in img.meta  # the input's metadata is untouched
    out2 = SliceArtifact("shift", [0], 0.5, 1)(out)
    assert [r["kind"] for r in artifact_records(out2)] == ["blob", "shift"]
    assert len(artifact_records(out)) == 1
    np.testing.assert_array_equal(slice_labels(DEPTH, artifact_records(out2)), [1, 0, 1, 0, 0, 0, 1, 1])


def test_numpy_and_plain_tensor_inputs() -> None:
    arr = volume().numpy().astype(np.float64)
    out, record = apply_slice_artifact(arr, "motion", [4], 0.5, 2)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == arr.shape
    np.testing.assert_array_equal(np.delete(out, 4, axis=-1), np.delete(arr.astype(np.float32), 4, axis=-1))
    out_t = SliceArtifact("motion", [4], 0.5, 2)(torch.as_tensor(arr))
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    np.testing.assert_array_equal(out_t.numpy(), out)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "nope", "slices": [0]},
        {"kind": "spike", "slices": [8]},
        {"kind": "spike", "slices": [0], "severity": 1.5},
    ],
)
def test_bad_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        apply_slice_artifact(volume(), **{"severity": 0.5, "seed": 0, **kwargs})


def test_random_transform_records_and_twin_reproduces() -> None:
    img = volume()
    t = RandSliceArtifact(num_slices=(1, 3), severity=(0.3, 0.7))
    t.set_random_state(seed=42)
    out = t(img)
    rec = t.last_record
    assert rec is not None and rec["kind"] in ARTIFACT_KINDS
    assert 1 <= len(rec["slices"]) <= 3 and 0.3 <= rec["severity"] <= 0.7
    np.testing.assert_array_equal(t.last_labels, slice_labels(DEPTH, rec))
    twin = SliceArtifact(rec["kind"], rec["slices"], rec["severity"], rec["seed"])(img)
    assert torch.equal(out.as_tensor(), twin.as_tensor())
    changed = [k for k in range(DEPTH) if not torch.equal(out[..., k].as_tensor(), img[..., k].as_tensor())]
    assert changed == rec["slices"]
    # same random state, same result; a different one gives other draws
    t2 = RandSliceArtifact(num_slices=(1, 3), severity=(0.3, 0.7)).set_random_state(seed=42)
    assert torch.equal(t2(img).as_tensor(), out.as_tensor()) and t2.last_record == rec
    records = [RandSliceArtifact().set_random_state(seed=s) for s in range(5)]
    for r in records:
        r(img)
    assert len({(r.last_record["kind"], tuple(r.last_record["slices"])) for r in records}) > 1


def test_random_transform_kinds_prob_and_num_slices() -> None:
    img = volume()
    t = RandSliceArtifact(kinds="gibbs", num_slices=20, severity=0.5).set_random_state(seed=0)
    t(img)
    assert t.last_record["kind"] == "gibbs" and t.last_record["slices"] == list(range(DEPTH))
    off = RandSliceArtifact(prob=0.0).set_random_state(seed=0)
    out = off(img)
    assert off.last_record is None and not off.last_labels.any()
    assert torch.equal(out.as_tensor(), img.as_tensor()) and out.dtype == torch.float32
    torch.testing.assert_close(out.affine, AFFINE)
    with pytest.raises(ValueError):
        RandSliceArtifact(kinds=["spike", "bogus"])


def test_dictionary_form_labels_and_shared_draw() -> None:
    data = {"image": volume(), "other": volume(), "label": torch.zeros(1, 32, 32, DEPTH)}
    t = RandSliceArtifactd(keys=["image", "other"], kinds=["dropout", "rician"], num_slices=(2, 3))
    t.set_random_state(seed=3)
    out = t(data)
    rec = t.last_record
    assert rec is not None
    labels = out["image_slice_labels"]
    assert labels.dtype == np.float32 and labels.shape == (DEPTH,)
    np.testing.assert_array_equal(np.nonzero(labels)[0], rec["slices"])
    np.testing.assert_array_equal(out["other_slice_labels"], labels)
    assert torch.equal(out["image"].as_tensor(), out["other"].as_tensor())  # same draw for all keys
    assert "label_slice_labels" not in out and out["label"] is data["label"]
    changed = [k for k in range(DEPTH) if not torch.equal(out["image"][..., k], data["image"][..., k])]
    assert changed == rec["slices"]
    torch.testing.assert_close(out["image"].affine, AFFINE)
    again = RandSliceArtifactd(keys=["image", "other"], kinds=["dropout", "rician"], num_slices=(2, 3))
    again.set_random_state(seed=3)
    assert torch.equal(again(data)["image"].as_tensor(), out["image"].as_tensor())


def test_dictionary_forms_accumulate_labels_and_prob_zero() -> None:
    data = {"image": volume()}
    first = SliceArtifactd("image", kind="zipper", slices=[0], severity=0.5, seed=1)(data)
    np.testing.assert_array_equal(first["image_slice_labels"], [1, 0, 0, 0, 0, 0, 0, 0])
    second = SliceArtifactd("image", kind="checkerboard", slices=[4], severity=0.5, seed=1)(first)
    np.testing.assert_array_equal(second["image_slice_labels"], [1, 0, 0, 0, 1, 0, 0, 0])
    assert len(artifact_records(second["image"])) == 2
    off = RandSliceArtifactd("image", prob=0.0).set_random_state(seed=0)(data)
    np.testing.assert_array_equal(off["image_slice_labels"], np.zeros(DEPTH, dtype=np.float32))
    assert torch.equal(off["image"].as_tensor(), data["image"].as_tensor())


def test_batches_of_corrupted_items_collate() -> None:
    t = RandSliceArtifactd("image", num_slices=(1, 3)).set_random_state(seed=0)
    items = [t({"image": volume()}) for _ in range(3)]
    batch = list_data_collate(items)
    assert batch["image"].shape == (3, 1, 32, 32, DEPTH) and batch["image_slice_labels"].shape == (3, DEPTH)
    for item in items:
        np.testing.assert_array_equal(item["image_slice_labels"], slice_labels(DEPTH, artifact_records(item["image"])))
