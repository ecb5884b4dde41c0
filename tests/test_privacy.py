"""Patient identity stays out of logs, reports, manifests and paths; --deidentify removes it from DICOM outputs."""

from __future__ import annotations

import json
import logging

import numpy as np
import pydicom
import pytest

from sgad_med.cli import main
from sgad_med.io.dicom_write import write_new_series
from tests.conftest import smooth_volume
from tests.io.dicom_helpers import dciodvfy_errors
from tests.tiny_bundles import make_tiny_bundles

MARKERS = {
    "PatientName": "Secretname^Marker",
    "PatientID": "MARKERID4711",
    "PatientBirthDate": "19230405",
    "InstitutionName": "Marker Institute",
    "ReferringPhysicianName": "Doctor^Markerdoc",
    "OperatorsName": "Operator^Markerop",
    "AccessionNumber": "MARKACC99",
}


def _marked_series(folder, broken: bool = False):
    files = write_new_series(smooth_volume(shape=(24, 20, 6), low=100.0, high=900.0), np.diag([1.0, 1.0, 3.0, 1.0]),
                             folder, modality="MR")
    for path in files:
        ds = pydicom.dcmread(path)
        for keyword, value in MARKERS.items():
            setattr(ds, keyword, value)
        ds.add_new(0x00091010, "LO", "MARKER private")  # a private tag (group 0009 has a creator below)
        ds.add_new(0x00090010, "LO", "MARKER CREATOR")
        if broken:
            ds.Rows = 4096  # pixel data no longer fits: a read error must not quote the header
        ds.save_as(path)
    return files


def _texts(folder) -> dict[str, str]:
    """Every file's text (DICOM files excluded: they carry identity by design unless --deidentify)."""
    out = {}
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix != ".dcm" and path.suffix not in (".png", ".gz"):
            out[str(path)] = path.read_text(errors="replace")
    return out


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return make_tiny_bundles(tmp_path_factory.mktemp("tiny") / "bundles")


def test_logs_reports_manifest_and_paths_hold_no_patient_identity(tmp_path, bundles, capsys, caplog):
    _marked_series(tmp_path / "in" / "good")
    _marked_series(tmp_path / "in" / "broken", broken=True)
    out = tmp_path / "out"
    caplog.set_level(logging.DEBUG)
    code = main(["run", str(tmp_path / "in"), "--out", str(out), "--bundles", str(bundles), "--format", "both",
                 "--threshold", "0", "--debug"])
    assert code == 1, "the broken series fails, the good one is written"
    printed = capsys.readouterr()
    logged = caplog.text
    entries = json.loads((out / "manifest.json").read_text())["scans"]
    assert sorted(e["status"] for e in entries) == ["failed", "ok"]
    everything = {"stdout": printed.out, "stderr": printed.err, "log": logged, **_texts(out)}
    paths = "\n".join(str(p.relative_to(out)) for p in out.rglob("*"))
    for value in MARKERS.values():
        for part in {value, *value.split("^")}:
            assert part not in paths
            leaks = [name for name, text in everything.items() if part in text]
            assert not leaks, f"{part!r} appears in {leaks}"
    assert all(e["scan_id"].startswith("dcm-") for e in entries), "scan ids come from a hash of the UID"
    # without --deidentify the derived series keeps the study's identity, as a derived series should
    ok = next(e for e in entries if e["status"] == "ok")
    derived = pydicom.dcmread(next((out / ok["dir"] / "dicom").glob("IM*.dcm")))
    assert derived.PatientID == MARKERS["PatientID"]


def test_deidentify_removes_identity_from_the_dicom_outputs(tmp_path, bundles):
    sources = _marked_series(tmp_path / "in")
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "in"), "--out", str(out), "--bundles", str(bundles), "--format", "both",
                 "--threshold", "0", "--deidentify", "--quiet"]) == 0
    (entry,) = json.loads((out / "manifest.json").read_text())["scans"]
    dicom = out / entry["dir"] / "dicom"
    files = sorted(dicom.glob("*.dcm"))
    assert len(files) == len(sources) + 1  # the derived series and the Key Object Selection
    source = pydicom.dcmread(sources[0])
    for path in files:
        raw = path.read_bytes()
        for value in MARKERS.values():
            for part in {value, *value.split("^")}:
                assert part.encode() not in raw, (path.name, part)
        assert b"MARKER" not in raw, "private tags removed"
        ds = pydicom.dcmread(path)
        assert ds.PatientIdentityRemoved == "YES" and "Annex E" in ds.DeidentificationMethod
        assert ds.StudyInstanceUID != source.StudyInstanceUID
    images = [pydicom.dcmread(p) for p in files if p.name.startswith("IM")]
    assert len({ds.StudyInstanceUID for ds in images}) == 1 and len({ds.PatientID for ds in images}) == 1
    assert images[0].PatientID.startswith("SGAD-") and str(images[0].PatientName) == "ANONYMOUS"
    # the Key Object Selection still references the de-identified images, in their (replaced) study
    ko = pydicom.dcmread(dicom / "KO00001.dcm")
    referenced = {item.ReferencedSOPInstanceUID for study in ko.CurrentRequestedProcedureEvidenceSequence
                  for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert referenced <= {ds.SOPInstanceUID for ds in images} and referenced
    assert ko.StudyInstanceUID == images[0].StudyInstanceUID and ko.PatientID == images[0].PatientID
    new_errors = dciodvfy_errors(files[0]) - dciodvfy_errors(sources[0])
    assert not new_errors, new_errors
    # a re-run into the same folder keeps the pseudonyms (the key is kept, private to the owner)
    key = out / ".deidentify-key"
    assert key.is_file() and key.stat().st_mode & 0o077 == 0
    assert main(["run", str(tmp_path / "in"), "--out", str(out), "--bundles", str(bundles), "--format", "both",
                 "--threshold", "0", "--deidentify", "--quiet", "--overwrite"]) == 0
    again = pydicom.dcmread(sorted((out / entry["dir"] / "dicom").glob("IM*.dcm"))[0])
    assert again.PatientID == images[0].PatientID and again.StudyInstanceUID == images[0].StudyInstanceUID
