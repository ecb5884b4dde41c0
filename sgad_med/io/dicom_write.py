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
from sgad_med.io.deidentify import deidentify
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
    """Values in the scan's units -> stored pixel values of ``ds``'s representation (rounded).

    The representation must hold them (:func:`_fit_representation` sees to it); clipping here is only a guard
    against rounding at the very ends of the range.
    """
    low, high, dtype = _stored_range(ds)
    stored = np.rint((values - intercept) / (slope or 1.0))
    return np.clip(stored, low, high).astype(dtype)


def _stored_extent(values: np.ndarray, slope: float, intercept: float) -> tuple[float, float]:
    stored = np.rint((values - intercept) / (slope or 1.0))
    return float(stored.min()), float(stored.max())


def _new_rescale(values: np.ndarray) -> tuple[float, float]:
    """Slope and intercept that put ``values`` into 0..65535 (unsigned 16 bits), rounded to what DS can hold."""
    low, high = float(values.min()), float(values.max())
    intercept = float(f"{low:.8g}")
    slope = float(f"{((high - intercept) / 65535.0 or 1.0):.8g}")
    while np.rint((high - intercept) / slope) > 65535:  # rounding the slope down can push the top out
        slope = float(f"{slope * (1 + 1e-7):.8g}")
    return slope, intercept


def _fit_representation(
    ds: pydicom.Dataset, slices: list[np.ndarray], rescales: list[tuple[float, float]], one_rescale: bool = False
) -> tuple[list[tuple[float, float]], bool]:
    """Choose the stored representation of ``ds`` so that every slice's values survive, and return the rescales.

    Processing can move values outside what the source's bits and RescaleSlope/Intercept can store (a
    brighter scan, a negative offset): storing them in the source's representation would clip them. The
    source's representation is kept when it holds every value (the common case, bit-compatible with the
    source). Otherwise the pixels become 16 bits, signed when needed, with the source's slopes (the same
    quantization step); only when even that cannot hold them does each slice get a new slope and intercept.
    Every value then reads back within half a quantization step.

    Args:
        ds: the header to write (modified: BitsAllocated, BitsStored, HighBit, PixelRepresentation).
        slices: the values of each slice (or frame) in the scan's units.
        rescales: the source's (slope, intercept) of each slice.
        one_rescale: the file can hold only one rescale for all slices (a classic multi-frame image).

    Returns:
        The (slope, intercept) to store each slice with, and whether the representation changed.
    """
    extents = [_stored_extent(values, *rescale) for values, rescale in zip(slices, rescales)]
    low, high, _ = _stored_range(ds)
    if all(low <= lo and hi <= high for lo, hi in extents):
        return rescales, False
    lowest, highest = min(lo for lo, _ in extents), max(hi for _, hi in extents)
    if lowest >= 0 and highest <= 65535:
        signed = False
    elif lowest >= -32768 and highest <= 32767:
        signed = True
    else:
        signed = False
        if one_rescale:
            rescales = [_new_rescale(np.concatenate([values.ravel() for values in slices]))] * len(slices)
        else:
            rescales = [_new_rescale(values) for values in slices]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, int(signed)
    for keyword in ("PixelPaddingValue", "PixelPaddingRangeLimit"):  # stored values of the old representation
        if keyword in ds:
            delattr(ds, keyword)
    return rescales, True


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
    mark = f"[{description}]" if description.startswith("sgad-med") else f"[sgad-med {description}]"
    old = str(ds.get("SeriesDescription", "")).strip()
    room = 64 - len(mark) - 1  # LO holds 64 characters: the source's description is cut, never the mark
    ds.SeriesDescription = (f"{old[:room].rstrip()} {mark}" if old and room > 0 else mark)[:64]
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


def _copy_representation(chosen: pydicom.Dataset, ds: pydicom.Dataset, slope: float, intercept: float) -> None:
    """Give ``ds`` the pixel representation chosen for the series and its slice's rescale."""
    for keyword in ("BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
        setattr(ds, keyword, chosen.get(keyword))
    for keyword in ("PixelPaddingValue", "PixelPaddingRangeLimit"):  # stored values of the old representation
        if keyword in ds:
            delattr(ds, keyword)
    ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.8g}", f"{intercept:.8g}"


