"""The Key Object Selection document: right instances, same study, valid DICOM, clear refusal for non-DICOM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from sgad_med.errors import ScanWriteError
from sgad_med.io import load_scan, save_scan, write_new_series
from sgad_med.io.key_object import slice_to_instance, write_key_object
from sgad_med.pipeline import Result
from tests.conftest import SAMPLE_DATA, smooth_volume
from tests.io.dicom_helpers import dciodvfy_errors, write_enhanced_mr

FLAGGED = (2, 5)


def _result(scan, flagged=FLAGGED) -> Result:
    depth = scan.shape[2]
    scores = np.full(depth, 0.1)
    scores[list(flagged)] = 0.9
    mask = scores >= 0.5
    cause = [("harmonization" if k == flagged[0] else "input") if m else "" for k, m in enumerate(mask)]
    return Result(scan, scan, scan, scores, scores, scores, mask, mask.copy(), cause, threshold=0.5)


def _referenced_uids(path: Path) -> list[str]:
    ko = pydicom.dcmread(path)
    container = ko.ContentSequence
    return [
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in container if "ReferencedSOPSequence" in item
    ]


@pytest.fixture
def flipped_series(tmp_path: Path) -> Path:
    """A CT series whose slice normal (row x column) points Inferior, so its slice order runs against RAS."""
    volume = smooth_volume(shape=(20, 16, 8), low=-500, high=800)
    # LPS row (-1, 0, 0) x column (0, 1, 0) = (0, 0, -1): the reader orders the slices superior to inferior
    affine = np.diag([0.8, -0.8, -2.0, 1.0])
    affine[:3, 3] = (-8.0, -6.0, 20.0)
    write_new_series(volume, affine, tmp_path / "ct", modality="CT", patient_name="Test^KO", patient_id="KO-1")
    return tmp_path / "ct"


@pytest.mark.parametrize("derived", [True, False], ids=["derived-series", "source-series"])
def test_key_object_references_flagged_slices(tmp_path, derived):
    scan = load_scan(SAMPLE_DATA / "synthetic_mr_series")
    result = _result(scan)
    files = save_scan(scan, tmp_path / "dicom", format="dicom") if derived else None
    path = write_key_object(scan, result, tmp_path / "flagged.dcm", derived_files=files)
    assert path == tmp_path / "flagged.dcm" and path.is_file()
    assert not list(tmp_path.glob(".tmp-*"))

    mapping = slice_to_instance(scan)
    instances = [pydicom.dcmread(f, stop_before_pixels=True) for f in files] if derived else scan.dicom_headers
    expected = {str(instances[mapping[k]].SOPInstanceUID) for k in FLAGGED}
    assert set(_referenced_uids(path)) == expected

    ko = pydicom.dcmread(path)
    source = scan.dicom_headers[0]
    assert ko.Modality == "KO" and ko.SOPClassUID == pydicom.uid.KeyObjectSelectionDocumentStorage
    assert ko.StudyInstanceUID == source.StudyInstanceUID
    assert ko.PatientID == source.PatientID and str(ko.PatientName) == str(source.PatientName)
    assert ko.SeriesInstanceUID not in {source.SeriesInstanceUID, instances[0].SeriesInstanceUID}
    assert ko.ConceptNameCodeSequence[0].CodeValue == "113000"  # Of Interest
    notes = [item.TextValue for item in ko.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "113012"]
    assert len(notes) == 1 and "2, 5" in notes[0] and "harmonization" in notes[0]
    evidence = ko.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    assert dciodvfy_errors(path) == set()


def test_key_object_follows_the_slice_order_of_a_reversed_series(tmp_path, flipped_series):
    scan = load_scan(flipped_series)
    depth = scan.shape[2]
    mapping = slice_to_instance(scan)
    assert mapping == list(range(depth))[::-1]
    path = write_key_object(scan, _result(scan, flagged=(1,)), tmp_path / "ko.dcm")
    (uid,) = _referenced_uids(path)
    header = next(h for h in scan.dicom_headers if h.SOPInstanceUID == uid)
    # RAS slice 1 is the second most inferior: its z (LPS z = RAS z) is the second smallest
    positions = sorted(float(h.ImagePositionPatient[2]) for h in scan.dicom_headers)
    assert float(header.ImagePositionPatient[2]) == pytest.approx(positions[1])
    assert dciodvfy_errors(path) == set()


def test_key_object_of_a_multiframe_scan_references_its_one_instance(tmp_path):
    series = sorted((SAMPLE_DATA / "synthetic_mr_series").glob("*.dcm"))
    enhanced = write_enhanced_mr(series, tmp_path / "enhanced.dcm")
    scan = load_scan(enhanced)
    path = write_key_object(scan, _result(scan), tmp_path / "ko.dcm")
    assert _referenced_uids(path) == [str(scan.dicom_headers[0].SOPInstanceUID)]
    assert dciodvfy_errors(path) == set()


def test_key_object_without_flagged_slices_writes_nothing(tmp_path):
    scan = load_scan(SAMPLE_DATA / "synthetic_mr_series")
    assert write_key_object(scan, _result(scan, flagged=()), tmp_path / "ko.dcm") is None
    assert not (tmp_path / "ko.dcm").exists()


def test_key_object_of_a_nifti_scan_raises(tmp_path):
    scan = load_scan(SAMPLE_DATA / "synthetic_mr.nii.gz")
    with pytest.raises(ScanWriteError, match="not read from DICOM"):
        write_key_object(scan, _result(scan), tmp_path / "ko.dcm")
    assert not (tmp_path / "ko.dcm").exists()


def test_key_object_rejects_derived_files_of_another_series(tmp_path):
    scan = load_scan(SAMPLE_DATA / "synthetic_mr_series")
    with pytest.raises(ScanWriteError, match="derived files"):
        write_key_object(scan, _result(scan), tmp_path / "ko.dcm", derived_files=[tmp_path / "x.dcm"])


def test_key_object_of_a_source_without_optional_patient_and_study_attributes(tmp_path):
    scan = load_scan(SAMPLE_DATA / "synthetic_mr_series")
    for header in scan.dicom_headers:  # headers from other systems often lack these type 2 attributes
        for keyword in ("PatientBirthDate", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
            if keyword in header:
                delattr(header, keyword)
    path = write_key_object(scan, _result(scan), tmp_path / "ko.dcm")
    ko = pydicom.dcmread(path)
    assert ko.StudyID == "" and ko.PatientBirthDate == ""
    assert dciodvfy_errors(path) == set()
