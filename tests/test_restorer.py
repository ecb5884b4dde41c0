"""SliceRestorer: only the requested slices change, bit for bit elsewhere; boolean masks; bad indices; bundles."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from sgad_med.bundles import BundleError
from sgad_med.io import load_scan
from sgad_med.networks import SliceRestorationNet
from sgad_med.restorer import SliceRestorer
from tests.conftest import REPO

TINY = (4, 4, 8, 8, 16, 4)


@pytest.fixture
def restorer() -> SliceRestorer:
    torch.manual_seed(0)
    return SliceRestorer(SliceRestorationNet(context=2, features=TINY), device="cpu", batch_size=2)


def _changed(a: torch.Tensor, b: torch.Tensor) -> list[int]:
    return [k for k in range(a.shape[-1]) if not torch.equal(a[..., k], b[..., k])]


def test_only_the_requested_slices_change(restorer, nifti_file):
    scan = load_scan(nifti_file[0])
    before = scan.image.as_tensor().clone()
    depth = before.shape[-1]
    out = restorer(scan, slices=[1, depth - 2])
    after = out.image.as_tensor()
    assert after.shape == before.shape and after.dtype == before.dtype
    assert set(_changed(before, after)) == {1, depth - 2}
    assert torch.equal(scan.image.as_tensor(), before), "the input scan is never modified"
    assert np.allclose(out.affine, scan.affine)


def test_a_boolean_mask_and_negative_indices_select_the_same_slices(restorer, nifti_file):
    scan = load_scan(nifti_file[0])
    depth = scan.image.shape[-1]
    mask = np.zeros(depth, dtype=bool)
    mask[[0, depth - 1]] = True
    by_mask = restorer(scan, slices=mask).image.as_tensor()
    by_index = restorer(scan, slices=[0, -1]).image.as_tensor()
    assert torch.equal(by_mask, by_index)
    assert set(_changed(scan.image.as_tensor(), by_mask)) == {0, depth - 1}


def test_no_slices_returns_an_unchanged_copy(restorer, nifti_file):
    scan = load_scan(nifti_file[0])
    out = restorer(scan, slices=[])
    assert torch.equal(out.image.as_tensor(), scan.image.as_tensor())


def test_bad_indices_raise(restorer, nifti_file):
    scan = load_scan(nifti_file[0])
    depth = scan.image.shape[-1]
    with pytest.raises(ValueError, match="slice indices"):
        restorer(scan, slices=[depth])
    with pytest.raises(ValueError, match="slice indices"):
        restorer(scan, slices=[-depth - 1])


def test_restore01_restores_from_the_neighbours(restorer):
    volume = torch.rand(20, 24, 7)
    out = restorer.restore01(volume, [3])
    assert _changed(volume, out) == [3]
    assert out.min() >= 0 and out.max() <= 1


def test_from_bundle_loads_weights_and_refuses_a_bundle_without_them(tmp_path, nifti_file):
    bundle = tmp_path / "slice_restoration"
    shutil.copytree(REPO / "bundles" / "slice_restoration" / "configs", bundle / "configs")
    with pytest.raises(BundleError, match="model.pt"):
        SliceRestorer.from_bundle(bundle, device="cpu")
    (bundle / "models").mkdir()
    torch.save(SliceRestorationNet(context=2, align=True).state_dict(), bundle / "models" / "model.pt")
    restorer = SliceRestorer.from_bundle(bundle, device="cpu")
    assert restorer.context == 2
    scan = load_scan(nifti_file[0])
    assert _changed(scan.image.as_tensor(), restorer(scan, slices=[2]).image.as_tensor()) == [2]