def _set_frame_rescales(ds: pydicom.Dataset, rescales: list[tuple[float, float]]) -> None:
    """Write one rescale per frame into the per-frame functional groups (enhanced multi-frame images)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    for (slope, intercept), item in zip(rescales, per_frame or []):
        transform = pydicom.Dataset()
        transform.RescaleSlope, transform.RescaleIntercept = f"{slope:.8g}", f"{intercept:.8g}"
        transform.RescaleType = "US"
        item.PixelValueTransformationSequence = Sequence([transform])
    if shared and "PixelValueTransformationSequence" in shared[0]:
        del shared[0].PixelValueTransformationSequence  # the per-frame items now say it
    if not per_frame:  # a classic multi-frame: one rescale for every frame, at the top level
        slope, intercept = rescales[0]
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.8g}", f"{intercept:.8g}"


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
    scan: Scan,
    folder: str | Path,
    description: str = "processed",
    overwrite: bool = False,
    deidentify_salt: str | None = None,
) -> list[Path]:
    """Write ``scan`` as a DERIVED\\SECONDARY series beside its DICOM source.

    Study and patient tags are copied from the source headers; the series and every instance get new UIDs;
    pixels keep the source's representation (bits, sign, RescaleSlope/Intercept) when it holds every value;
    otherwise they become 16 bits, signed if needed, and get a new rescale only if that is not enough, so that
    no value is clipped: every voxel reads back within half a quantization step.

    Args:
        scan: a scan read from DICOM (``scan.dicom_headers`` set) and processed, same geometry as read.
        folder: the folder to create; it appears complete or not at all.
        description: what was done, e.g. ``"harmonized"``; goes into SeriesDescription and DerivationDescription.
        overwrite: replace an existing folder.
        deidentify_salt: de-identify the files (:func:`sgad_med.io.deidentify.deidentify`, PS3.15 Annex E basic
            profile) with this salt for the replacement UIDs and pseudonyms; ``None`` keeps the source's identity.

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
            # voxels are in anatomical order; frames go back to the file's order
            values = [voxels[:, :, order.index(frame)].T for frame in range(len(order))]
            source_rescales = [frame_rescale(ds, frame) for frame in range(len(order))]
            per_frame = "PerFrameFunctionalGroupsSequence" in ds
            rescales, _ = _fit_representation(ds, values, source_rescales, one_rescale=not per_frame)
            if rescales != source_rescales:
                _set_frame_rescales(ds, rescales)
            frames = np.empty((len(order), int(ds.Rows), int(ds.Columns)), dtype=_stored_range(ds)[2])
            for frame in range(len(order)):
                frames[frame] = _to_stored(values[frame], ds, *rescales[frame])
            _mark_derived(ds, series_uid, description, series_number)
            if deidentify_salt is not None:
                deidentify(ds, deidentify_salt)
            _finish(ds, generate_uid(), frames)
            written.append(tmp / "IM00001.dcm")
            ds.save_as(written[-1], enforce_file_format=True)
        else:
            if voxels.shape[2] != len(headers):
                raise ScanWriteError(folder, f"scan has {voxels.shape[2]} slices but its source had {len(headers)}")
            values = [voxels[:, :, k].T for k in range(len(headers))]
            source_rescales = [
                (float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)) for ds in headers
            ]
            # one representation for the whole series, chosen on a copy of the first header
            representation = _fresh_copy(headers[0])
            rescales, changed = _fit_representation(representation, values, source_rescales)
            for k, source in enumerate(headers):
                ds = _fresh_copy(source)
                if changed:
                    _copy_representation(representation, ds, *rescales[k])
                pixels = _to_stored(values[k], ds, *rescales[k])
                source_ref = pydicom.Dataset()
                source_ref.ReferencedSOPClassUID = source.SOPClassUID
                source_ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
                _mark_derived(ds, series_uid, description, series_number)
                ds.SourceImageSequence = Sequence([source_ref])
                if deidentify_salt is not None:
                    deidentify(ds, deidentify_salt)
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
