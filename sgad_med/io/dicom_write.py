"""Writing DICOM: a derived series from a DICOM source, or a new series for a scan that has none."""

from __future__ import annotations

import copy
import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from sgad_med.errors import ScanWriteError
from sgad_med.io.atomic import atomic_dir
from sgad_med.io.dicom_read import LPS_TO_RAS, frame_rescale
from sgad_med.io.orientation import from_ras
from sgad_med.io.scan import Scan

# Prefix of UIDs we generate: pydicom's root, so the UIDs are valid without an organisation root of our own.
_IMPLEMENTATION = "sgad-med"


def _version() -> str:
    from sgad_med import __version__

    return __version__


def _native_voxels(scan: Scan) -> np.ndarray:
    """The scan's voxels in the source's order ``[column, row, slice]``."""
    data = scan.image.detach().cpu().numpy()[0].astype(np.float64)
    if scan.native_affine is None:
        return data
    return from_ras(data, scan.affine, scan.native_affine)


def _stored_range(ds: pydicom.Dataset) -> tuple[int, int, np.dtype]:
    bits_stored = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    bits_allocated = int(ds.get("BitsAllocated", 16))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    low, high = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (0, 2**bits_stored - 1)
    dtype = np.dtype(f"{'i' if signed else 'u'}{max(bits_allocated, 8) // 8}").newbyteorder("<")
    return low, high, dtype


def _to_stored(values: np.ndarray, ds: pydicom.Dataset, slope: float, intercept: float) -> np.ndarray:
    """Values in the scan's units -> stored pixel values of ``ds``'s representation (rounded, clipped)."""
    low, high, dtype = _stored_range(ds)
    stored = np.rint((values - intercept) / (slope or 1.0))
    return np.clip(stored, low, high).astype(dtype)


def _mark_derived(ds: pydicom.Dataset, series_uid: str, description: str, series_number: int) -> None:
    source_series = str(ds.get("SeriesInstanceUID", ""))
    source_type = list(ds.get("ImageType", ["ORIGINAL", "PRIMARY"]))
    if "SharedFunctionalGroupsSequence" in ds:
        # Enhanced (multi-frame) IODs allow only PRIMARY as value 2 of ImageType (PS3.3 C.8.16.1.1)
        ds.ImageType = ["DERIVED", *source_type[1:]]
    else:
        ds.ImageType = ["DERIVED", "SECONDARY", *source_type[2:]]
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    mark = f"[sgad-med {description}]"
    old = str(ds.get("SeriesDescription", "")).strip()
    ds.SeriesDescription = ((f"{old} " if old else "")[: max(64 - len(mark), 0)] + mark)[:64]  # LO: 64 chars
    ds.DerivationDescription = f"{description} by sgad-med {_version()} from series {source_series}"
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:  # no longer true of the new pixels
            delattr(ds, keyword)


def _fresh_copy(source: pydicom.Dataset) -> pydicom.Dataset:
    """A deep copy of a header that pydicom will encode as explicit little endian, whatever the source's encoding.

    pydicom refuses to save a dataset read as big endian in little endian; a new Dataset built from the
    decoded elements has no original encoding, so it is written in the transfer syntax of its file meta.
    """
    copied = copy.deepcopy(source)
    if getattr(source, "original_encoding", (False, True)) == (False, True):
        return copied
    fresh = pydicom.Dataset()
    for element in copied:
        fresh.add(element)
    if hasattr(copied, "file_meta"):
        fresh.file_meta = copied.file_meta
    return fresh


def _finish(ds: pydicom.Dataset, sop_uid: str, pixels: np.ndarray) -> None:
    ds.SOPInstanceUID = sop_uid
    ds.PixelData = pixels.tobytes()
    meta = FileMetaDataset(ds.file_meta) if hasattr(ds, "file_meta") else FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationVersionName = f"{_IMPLEMENTATION}-{_version()}"[:16]
    ds.file_meta = meta
    ds["PixelData"].VR = "OW" if pixels.dtype.itemsize > 1 else "OB"  # native little-endian pixels


