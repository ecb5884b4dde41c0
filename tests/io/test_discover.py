from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
from pydicom.data import get_testdata_file

import sgad_med
from sgad_med.io import write_new_series
from tests.conftest import oblique_affine, smooth_volume


def test_folder_of_many_series_and_nifti_is_split_by_series_uid_recursively(tmp_path, nifti_file):
    root = tmp_path / "site"
    (root / "a" / "deep").mkdir(parents=True)
    shutil.copy2(nifti_file[0], root / "a" / "deep" / "t1.nii.gz")
    ct = write_new_series(smooth_volume(seed=1), oblique_affine(), tmp_path / "ct", modality="CT")
    mr = write_new_series(smooth_volume(seed=2), oblique_affine(), tmp_path / "mr", modality="MR")
    # mix the two series' files in one folder and one sub-folder, as exports often do
    mixed = root / "export"
    (mixed / "more").mkdir(parents=True)
    for index, path in enumerate(ct + mr):
        target = mixed / ("more" if index % 3 == 0 else "") / f"IMG{index:04d}"  # no .dcm suffix: found by preamble
        shutil.copy2(path, target)
    (root / "notes.txt").write_text("not a scan")
    (root / ".hidden.nii.gz").write_bytes(b"partial output")  # our own temporaries are never picked up

    sources = sgad_med.discover_scans(root)
    kinds = sorted((s.kind, len(s.paths)) for s in sources)
    assert kinds == [("dicom", len(ct)), ("dicom", len(mr)), ("nifti", 1)]
    scans = {s.scan_id: sgad_med.load_scan(s) for s in sources}
    assert sorted(s.modality for s in scans.values()) == ["CT", "MR", "OT"]
    assert "t1" in scans
    for source in sources:
        if source.kind == "dicom":
            assert source.scan_id == sgad_med.io.scan.scan_id_for_series(source.series_uid)
    # discovery is deterministic
    assert [s.scan_id for s in sgad_med.discover_scans(root)] == [s.scan_id for s in sources]


def test_single_series_folder_loads_directly_and_many_scans_are_refused(tmp_path):
    write_new_series(smooth_volume(), oblique_affine(), tmp_path / "one", modality="MR")
    assert sgad_med.load_scan(tmp_path / "one").image.shape[1:].numel() == 24 * 20 * 9
    both = tmp_path / "both"
    write_new_series(smooth_volume(), oblique_affine(), both / "x", modality="MR")
    write_new_series(smooth_volume(), oblique_affine(), both / "y", modality="CT")
    try:
        sgad_med.load_scan(both)
    except sgad_med.UnsupportedScanError as err:
        assert "holds 2 scans" in str(err) and "discover_scans" in str(err)
    else:
        raise AssertionError("a folder of two series must not load as one scan")


def test_same_file_name_in_two_folders_gets_two_ids(tmp_path):
    for folder in ("site1", "site2"):
        (tmp_path / folder).mkdir()
        nib.save(nib.Nifti1Image(smooth_volume(), np.eye(4)), tmp_path / folder / "scan.nii.gz")
    ids = [s.scan_id for s in sgad_med.discover_scans(tmp_path)]
    assert ids == ["scan", "scan-2"]


def test_non_image_objects_are_listed_as_skipped(tmp_path):
    shutil.copy2(get_testdata_file("rtstruct.dcm"), tmp_path / "rs.dcm")
    shutil.copy2(get_testdata_file("CT_small.dcm"), tmp_path / "ct.dcm")
    sources = sgad_med.discover_scans(tmp_path)
    skipped = [s for s in sources if s.skip_reason]
    assert len(sources) == 2 and len(skipped) == 1
    assert "RT Structure Set" in skipped[0].skip_reason
    assert sgad_med.load_scan(tmp_path / "ct.dcm").modality == "CT"
