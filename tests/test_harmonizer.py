"""Harmonizer: whole scans through a generator, in batches, keeping geometry and units."""

from __future__ import annotations

import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

import sgad_med
from sgad_med.bundles import BundleError, load_bundle_network
from sgad_med.harmonizer import Harmonizer
from sgad_med.networks import EdgePreservingGenerator, HarmonizationGenerator
from tests.bundles.conftest import HARMONIZATION
from tests.conftest import SAMPLE_DATA


class RecordingNetwork(nn.Module):
    """A generator stand-in that doubles the centre slice and records the batch sizes it was given."""

    context = 1

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        self.batches.append(stack.shape[0])
        return stack[:, 1:2] * 0.5


@pytest.fixture
def tmp_bundle(tmp_path):
    """A copy of the style_harmonization bundle with freshly initialised (untrained) weights."""
    bundle = tmp_path / "style_harmonization"
    shutil.copytree(HARMONIZATION / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    torch.manual_seed(0)
    torch.save(EdgePreservingGenerator(context=1).state_dict(), bundle / "models" / "model.pt")
    torch.save(HarmonizationGenerator(context=1, features=(16, 16, 32, 64, 128, 16)).state_dict(),
               bundle / "models" / "unet_model.pt")
    return bundle


def test_harmonizer_keeps_geometry_and_units_and_streams_in_batches(tmp_path):
    scan = sgad_med.load_scan(SAMPLE_DATA / "synthetic_mr.nii.gz")
    network = RecordingNetwork()
    out = Harmonizer(network, device="cpu", batch_size=16)(scan)
    assert out.shape == scan.shape
    np.testing.assert_allclose(out.affine, scan.affine)
    assert max(network.batches) <= 16 and sum(network.batches) == scan.shape[2]
    # the stand-in halves the normalized image, so the output stays in the input's units and range
    assert float(out.image.min()) >= float(scan.image.min()) - 1e-3
    assert float(out.image.max()) <= float(scan.image.max()) + 1e-3
    assert float(out.image.max()) < 0.7 * float(scan.image.max())
    sgad_med.save_scan(out, tmp_path / "harmonized.nii.gz")
    written, source = nib.load(tmp_path / "harmonized.nii.gz"), nib.load(SAMPLE_DATA / "synthetic_mr.nii.gz")
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)


def test_from_bundle_loads_weights_onto_cpu(tmp_bundle):
    harmonizer = Harmonizer.from_bundle(tmp_bundle, device="cpu", batch_size=8)
    scan = sgad_med.load_scan(SAMPLE_DATA / "synthetic_mr_series")
    out = harmonizer(scan)
    assert out.shape == scan.shape and out.modality == "MR"
    assert torch.isfinite(out.image).all()


def test_the_previous_unet_is_selected_by_the_overlay_config(tmp_bundle):
    edge = Harmonizer.from_bundle(tmp_bundle, device="cpu")
    unet = Harmonizer.from_bundle(tmp_bundle, device="cpu", overlays=["unet_generator.json"])
    assert isinstance(edge.network, EdgePreservingGenerator) and isinstance(unet.network, HarmonizationGenerator)
    saved = torch.load(tmp_bundle / "models" / "unet_model.pt", weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in unet.network.state_dict().items())
    with pytest.raises(BundleError, match="no configs/missing.json"):
        Harmonizer.from_bundle(tmp_bundle, device="cpu", overlays=["missing.json"])


def test_missing_or_mismatched_weights_are_clear_errors(tmp_bundle):
    (tmp_bundle / "models" / "model.pt").unlink()
    with pytest.raises(BundleError, match="weights file not found"):
        load_bundle_network(tmp_bundle, "cpu")
    torch.save(HarmonizationGenerator(features=(4, 4, 8, 8, 16, 4)).state_dict(), tmp_bundle / "models" / "model.pt")
    with pytest.raises(BundleError, match="does not fit"):
        load_bundle_network(tmp_bundle, "cpu")


def test_bundle_inference_runs_with_monai_bundle_run(tmp_bundle, tmp_path):
    data = tmp_path / "scans"
    data.mkdir()
    shutil.copy2(SAMPLE_DATA / "synthetic_mr.nii.gz", data)
    (data / "broken.nii.gz").write_bytes(b"not a scan")  # one bad scan never stops the rest
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(tmp_bundle / "configs" / "inference.json"),
         "--bundle_root", str(tmp_bundle), "--dataset_dir", str(data), "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    written = nib.load(tmp_path / "out" / "synthetic_mr_harmonized.nii.gz")
    assert written.shape == nib.load(SAMPLE_DATA / "synthetic_mr.nii.gz").shape