def write_derived_series(
    scan: Scan, folder: str | Path, description: str = "processed", overwrite: bool = False
) -> list[Path]:
    """Write ``scan`` as a DERIVED\\SECONDARY series beside its DICOM source.

    Study and patient tags are copied from the source headers; the series and every instance get new UIDs;
    pixels keep the source's representation (bits, sign, RescaleSlope/Intercept), rounded and clipped to it.

    Args:
        scan: a scan read from DICOM (``scan.dicom_headers`` set) and processed, same geometry as read.
        folder: the folder to create; it appears complete or not at all.
        description: what was done, e.g. ``"harmonized"``; goes into SeriesDescription and DerivationDescription.
        overwrite: replace an existing folder.

    Returns:
        The files written, in slice order.
    """
    if not scan.dicom_headers:
        raise ScanWriteError(folder, f"scan {scan.scan_id} was not read from DICOM; use write_new_series")
    voxels = _native_voxels(scan)
    series_uid = generate_uid()
    headers = scan.dicom_headers
    series_number = (int(headers[0].get("SeriesNumber", 0) or 0) % 100000) + 1000
    written: list[Path] = []
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        if len(headers) == 1 and int(headers[0].get("NumberOfFrames", 1) or 1) > 1:
            ds = _fresh_copy(headers[0])
            order = scan.image.meta.get("sgad_frame_order", list(range(int(ds.NumberOfFrames))))
            frames = np.empty((len(order), int(ds.Rows), int(ds.Columns)), dtype=_stored_range(ds)[2])
            for k, frame in enumerate(order):  # voxels are in anatomical order; frames go back to the file's order
                frames[frame] = _to_stored(voxels[:, :, k].T, ds, *frame_rescale(ds, frame))
            _mark_derived(ds, series_uid, description, series_number)
            _finish(ds, generate_uid(), frames)
            written.append(tmp / "IM00001.dcm")
            ds.save_as(written[-1], enforce_file_format=True)
        else:
            if voxels.shape[2] != len(headers):
                raise ScanWriteError(folder, f"scan has {voxels.shape[2]} slices but its source had {len(headers)}")
            for k, source in enumerate(headers):
                ds = _fresh_copy(source)
                slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
                pixels = _to_stored(voxels[:, :, k].T, ds, slope, intercept)
                source_ref = pydicom.Dataset()
                source_ref.ReferencedSOPClassUID = source.SOPClassUID
                source_ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
                _mark_derived(ds, series_uid, description, series_number)
                ds.SourceImageSequence = Sequence([source_ref])
                _finish(ds, generate_uid(), pixels)
                written.append(tmp / f"IM{k + 1:05d}.dcm")
                ds.save_as(written[-1], enforce_file_format=True)
    return [Path(folder) / path.name for path in written]


