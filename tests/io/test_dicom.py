from __future__ import annotations

import random
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import sgad_med
from sgad_med.errors import MissingDecoderError, ScanWriteError
from sgad_med.io import write_derived_series, write_new_series
from tests.conftest import oblique_affine, smooth_volume
from tests.io.dicom_helpers import dciodvfy_errors, write_enhanced_mr

ORIENTATIONS = {
    "axial": ((1, 1, 1), (0.0, 0.0, 0.0)),
    "oblique": ((1, 1, 1), (0.2, -0.15, 0.3)),
    "flipped-oblique": ((-1, 1, -1), (0.2, -0.15, 0.3)),
    "sagittal-like": ((1, -1, -1), (0.0, 1.5707963, 0.0)),
}


@pytest.mark.parametrize("modality", ["CT", "MR"])
@pytest.mark.parametrize("name", list(ORIENTATIONS))
def test_series_reads_like_nibabel_would(tmp_path, name, modality):
    flips, angles = ORIENTATIONS[name]
    data = smooth_volume(low=-1000.0, high=2000.0)
    affine = oblique_affine(angles=angles, flips=flips)
    write_new_series(data, affine, tmp_path / "series", modality=modality)
    scan = sgad_med.load_scan(tmp_path / "series")
    canonical = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    assert scan.modality == modality
    assert scan.shape == canonical.shape
    np.testing.assert_allclose(scan.affine, canonical.affine, atol=1e-4)
    # CT is stored as integer HU (step 1), MR with a fitted RescaleSlope: errors are half a step at most
    assert scan.quantization_step == (1.0 if modality == "CT" else pytest.approx(3000 / 65535, rel=1e-3))
    assert np.abs(scan.image[0].numpy() - canonical.get_fdata()).max() <= 0.5 * scan.quantization_step + 1e-3


def test_series_order_comes_from_positions_not_file_names_or_instance_numbers(tmp_path):
    data = smooth_volume()
    affine = oblique_affine()
    files = write_new_series(data, affine, tmp_path / "written", modality="MR")
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    numbers = list(range(1, len(files) + 1))
    random.Random(3).shuffle(numbers)
    for index, (path, number) in enumerate(zip(files, numbers)):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = number  # instance numbers that no longer follow anatomy
        ds.save_as(shuffled / f"file_{(index * 7) % len(files):03d}.dcm")
    reference = sgad_med.load_scan(tmp_path / "written")
    scan = sgad_med.load_scan(shuffled)
    np.testing.assert_array_equal(scan.image.numpy(), reference.image.numpy())
    np.testing.assert_allclose(scan.affine, reference.affine, atol=1e-6)


def test_single_file_becomes_a_one_slice_volume_in_hu():
    path = Path(get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(path)
    scan = sgad_med.load_scan(path)
    assert scan.modality == "CT"
    assert scan.shape[2] == 1 and scan.image.shape[0] == 1
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert float(scan.image.min()) == hu.min() and float(scan.image.max()) == hu.max()
    assert sorted(scan.shape[:2]) == sorted(hu.shape)
    assert scan.scan_id.startswith("dcm-") and str(ds.PatientID) not in scan.scan_id


def test_scan_id_is_a_stable_hash_of_the_series_uid():
    scan = sgad_med.load_scan(get_testdata_file("MR_small.dcm"))
    again = sgad_med.load_scan(get_testdata_file("MR_small.dcm"))
    assert scan.scan_id == again.scan_id
    series_uid = str(pydicom.dcmread(get_testdata_file("MR_small.dcm")).SeriesInstanceUID)
    assert scan.scan_id == sgad_med.io.scan.scan_id_for_series(series_uid)


def test_enhanced_multiframe_mr_reads_like_the_series_it_came_from(tmp_path):
    data = smooth_volume(low=0.0, high=1500.0)
    files = write_new_series(data, oblique_affine(flips=(1, -1, 1)), tmp_path / "series", modality="MR")
    multiframe = write_enhanced_mr(list(reversed(files)), tmp_path / "enhanced.dcm")
    series = sgad_med.load_scan(tmp_path / "series")
    enhanced = sgad_med.load_scan(multiframe)
    assert int(pydicom.dcmread(multiframe).NumberOfFrames) == data.shape[2]
    np.testing.assert_allclose(enhanced.affine, series.affine, atol=1e-4)
    np.testing.assert_allclose(enhanced.image.numpy(), series.image.numpy(), atol=1e-3)


@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm"]
)
def test_compressed_and_big_endian_files_decode_to_the_same_voxels(name):
    reference = sgad_med.load_scan(get_testdata_file("MR_small.dcm"))
    scan = sgad_med.load_scan(get_testdata_file(name))
    np.testing.assert_array_equal(scan.image.numpy(), reference.image.numpy())


