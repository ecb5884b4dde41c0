"""With the shipped weights: corrupted slices are flagged and corrected towards the clean truth, nothing else changes.

Skipped (with the reason) while one of the three bundles has no ``models/model.pt`` yet.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from sgad_med.io import Scan
from sgad_med.pipeline import BUNDLE_NAMES, SGADPipeline
from sgad_med.transforms.artifacts import SliceArtifact
from tests.conftest import REPO

BUNDLES = REPO / "bundles"
MISSING = [name for name in BUNDLE_NAMES.values() if not (BUNDLES / name / "models" / "model.pt").is_file()]
CORRUPTED = {"spike": 30, "stripes": 47, "signal_loss": 64}


@pytest.mark.skipif(bool(MISSING), reason=f"no shipped weights yet in bundles/{', bundles/'.join(MISSING)}")
def test_corrupted_slices_are_flagged_and_corrected_towards_the_truth():
    from sgad_med.data.synthetic import SyntheticStyleGenerator

    torch.set_num_threads(1)
    pair = SyntheticStyleGenerator(spacing=2.0).pair(anatomy_seed=10_050, style_seed=5, split="heldout")
    clean = pair["target"] * 1000.0  # held-out anatomy in the reference style, in an MR-like scale
    image = MetaTensor(torch.as_tensor(clean, dtype=torch.float32)[None], affine=torch.as_tensor(pair["affine"]))
    for k, (kind, index) in enumerate(CORRUPTED.items()):
        image = SliceArtifact(kind, [index], severity=0.8, seed=k)(image)
    scan = Scan(image=MetaTensor(image.as_tensor(), affine=image.affine), scan_id="corrupted", modality="MR")

    result = SGADPipeline.from_bundles(BUNDLES, device="cpu")(scan)
    corrupted = sorted(CORRUPTED.values())
    assert set(corrupted) <= set(result.flagged_slices), f"flagged {result.flagged_slices}"
    damaged, corrected = scan.image.numpy()[0], result.corrected.image.numpy()[0]
    for k in corrupted:
        before = np.abs(damaged[..., k] - clean[..., k]).mean()
        after = np.abs(corrected[..., k] - clean[..., k]).mean()
        assert after < before, f"slice {k}: mean error {after:.1f} after, {before:.1f} before"
    keep = ~(result.restored | result.fallback)  # fallback slices are the input, mapped (see SGADPipeline)
    assert np.array_equal(corrected[..., keep], result.harmonized.image.numpy()[0][..., keep])


@pytest.mark.skipif(bool(MISSING), reason=f"no shipped weights yet in bundles/{', bundles/'.join(MISSING)}")
def test_sagittal_scans_are_scored_by_the_plane_weights_and_axial_ones_by_the_axial_weights():
    import sgad_med

    torch.set_num_threads(1)
    pipeline = SGADPipeline.from_bundles(BUNDLES, device="cpu")
    assert pipeline.plane_detector is not None, "the detection bundle ships configs/planes.json"
    axial = pipeline(sgad_med.load_scan(REPO / "sample_data" / "synthetic_mr.nii.gz"))
    assert axial.settings["detector_weights"] == "axial" and axial.threshold == pytest.approx(
        float(pipeline.detector.threshold))
    pipeline.slice_axis = "sagittal"
    sagittal = pipeline(sgad_med.load_scan(REPO / "sample_data" / "synthetic_mr.nii.gz"))
    assert sagittal.settings["detector_weights"] == "planes" and sagittal.slice_axis.plane == "sagittal"
    assert sagittal.threshold == pytest.approx(float(pipeline.plane_detector.threshold))
    assert pipeline.plane_detector.threshold != pipeline.detector.threshold  # calibrated on their own
