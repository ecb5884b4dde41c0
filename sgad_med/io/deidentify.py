"""De-identification of the DICOM we write: the Basic Application Level Confidentiality Profile (PS3.15 Annex E).

The derived series copies its source's header, so it carries the patient's identity unless asked not to
(``sgad-med run --deidentify``). The actions follow Table E.1-1's basic profile for the attributes a CT or MR
header holds: ``D`` a dummy value, ``Z`` empty, ``X`` removed, ``U`` a UID replaced by another, the same
replacement for the same UID everywhere (so the derived series and its Key Object Selection still reference each
other). Private attributes are removed. The options of the profile (retaining dates, descriptions, device
identity) are not applied: what is not listed here and is not private is kept.
"""

from __future__ import annotations

import hashlib

import pydicom
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

# Attributes that identify, with their basic-profile action (PS3.15 Table E.1-1), as used in CT/MR/KO headers.
DUMMY, EMPTY, REMOVE, UID = "D", "Z", "X", "U"
ACTIONS: dict[str, str] = {
    # patient
    "PatientName": DUMMY, "PatientID": DUMMY, "PatientBirthDate": EMPTY, "PatientBirthTime": REMOVE,
    "PatientSex": EMPTY, "PatientAge": REMOVE, "PatientSize": REMOVE, "PatientWeight": REMOVE,
    "PatientAddress": REMOVE, "PatientTelephoneNumbers": REMOVE, "PatientMotherBirthName": REMOVE,
    "OtherPatientIDs": REMOVE, "OtherPatientNames": REMOVE, "OtherPatientIDsSequence": REMOVE,
    "PatientBirthName": REMOVE, "PatientComments": REMOVE, "EthnicGroup": REMOVE, "Occupation": REMOVE,
    "AdditionalPatientHistory": REMOVE, "MedicalRecordLocator": REMOVE, "MilitaryRank": REMOVE,
    "BranchOfService": REMOVE, "PatientReligiousPreference": REMOVE, "IssuerOfPatientID": REMOVE,
    "PatientInsurancePlanCodeSequence": REMOVE, "ResponsiblePerson": REMOVE, "PregnancyStatus": REMOVE,
    "SmokingStatus": REMOVE, "MedicalAlerts": REMOVE, "Allergies": REMOVE, "CountryOfResidence": REMOVE,
    "RegionOfResidence": REMOVE, "PatientState": REMOVE,
    # study, visit and people
    "StudyDate": EMPTY, "StudyTime": EMPTY, "AccessionNumber": EMPTY, "StudyID": EMPTY,
    "ReferringPhysicianName": EMPTY, "ReferringPhysicianAddress": REMOVE,
    "ReferringPhysicianTelephoneNumbers": REMOVE, "PhysiciansOfRecord": REMOVE, "NameOfPhysiciansReadingStudy": REMOVE,
    "PerformingPhysicianName": REMOVE, "OperatorsName": REMOVE, "RequestingPhysician": REMOVE,
    "ScheduledPerformingPhysicianName": REMOVE, "AdmittingDiagnosesDescription": REMOVE, "AdmissionID": REMOVE,
    "StudyDescription": REMOVE, "RequestAttributesSequence": REMOVE, "ReferencedStudySequence": REMOVE,
    "ReferencedPatientSequence": REMOVE, "RequestedProcedureID": REMOVE, "PerformedProcedureStepID": REMOVE,
    "PerformedProcedureStepStartDate": REMOVE, "PerformedProcedureStepStartTime": REMOVE,
    "PerformedProcedureStepDescription": REMOVE, "ScheduledProcedureStepID": REMOVE,
    # series, acquisition and content dates, the institution and the device
    "SeriesDate": REMOVE, "SeriesTime": REMOVE, "AcquisitionDate": REMOVE, "AcquisitionTime": REMOVE,
    "AcquisitionDateTime": REMOVE, "ContentDate": EMPTY, "ContentTime": EMPTY, "InstitutionName": REMOVE,
    "InstitutionAddress": REMOVE, "InstitutionalDepartmentName": REMOVE, "StationName": REMOVE,
    "DeviceSerialNumber": REMOVE, "ProtocolName": REMOVE, "ImageComments": REMOVE, "DerivationDescription": REMOVE,
    "InstanceCreationDate": REMOVE, "InstanceCreationTime": REMOVE, "InstanceCreatorUID": UID,
    # UIDs: replaced consistently
    "StudyInstanceUID": UID, "SeriesInstanceUID": UID, "SOPInstanceUID": UID, "FrameOfReferenceUID": UID,
    "ReferencedSOPInstanceUID": UID, "MediaStorageSOPInstanceUID": UID, "IrradiationEventUID": UID,
    "SynchronizationFrameOfReferenceUID": UID, "DimensionOrganizationUID": UID, "ReferencedFrameOfReferenceUID": UID,
}

#: What the de-identified files say of themselves (PS3.15 E.1.1: Patient Identity Removed, the method used).
METHOD = "PS3.15 Annex E Basic Application Confidentiality Profile"  # LO: 64 characters at most


def replacement_uid(uid: str, salt: str = "") -> str:
    """The UID that replaces ``uid``: the same for the same UID (and salt), unrelated to it otherwise."""
    return generate_uid(entropy_srcs=["sgad-med deidentify", salt, str(uid)])


def dummy_id(value: str, salt: str = "") -> str:
    """A stable pseudonym for a patient ID: one subject keeps one ID across its scans, nothing of the original shows."""
    return "SGAD-" + hashlib.sha256(f"{salt}\0{value}".encode()).hexdigest()[:16].upper()


def deidentify(ds: pydicom.Dataset, salt: str = "") -> pydicom.Dataset:
    """Apply the basic profile to ``ds`` in place (nested sequences and file meta included); returns ``ds``.

    Args:
        ds: a dataset about to be written.
        salt: mixed into the replacement UIDs and pseudonyms; one salt per run keeps the references between the
            files of that run, and different salts give unlinkable outputs.
    """
    _apply(ds, salt)
    if hasattr(ds, "file_meta") and "MediaStorageSOPInstanceUID" in ds.file_meta:
        ds.file_meta.MediaStorageSOPInstanceUID = replacement_uid(ds.file_meta.MediaStorageSOPInstanceUID, salt)
    return mark_deidentified(ds)


def mark_deidentified(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Record in ``ds`` that its identity was removed and how (for a dataset built from de-identified ones)."""
    ds.remove_private_tags()
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    code = pydicom.Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "113100", "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = Sequence([code])
    return ds


def _apply(ds: pydicom.Dataset, salt: str) -> None:
    ds.remove_private_tags()
    for element in list(ds):
        keyword = element.keyword
        action = ACTIONS.get(keyword)
        if action == REMOVE:
            del ds[element.tag]
        elif action == EMPTY:
            element.value = None if element.VR == "SQ" else ""
        elif action == DUMMY:
            element.value = dummy_id(str(element.value), salt) if keyword == "PatientID" else "ANONYMOUS"
        elif action == UID and element.value:
            if element.VM > 1:
                element.value = [replacement_uid(v, salt) for v in element.value]
            else:
                element.value = replacement_uid(element.value, salt)
        elif element.VR == "SQ":
            for item in element.value:
                _apply(item, salt)