def test_missing_decoder_names_the_extra_to_install(monkeypatch):
    import pydicom.pixels

    class Unavailable:
        is_available = False

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: Unavailable())
    path = get_testdata_file("MR_small_jp2klossless.dcm")
    with pytest.raises(MissingDecoderError, match=r"sgad-med\[dicom-codecs\]") as info:
        sgad_med.load_scan(path)
    assert path in str(info.value)


def _derived_series_source(tmp_path, source: str, low: float = -500, high: float = 1500):
    """A DICOM source to derive a series from: ``series-CT``/``series-MR`` (our own series of values in
    ``low..high``), ``enhanced`` (a multi-frame MR made from one), or a pydicom test file name."""
    if source.startswith("series"):
        modality = source.split("-")[1]
        write_new_series(smooth_volume(low=low, high=high), oblique_affine(), tmp_path / "src", modality=modality)
        return tmp_path / "src"
    if source == "enhanced":
        files = write_new_series(smooth_volume(), oblique_affine(), tmp_path / "series", modality="MR")
        return write_enhanced_mr(files, tmp_path / "enhanced.dcm")
    source_path = tmp_path / source
    shutil.copy2(get_testdata_file(source), source_path)
    return source_path


@pytest.mark.parametrize(
    "source", ["series-CT", "series-MR", "CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm", "enhanced"]
)
def test_derived_series_round_trip_and_dciodvfy(tmp_path, source):
    source_path = _derived_series_source(tmp_path, source)
    before = {p: p.read_bytes() for p in ([source_path] if source_path.is_file() else source_path.iterdir())}
    scan = sgad_med.load_scan(source_path)
    processed = scan.with_image(scan.image * 0.8 + 10.0)
    written = write_derived_series(processed, tmp_path / "derived", description="harmonized")
    assert {p: p.read_bytes() for p in before} == before  # inputs untouched

    back = sgad_med.load_scan(tmp_path / "derived")
    np.testing.assert_allclose(back.affine, scan.affine, atol=1e-4)
    assert np.abs(back.image.numpy() - processed.image.numpy()).max() <= 0.5 * scan.quantization_step + 1e-3
    source_ds = pydicom.dcmread(next(iter(before)))
    out = pydicom.dcmread(written[0])
    assert out.StudyInstanceUID == source_ds.StudyInstanceUID
    assert out.SeriesInstanceUID != source_ds.SeriesInstanceUID
    new_uids = {str(pydicom.dcmread(p).SOPInstanceUID) for p in written}
    assert not new_uids & {str(pydicom.dcmread(p).SOPInstanceUID) for p in before}
    # enhanced IODs only allow PRIMARY as value 2 of ImageType
    assert list(out.ImageType[:2]) == ["DERIVED", "PRIMARY" if source == "enhanced" else "SECONDARY"]
    assert "harmonized" in out.SeriesDescription and "harmonized" in out.DerivationDescription
    assert str(source_ds.SeriesInstanceUID) in out.DerivationDescription
    assert out.PatientName == source_ds.PatientName and out.PatientID == source_ds.PatientID
    for keyword in ("BitsAllocated", "BitsStored", "PixelRepresentation", "RescaleSlope", "RescaleIntercept"):
        assert out.get(keyword) == source_ds.get(keyword), keyword
    new_errors = dciodvfy_errors(written[0]) - dciodvfy_errors(next(iter(before)))
    assert not new_errors, new_errors