def write_new_series(
    volume: np.ndarray,
    affine: np.ndarray,
    folder: str | Path,
    modality: str = "MR",
    series_description: str = "sgad-med synthetic",
    patient_name: str = "Synthetic^Phantom",
    patient_id: str = "SGAD-SYNTH-0001",
    study_uid: str | None = None,
    uid_seed: str | None = None,
    acquired: datetime.datetime | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write a volume as a new single-frame CT or MR Image Storage series (one file per slice).

    Slice ``k`` of the series is ``volume[:, :, k]``, written in the given voxel order (the array is not
    reoriented), so any orientation, oblique or flipped, can be written and read back.

    Args:
        volume: voxels ``[column, row, slice]`` in the scan's units (HU for CT).
        affine: 4x4 voxel-to-RAS affine of ``volume``; its first two columns must be orthogonal.
        folder: the folder to create; it appears complete or not at all.
        modality: ``"CT"`` (int16 HU, slope 1) or ``"MR"`` (uint16 with a RescaleSlope fitted to the range).
        series_description: SeriesDescription of the new series.
        patient_name: PatientName (synthetic data only: never put real identity here).
        patient_id: PatientID.
        study_uid: StudyInstanceUID to use; a new one by default.
        uid_seed: derive every UID from this text instead of at random, so the same call writes the same
            files (sample data that can be regenerated bit for bit).
        acquired: study/series/content date and time; now by default.
        overwrite: replace an existing folder.

    Returns:
        The files written, in slice order.
    """
    volume = np.asarray(volume, dtype=np.float64)
    if volume.ndim == 2:
        volume = volume[..., None]
    lps = np.linalg.inv(LPS_TO_RAS) @ np.asarray(affine, dtype=np.float64)
    column_step, row_step = lps[:3, 0], lps[:3, 1]
    spacing = (float(np.linalg.norm(row_step)), float(np.linalg.norm(column_step)))
    row_cosine, column_cosine = column_step / spacing[1], row_step / spacing[0]
    if abs(row_cosine @ column_cosine) > 1e-4:
        raise ScanWriteError(folder, "the affine's in-plane axes are not orthogonal; DICOM cannot store that")
    if modality == "CT":
        slope, intercept = 1.0, 0.0
        representation, volume_stored = 1, np.clip(np.rint(volume), -32768, 32767)
    else:
        low, high = float(volume.min()), float(volume.max())
        # DS values hold few digits: round slope and intercept first, so the stored values use exactly these.
        slope, intercept = float(f"{((high - low) / 65535.0 or 1.0):.8g}"), float(f"{low:.8g}")
        representation, volume_stored = 0, np.clip(np.rint((volume - intercept) / slope), 0, 65535)
    dtype = np.dtype("<i2") if representation else np.dtype("<u2")
    now = acquired or datetime.datetime.now()

    def new_uid(*role: object) -> str:
        return generate_uid(entropy_srcs=[uid_seed, *map(str, role)]) if uid_seed is not None else generate_uid()

    study_uid = study_uid or new_uid("study")
    series_uid, frame_uid = new_uid("series"), new_uid("frame-of-reference")
    thickness = float(np.linalg.norm(lps[:3, 2]))
    written: list[Path] = []
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        for k in range(volume.shape[2]):
            ds = pydicom.Dataset()
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.SOPClassUID = pydicom.uid.CTImageStorage if modality == "CT" else pydicom.uid.MRImageStorage
            ds.ImageType = ["DERIVED", "PRIMARY", "AXIAL" if modality == "CT" else "OTHER"]
            ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "", "O"
            ds.StudyInstanceUID, ds.StudyID, ds.AccessionNumber = study_uid, "1", ""
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
            ds.ReferringPhysicianName = ""
            ds.Modality = modality
            ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, 1, series_description
            # a body part that is not paired makes Laterality unnecessary (dciodvfy checks the condition)
            ds.PatientPosition, ds.BodyPartExamined = "HFS", "HEAD"
            ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
            ds.Manufacturer = "sgad-med"
            ds.InstanceNumber = k + 1
            ds.PatientOrientation = ""
            ds.ImagePositionPatient = [float(f"{v:.6f}") for v in (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]]
            ds.ImageOrientationPatient = [float(f"{v:.8f}") for v in (*row_cosine, *column_cosine)]
            ds.PixelSpacing = [float(f"{s:.6f}") for s in spacing]
            ds.SliceThickness = float(f"{thickness:.6f}")
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, representation
            ds.RescaleIntercept, ds.RescaleSlope = f"{intercept:.8g}", f"{slope:.8g}"
            if modality == "CT":
                ds.RescaleType = "HU"
                ds.KVP, ds.AcquisitionNumber = "", 1
            else:
                ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "GR", "NONE", ""
                ds.MRAcquisitionType, ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "3D", "", "", ""
            pixels = volume_stored[:, :, k].T.astype(dtype)
            _finish(ds, new_uid("instance", k), pixels)
            written.append(tmp / f"IM{k + 1:05d}.dcm")
            ds.save_as(written[-1], enforce_file_format=True)
    return [Path(folder) / path.name for path in written]
