"""Untrusted files and numerically hostile scans: a pickle that runs code is refused; odd volumes give finite
outputs or a clear error, never NaN in a written file."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from sgad_med.bundles import BundleError, load_bundle_network
from sgad_med.cli import main
from tests.tiny_bundles import make_tiny_bundles


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return make_tiny_bundles(tmp_path_factory.mktemp("tiny") / "bundles")


class _Payload:
    """Unpickled with full pickle, this writes a file: what a malicious checkpoint would do."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("name", ["style_harmonization", "slice_anomaly_detection", "slice_restoration"])
def test_a_checkpoint_that_runs_code_is_refused_and_runs_nothing(tmp_path, bundles, name):
    bundle = tmp_path / name
    shutil.copytree(bundles / name, bundle)
    marker = tmp_path / "pwned"
    torch.save({"model": _Payload(str(marker))}, bundle / "models" / "model.pt")
    with pytest.raises(BundleError, match="cannot be loaded as weights") as info:
        load_bundle_network(bundle, "cpu")
    assert "model.pt" in str(info.value)
    assert not marker.exists(), "the pickle's code ran"
    # the pipeline's loaders go through the same function: the batch refuses to start
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(np.ones((20, 18, 6), np.float32), np.eye(4)), tmp_path / "in" / "scan.nii.gz")
    root = _with(bundles, bundle, tmp_path)
    code = main(["run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--bundles", str(root), "--quiet"])
    assert code == 2 and not marker.exists()


def _with(bundles, replaced, tmp_path):
    """A bundles folder where one bundle is ``replaced``."""
    root = tmp_path / "bundles"
    root.mkdir(exist_ok=True)
    for bundle in bundles.iterdir():
        target = root / bundle.name
        if not target.exists():
            target.symlink_to(replaced if bundle.name == replaced.name else bundle)
    return root


CASES = {
    "all_zero": (np.zeros((20, 18, 6)), (1.0, 1.0, 1.0)),
    "constant": (np.full((20, 18, 6), 300.0), (1.0, 1.0, 1.0)),
    "constant_slices": (np.repeat(np.arange(6.0)[None, None] * 100, 20 * 18, 0).reshape(20, 18, 6), (1, 1, 1)),
    "extreme_hu": (np.where(np.indices((20, 18, 6))[0] % 2, 32767.0, -32768.0), (1.0, 1.0, 1.0)),
    "one_slice": (np.random.default_rng(0).random((20, 18, 1)) * 900, (1.0, 1.0, 3.0)),
    "two_slices": (np.random.default_rng(1).random((20, 18, 2)) * 900, (1.0, 1.0, 3.0)),
    "anisotropic": (np.random.default_rng(2).random((20, 18, 6)) * 900, (0.2, 0.2, 40.0)),
    "tiny_values": (np.random.default_rng(3).random((20, 18, 6)) * 1e-30, (1.0, 1.0, 1.0)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_volumes_give_finite_outputs_or_a_clear_error(tmp_path, bundles, case):
    data, spacing = CASES[case]
    inputs = tmp_path / "in"
    inputs.mkdir()
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.diag([*spacing, 1.0])), inputs / f"{case}.nii.gz")
    out = tmp_path / "out"
    code = main(["run", str(inputs), "--out", str(out), "--bundles", str(bundles), "--quiet"])
    (entry,) = json.loads((out / "manifest.json").read_text())["scans"]
    if entry["status"] == "ok":
        assert code == 0
        for name in ("harmonized.nii.gz", "corrected.nii.gz"):
            written = np.asanyarray(nib.load(out / case / name).dataobj)
            assert written.shape == data.shape and np.isfinite(written).all(), name
        report = json.loads((out / case / "report.json").read_text())
        assert all(row["score"] is None or 0.0 <= row["score"] <= 1.0 for row in report["slices"])
    else:
        assert entry["status"] in ("failed", "skipped") and f"{case}.nii.gz" in entry["error"]
        assert not (out / case).exists()


def test_nan_and_inf_voxels_are_a_clear_error(tmp_path, bundles):
    data = np.random.default_rng(0).random((20, 18, 6)).astype(np.float32)
    data[3, 4, 2], data[5, 5, 5] = np.nan, np.inf
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "in" / "nan.nii.gz")
    assert main(["run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--bundles", str(bundles),
                 "--quiet"]) == 1
    (entry,) = json.loads((tmp_path / "out" / "manifest.json").read_text())["scans"]
    assert entry["status"] == "failed" and "nan.nii.gz" in entry["error"] and "NaN" in entry["error"]