@pytest.mark.parametrize(
    "source,change",
    [
        ("CT_small.dcm", "brighter"),  # the README's image * 1.1: beyond the source's stored maximum
        ("MR_small.dcm", "offset"),  # image - 100: below the unsigned source's zero
        ("series-MR", "wide"),  # a range no 16-bit integer holds at the source's slope
        ("enhanced", "offset"),
        ("enhanced", "wide"),
    ],
)
def test_derived_series_holds_values_beyond_the_source_range(tmp_path, source, change):
    source_path = _derived_series_source(tmp_path, source, low=0, high=1000)
    scan = sgad_med.load_scan(source_path)
    image = scan.image
    processed = scan.with_image({"brighter": image * 1.1, "offset": image - 100.0, "wide": image * 200.0 - 1e5}[change])
    written = write_derived_series(processed, tmp_path / "derived")
    back = sgad_med.load_scan(tmp_path / "derived")
    step = max(float(pydicom.dcmread(p).get("RescaleSlope", 1) or 1) for p in written)
    if source == "enhanced":
        ds = pydicom.dcmread(written[0])
        step = max(
            float(item.PixelValueTransformationSequence[0].RescaleSlope) for item in ds.PerFrameFunctionalGroupsSequence
        )
    error = np.abs(back.image.numpy() - processed.image.numpy()).max()
    assert error <= 0.5 * step + 1e-3 * max(1.0, step), (error, step)
    if change != "wide":  # a shift or a 10 % gain needs no coarser quantization than the source's
        assert step <= (scan.quantization_step or 1.0) * 1.001
    new_errors = dciodvfy_errors(written[0]) - dciodvfy_errors(
        source_path if source_path.is_file() else next(source_path.iterdir())
    )
    assert not new_errors, new_errors


@pytest.mark.parametrize("old", ["", "T1 axial", "A" * 60 + " 1", "B" * 64])
def test_derived_series_description_keeps_the_mark_whole(tmp_path, old):
    files = write_new_series(smooth_volume(), oblique_affine(), tmp_path / "src", series_description=old)
    scan = sgad_med.load_scan(tmp_path / "src")
    written = write_derived_series(scan, tmp_path / "derived", description="corrected")
    description = str(pydicom.dcmread(written[0]).SeriesDescription)
    assert len(description) <= 64
    assert description.endswith(" [sgad-med corrected]") or description == "[sgad-med corrected]"
    assert description.count("sgad-med") == 1
    kept = description.removesuffix("[sgad-med corrected]").rstrip()
    assert str(pydicom.dcmread(files[0]).SeriesDescription).startswith(kept)


def test_new_series_passes_dciodvfy(tmp_path):
    for modality in ("CT", "MR"):
        files = write_new_series(smooth_volume(), oblique_affine(), tmp_path / modality, modality=modality)
        assert dciodvfy_errors(files[0]) == set()


def test_derived_series_needs_a_dicom_source(nifti_file, tmp_path):
    scan = sgad_med.load_scan(nifti_file[0])
    with pytest.raises(ScanWriteError, match="not read from DICOM"):
        write_derived_series(scan, tmp_path / "x")
    # save_scan writes a new series instead, which reads back with the same geometry
    sgad_med.save_scan(scan, tmp_path / "new", format="dicom")
    back = sgad_med.load_scan(tmp_path / "new")
    np.testing.assert_allclose(back.affine, scan.affine, atol=1e-4)


def _pydicom_data_file(name: str) -> str:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} comes from the pydicom-data package (in the [test] extra), which is not installed")
    return path


def test_enhanced_ct_from_pydicom_data_reads_in_hu():
    path = _pydicom_data_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    scan = sgad_med.load_scan(path)
    assert scan.modality == "CT"
    assert scan.shape[2] == int(ds.NumberOfFrames)
    assert float(scan.image.min()) >= -1024.0  # air in HU, so the per-frame rescale was applied
    np.testing.assert_allclose(
        scan.spacing[:2],
        [float(v) for v in ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing][::-1],
        rtol=1e-5,
    )


def test_multiframe_without_geometry_reads_with_identity_directions(caplog):
    path = _pydicom_data_file("emri_small.dcm")
    scan = sgad_med.load_scan(path)
    assert scan.shape == (64, 64, 10)
    assert "no patient geometry" in caplog.text
