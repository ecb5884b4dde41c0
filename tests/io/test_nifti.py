from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

import sgad_med
from sgad_med.errors import ScanWriteError, UnsupportedScanError
from tests.conftest import oblique_affine, smooth_volume


def test_nifti_reads_as_nibabel_closest_canonical(nifti_file):
    path, data, affine = nifti_file
    scan = sgad_med.load_scan(path)
    canonical = nib.as_closest_canonical(nib.load(path))
    assert scan.scan_id == "subject-01_T1w"
    assert scan.modality == "OT"
    assert tuple(scan.image.shape) == (1, *canonical.shape)
    np.testing.assert_allclose(scan.image[0].numpy(), canonical.get_fdata(), atol=1e-4)
    np.testing.assert_allclose(scan.affine, canonical.affine, atol=1e-5)
    np.testing.assert_allclose(scan.native_affine, affine, atol=1e-5)
    assert "".join(nib.aff2axcodes(scan.affine)) == "RAS"
    assert scan.orientation == "".join(nib.aff2axcodes(affine))
    np.testing.assert_allclose(scan.spacing, np.linalg.norm(canonical.affine[:3, :3], axis=0), rtol=1e-6)


def test_nifti_round_trip_keeps_input_affine_shape_and_voxels(nifti_file, tmp_path):
    path, data, affine = nifti_file
    before = path.read_bytes()
    scan = sgad_med.load_scan(path)
    out = tmp_path / "out" / "harmonized.nii.gz"
    sgad_med.save_scan(scan.with_image(scan.image * 2.0), out)
    written = nib.load(out)
    assert written.shape == data.shape
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    np.testing.assert_allclose(written.get_fdata(), data * 2.0, rtol=1e-6)
    assert path.read_bytes() == before  # the input is never modified
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp")]  # no temporary left behind


def test_nifti_write_refuses_to_overwrite_unless_asked(nifti_file, tmp_path):
    scan = sgad_med.load_scan(nifti_file[0])
    out = tmp_path / "x.nii.gz"
    sgad_med.save_scan(scan, out)
    with pytest.raises(ScanWriteError, match="already exists"):
        sgad_med.save_scan(scan, out)
    sgad_med.save_scan(scan, out, overwrite=True)


def test_integer_nifti_applies_scaling_and_reports_quantization(tmp_path):
    raw = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    image = nib.Nifti1Image(raw, np.eye(4))
    image.header.set_slope_inter(0.5, -10.0)
    path = tmp_path / "scaled.nii"
    nib.save(image, path)
    scan = sgad_med.load_scan(path)
    np.testing.assert_allclose(scan.image[0].numpy(), raw * 0.5 - 10.0)
    assert scan.quantization_step == pytest.approx(0.5)


def test_4d_nifti_is_refused_naming_the_option_and_volumes_load_one_by_one(tmp_path):
    data = np.stack([smooth_volume(seed=s) for s in range(3)], axis=-1)
    path = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(data, oblique_affine()), path)
    with pytest.raises(UnsupportedScanError, match=r"4D NIfTI with 3 volumes.*volume=") as info:
        sgad_med.load_scan(path)
    assert str(path) in str(info.value)
    second = sgad_med.load_scan(path, volume=1)
    assert second.scan_id == "bold_vol0001"
    canonical = nib.as_closest_canonical(nib.Nifti1Image(data[..., 1], oblique_affine()))
    np.testing.assert_allclose(second.image[0].numpy(), canonical.get_fdata(), atol=1e-4)
    sources = sgad_med.discover_scans(tmp_path, split_4d=True)
    assert [s.scan_id for s in sources] == ["bold_vol0000", "bold_vol0001", "bold_vol0002"]
    with pytest.raises(UnsupportedScanError, match="volume 7 does not exist"):
        sgad_med.load_scan(path, volume=7)


def test_nibabel_example_4d_epi_reads_volume_by_volume():
    from pathlib import Path

    example = Path(nib.__file__).parent / "tests" / "data" / "example4d.nii.gz"
    if not example.exists():
        pytest.skip(f"nibabel's test data is not installed ({example})")
    scan = sgad_med.load_scan(example, volume=0)
    canonical = nib.as_closest_canonical(nib.load(example).slicer[..., 0])
    np.testing.assert_allclose(scan.image[0].numpy(), canonical.get_fdata(), atol=1e-4)
    np.testing.assert_allclose(scan.affine, canonical.affine, atol=1e-5)


def test_modality_can_be_given_for_nifti_which_does_not_record_it(nifti_file):
    assert sgad_med.load_scan(nifti_file[0], modality="ct").modality == "CT"
    with pytest.raises(UnsupportedScanError, match="unknown modality"):
        sgad_med.load_scan(nifti_file[0], modality="PET")
