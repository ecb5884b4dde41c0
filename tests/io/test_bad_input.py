"""Every bad input raises an SGADError subclass whose message names the file and the problem."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import sgad_med
from sgad_med.errors import (
    InvalidScanDataError,
    NoScansFoundError,
    ScanReadError,
    SGADError,
    UnsupportedScanError,
)
from sgad_med.io import write_new_series
from tests.conftest import oblique_affine, smooth_volume


def _raises(error: type[SGADError], path: Path, match: str):
    with pytest.raises(error, match=match) as info:
        sgad_med.load_scan(path)
    assert str(path) in str(info.value), "the message must name the file"
    return info.value


def test_truncated_dicom(tmp_path):
    files = write_new_series(smooth_volume(), oblique_affine(), tmp_path / "series", modality="CT")
    data = files[0].read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: len(data) - 300])
    _raises(ScanReadError, truncated, "truncated")
    pydicom_truncated = tmp_path / "MR_truncated.dcm"
    shutil.copy2(get_testdata_file("MR_truncated.dcm"), pydicom_truncated)
    _raises(ScanReadError, pydicom_truncated, "truncated")


def test_corrupt_files(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("garbage.dcm", "garbage.nii", "garbage.nii.gz"):
        path = tmp_path / name
        path.write_bytes(rng.bytes(4096))
        _raises(ScanReadError, path, "not a readable")
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    _raises(ScanReadError, empty, "not a readable")


def test_dicom_without_pixel_data(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    del ds.PixelData
    path = tmp_path / "no_pixels.dcm"
    ds.save_as(path)
    _raises(UnsupportedScanError, path, "no pixel data")


@pytest.mark.parametrize(("name", "kind"), [("rtstruct.dcm", "RT Structure Set"), ("test-SR.dcm", "SR"),
                                            ("liver.dcm", "Segmentation")])
def test_non_image_dicom(tmp_path, name, kind):
    source = get_testdata_file(name)
    if source is None:
        pytest.skip(f"{name} is not installed (the SEG example comes from the pydicom-data package)")
    path = tmp_path / name
    shutil.copy2(source, path)
    _raises(UnsupportedScanError, path, kind)


def test_empty_folder_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoScansFoundError, match="holds no NIfTI") as info:
        sgad_med.discover_scans(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(info.value)
    with pytest.raises(NoScansFoundError, match="does not exist"):
        sgad_med.load_scan(tmp_path / "nowhere")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_voxels(tmp_path, bad):
    data = smooth_volume()
    data[3, 4, 5] = bad
    data[1, 1, 1] = bad
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    _raises(InvalidScanDataError, path, "2 voxels are NaN or infinite")


def _nifti_with_dims(tmp_path: Path, dims: tuple[int, ...]) -> Path:
    path = tmp_path / f"dims_{'x'.join(map(str, dims))}.nii"
    nib.save(nib.Nifti1Image(smooth_volume(), np.eye(4)), path)
    raw = bytearray(path.read_bytes())
    raw[40:56] = struct.pack("<8h", len(dims), *dims, *([1] * (7 - len(dims))))  # the header's dim[8] field
    path.write_bytes(bytes(raw))
    return path


def test_zero_size_header(tmp_path):
    _raises(InvalidScanDataError, _nifti_with_dims(tmp_path, (24, 0, 9)), "shape")


def test_absurdly_large_header(tmp_path):
    _raises(InvalidScanDataError, _nifti_with_dims(tmp_path, (32000, 32000, 32000)), "absurd image size")


def test_gzip_that_ends_early(tmp_path):
    path = tmp_path / "cut.nii.gz"
    nib.save(nib.Nifti1Image(smooth_volume(shape=(40, 40, 20)), np.eye(4)), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _raises(ScanReadError, path, "truncated")


def test_colour_dicom_is_refused(tmp_path):
    source = get_testdata_file("SC_rgb_small_odd.dcm")
    path = tmp_path / "rgb.dcm"
    shutil.copy2(source, path)
    _raises(UnsupportedScanError, path, "colour")


def test_one_bad_scan_never_stops_the_others(tmp_path, nifti_file):
    folder = tmp_path / "batch"
    folder.mkdir()
    shutil.copy2(nifti_file[0], folder / "good.nii.gz")
    write_new_series(smooth_volume(), oblique_affine(), folder / "series", modality="MR")
    (folder / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    (folder / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")
    shutil.copy2(get_testdata_file("test-SR.dcm"), folder / "report.dcm")
    sources = sgad_med.discover_scans(folder)
    outcomes = {}
    for source in sources:
        if source.skip_reason:
            outcomes[source.path.name] = "skipped"
            continue
        try:
            sgad_med.load_scan(source)
            outcomes[source.path.name] = "ok"
        except SGADError as err:
            assert str(source.path) in str(err)
            outcomes[source.path.name] = "failed"
    assert outcomes == {"good.nii.gz": "ok", "series": "ok", "broken.nii.gz": "failed", "broken.dcm": "failed",
                        "report.dcm": "skipped"}
