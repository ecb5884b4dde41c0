"""A DICOM Key Object Selection document that points a PACS viewer at the flagged slices of a scan."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from sgad_med.errors import ScanWriteError
from sgad_med.io.atomic import atomic_file
from sgad_med.io.orientation import from_ras
from sgad_med.io.scan import Scan

if TYPE_CHECKING:  # the pipeline imports io; io must not import the pipeline at run time
    from sgad_med.pipeline import Result

# Patient and study attributes highdicom copies from the first evidence instance (type 2: present, may be empty).
_INHERITED = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def _version() -> str:
    from sgad_med import __version__

    return __version__


def slice_to_instance(scan: Scan, axis: int = 2) -> list[int] | None:
    """For each slice along RAS ``axis``, the index of the DICOM instance (or frame) that holds it.

    ``scan.dicom_headers`` (and a derived series written from the scan) are in the source's slice order, which
    can run the other way along the slice axis than the RAS image does. A multi-frame scan has one header: the
    result maps slices to frames of that file (``sgad_frame_order``).

    Args:
        scan: a scan read from DICOM.
        axis: the RAS axis the slices were taken along (the pipeline's ``Result.slice_axis``).

    Returns:
        ``mapping[k]`` = instance (or frame) index of RAS slice ``k``, or ``None`` when ``axis`` is not the
        source's slice axis (every instance then cuts through every slice).
    """
    depth = scan.shape[axis]
    multiframe = len(scan.dicom_headers) == 1 and int(scan.dicom_headers[0].get("NumberOfFrames", 1) or 1) > 1
    count = int(scan.dicom_headers[0].NumberOfFrames) if multiframe else len(scan.dicom_headers)
    frame_order = scan.image.meta.get("sgad_frame_order") if multiframe else None
    if count != depth or (multiframe and (frame_order is None or len(frame_order) != depth)):
        return None
    if scan.native_affine is None:
        native_of = list(range(depth))
    else:
        # Reorient an index ramp along ``axis`` the way the writer reorients voxels: where its long axis lands
        # and in which direction says which native slice each RAS slice is, without touching the real volume.
        shape = [1, 1, 1]
        shape[axis] = depth
        native = from_ras(np.arange(depth).reshape(shape), scan.affine, scan.native_affine)
        if native.shape != (1, 1, depth):
            return None
        native_of = [0] * depth
        for native_index, ras_index in enumerate(native[0, 0, :]):
            native_of[int(ras_index)] = native_index
    # a multi-frame file's frames are in its own order: native slice n is frame frame_order[n]
    return [int(frame_order[n]) for n in native_of] if multiframe else native_of


def _evidence_copy(ds: pydicom.Dataset) -> pydicom.Dataset:
    """The identifying attributes of an instance, with absent patient/study attributes present and empty."""
    copied = pydicom.Dataset()
    for keyword in (
        "SOPClassUID",
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Rows",
        "Columns",
        "SpecificCharacterSet",
        *_INHERITED,
    ):
        if keyword in ds:
            copied[keyword] = ds[keyword]
    for keyword in _INHERITED:
        if keyword not in copied:
            setattr(copied, keyword, "")
    return copied


_AXIS_WORDS = {"R": "left-right", "A": "posterior-anterior", "S": "inferior-superior"}


def _note(scan: Scan, result: Result, flagged: list[int], per_slice: bool) -> str:
    causes = {result.cause[k] for k in flagged if k < len(result.cause) and result.cause[k]}
    restored = [k for k in flagged if bool(result.restored[k])]
    listed = ", ".join(str(k) for k in flagged)
    text = (
        f"sgad-med {_version()}: {len(flagged)} slice(s) flagged as anomalous (score >= {result.threshold:.3f}); "
        f"{len(restored)} of them restored. {result.slice_axis.plane.capitalize()} slices (0-based along the "
        f"{_AXIS_WORDS[result.slice_axis.name]} axis of scan {scan.scan_id}): {listed}."
    )
    if causes:
        text += f" Cause: {', '.join(sorted(causes))}."
    if not per_slice:
        text += (f" The series was not acquired in {result.slice_axis.plane} slices, so every instance is "
                 "referenced.")
    return text


def write_key_object(
    scan: Scan, result: Result, path: str | os.PathLike, derived_files: list[Path] | None = None,
    deidentified: bool = False,
) -> Path | None:
    """Write a Key Object Selection document (KO) that references the flagged slices of ``scan``.

    The document is in the source's study (patient and study attributes copied from the source header), in a
    series of its own, titled (DCM 113000, "Of Interest"), with a text note listing the flagged slices and why.
    It references the instances of the derived series ``derived_files`` (the corrected images, written by
    :func:`sgad_med.io.save_scan`) when given, else the source instances. A multi-frame scan is one instance, so
    that instance is referenced and the note lists the slices.

    Args:
        scan: the input scan, read from DICOM.
        result: the pipeline's result for ``scan``.
        path: the ``.dcm`` file to write; it appears atomically (an existing file is replaced).
        derived_files: the files of the derived series, in the order ``save_scan`` returned them (one per
            source instance), or ``None`` to reference the source instances.
        deidentified: ``derived_files`` were de-identified: the document takes their (replaced) identity, never
            the source's, and says so (Patient Identity Removed).

    Returns:
        The file written, or ``None`` when no slice is flagged (a KO must reference something; nothing is written).

    Raises:
        ScanWriteError: ``scan`` was not read from DICOM, or ``derived_files`` does not match its instances.
    """
    import highdicom as hd  # imported here: only DICOM output needs it

    path = Path(path)
    if not scan.dicom_headers:
        raise ScanWriteError(
            path,
            f"scan {scan.scan_id} was not read from DICOM, so there is no DICOM study to add a Key Object Selection to",
            fix="write DICOM outputs only for DICOM inputs",
        )
    flagged = [int(k) for k in np.flatnonzero(np.asarray(result.flagged))]
    if not flagged:
        return None
    if deidentified and derived_files is None:
        raise ScanWriteError(path, "a de-identified Key Object Selection must reference de-identified files",
                             fix="pass the derived series written with a deidentify salt as derived_files")
    if derived_files is not None:
        if len(derived_files) != len(scan.dicom_headers):
            raise ScanWriteError(
                path, f"{len(derived_files)} derived files for a source of {len(scan.dicom_headers)} instances"
            )
        instances = [pydicom.dcmread(f, stop_before_pixels=True) for f in derived_files]
    else:
        instances = list(scan.dicom_headers)
    mapping = slice_to_instance(scan, result.slice_axis.index)
    if len(instances) == 1:
        chosen = [0]
    elif mapping is None:
        chosen = list(range(len(instances)))
    else:
        chosen = sorted({mapping[k] for k in flagged})
    referenced = [_evidence_copy(instances[i]) for i in chosen]

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(), name="sgad-med", manufacturer_name="sgad-med"
    )
    content = hd.ko.KeyObjectSelection(
        document_title=codes.DCM.OfInterest,
        referenced_objects=referenced,
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        ),
        description=_note(scan, result, flagged, per_slice=mapping is not None or len(instances) == 1),
    )
    source_number = int(scan.dicom_headers[0].get("SeriesNumber", 0) or 0)
    document = hd.ko.KeyObjectSelectionDocument(
        evidence=referenced,
        content=content,
        series_instance_uid=generate_uid(),
        series_number=(source_number % 100000) + 2000,  # beside the derived series' +1000
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="sgad-med",
    )
    document.SeriesDescription = "sgad-med flagged slices"
    if deidentified:
        from sgad_med.io.deidentify import mark_deidentified

        mark_deidentified(document)
    with atomic_file(path, overwrite=True) as tmp:
        document.save_as(tmp, enforce_file_format=True)
    return path
