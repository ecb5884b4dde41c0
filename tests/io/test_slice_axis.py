"""The slice axis: the acquisition plane of sagittal, coronal and axial scans, single images, and the override."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

import sgad_med
from sgad_med.errors import SGADError
from sgad_med.io.dicom_write import write_new_series
from sgad_med.io.slice_axis import choose_slice_axis, parse_slice_axis
from tests.conftest import smooth_volume

# voxel-to-RAS affines of series acquired in each plane: columns are the native column, row and slice steps
PLANE_AFFINES = {
    "sagittal": lambda step: np.array([[0, 0, step, -20], [1, 0, 0, -30], [0, -1, 0, 40], [0, 0, 0, 1]], float),
    "coronal": lambda step: np.array([[1, 0, 0, -20], [0, 0, step, -30], [0, -1, 0, 40], [0, 0, 0, 1]], float),
    "axial": lambda step: np.array([[1, 0, 0, -20], [0, -1, 0, 30], [0, 0, step, -10], [0, 0, 0, 1]], float),
}


@pytest.mark.parametrize("plane", ["sagittal", "coronal", "axial"])
@pytest.mark.parametrize("step", [3.0, 1.0], ids=["thick-slices", "isotropic"])
def test_dicom_series_is_sliced_in_its_acquisition_plane(tmp_path, plane, step):
    write_new_series(smooth_volume(shape=(24, 20, 9)), PLANE_AFFINES[plane](step), tmp_path / plane, modality="MR")
    scan = sgad_med.load_scan(tmp_path / plane)
    axis = choose_slice_axis(scan)
    assert axis.plane == plane and scan.shape[axis.index] == 9
    assert ("largest spacing" if step > 1 else "source's slice axis") in axis.reason


def test_a_single_image_is_one_slice_in_any_orientation(tmp_path):
    # one sagittal image: cutting it axially would give one-pixel-wide lines
    write_new_series(smooth_volume(shape=(64, 48, 1)), PLANE_AFFINES["sagittal"](0.5), tmp_path / "one")
    scan = sgad_med.load_scan(tmp_path / "one")
    axis = choose_slice_axis(scan)
    assert axis.index == 0 and scan.shape[0] == 1 and "single image" in axis.reason


def test_isotropic_nifti_without_a_source_axis_is_axial():
    image = MetaTensor(torch.zeros(1, 8, 8, 8), affine=torch.eye(4, dtype=torch.float64))
    assert choose_slice_axis(sgad_med.Scan(image=image, scan_id="x")).index == 2


@pytest.mark.parametrize(("value", "index"), [("axial", 2), ("coronal", 1), ("sagittal", 0), ("S", 2), ("0", 0),
                                              (1, 1), ("auto", None), (None, None)])
def test_parse_slice_axis(value, index):
    assert parse_slice_axis(value) == index


def test_override_wins_and_bad_values_are_refused(tmp_path):
    write_new_series(smooth_volume(shape=(24, 20, 9)), PLANE_AFFINES["sagittal"](3.0), tmp_path / "s")
    scan = sgad_med.load_scan(tmp_path / "s")
    assert choose_slice_axis(scan, "axial").index == 2
    with pytest.raises(SGADError, match="unknown slice axis"):
        parse_slice_axis("oblique")
