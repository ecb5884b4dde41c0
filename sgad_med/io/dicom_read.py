"""Reading DICOM: single files, multi-frame (enhanced) files and series, into RAS-oriented scans.

MONAI's ``PydicomReader`` (1.6) sorts a series by InstanceNumber, skips files that lack it, and takes the
slice spacing from the z coordinate of ImagePositionPatient alone, which is wrong for sagittal, coronal and
oblique series and for series whose instance numbers do not follow anatomy. So DICOM is read here with
pydicom directly: slices are ordered by ImagePositionPatient projected on the slice normal, and the affine is
built from ImageOrientationPatient, PixelSpacing and the positions of the first and last slices.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pydicom.errors
import torch
from monai.data import MetaTensor
from pydicom.pixels import apply_modality_lut

from sgad_med.errors import (
    InvalidScanDataError,
    MissingDecoderError,
    ScanReadError,
    UnsupportedScanError,
)
from sgad_med.io.nifti import check_finite
from sgad_med.io.orientation import to_ras
from sgad_med.io.scan import Scan, ScanSource, scan_id_for_series
from sgad_med.transforms.intensity import quantization_step

logger = logging.getLogger(__name__)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
CODECS_EXTRA = "pip install 'sgad-med[dicom-codecs]'"
# Positions closer than this (mm) along the normal are the same slice position.
_POSITION_TOLERANCE = 1e-3


def _dcmread(path: Path, stop_before_pixels: bool) -> pydicom.Dataset:
    """pydicom.dcmread, also for files without the Part 10 preamble; :class:`ScanReadError` when not DICOM."""
    try:
        try:
            return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
        except pydicom.errors.InvalidDicomError:
            # Older files often lack the preamble and file meta; a forced read is only trusted if it finds
            # the tags every DICOM object has.
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
            if "SOPClassUID" not in ds and "Modality" not in ds:
                raise
            return ds
    except Exception as err:  # pydicom raises many types for damaged files; all mean "cannot read"
        raise ScanReadError(path, f"not a readable DICOM file ({type(err).__name__}: {err})") from err


def read_header(path: Path) -> pydicom.Dataset:
    """Read a DICOM file's header (no pixel data), or raise :class:`ScanReadError` naming the file."""
    return _check_object(_dcmread(path, stop_before_pixels=True), path)


def _check_object(ds: pydicom.Dataset, path: Path) -> pydicom.Dataset:
    if "SOPClassUID" not in ds and "Rows" not in ds:
        raise ScanReadError(path, "holds no DICOM object (no SOPClassUID, no image attributes); the file is corrupt")
    return ds


def non_image_reason(header: pydicom.Dataset) -> str | None:
    """Why a DICOM object is not an image sgad_med reads (RTSTRUCT, SR, SEG, ...), or ``None`` if it is one."""
    sop_class = header.get("SOPClassUID")
    name = sop_class.name if sop_class is not None else ""
    if sop_class is not None and sop_class.is_valid and "Storage" in name and "Image Storage" not in name:
        return f"is a {name.replace(' Storage', '')} object ({header.get('Modality', '?')}), not an image"
    if "Rows" not in header or "Columns" not in header:
        return f"holds no image (no Rows/Columns; SOP class {name or 'unknown'})"
    return None


def read_dicom(source: ScanSource) -> Scan:
    """Read the DICOM files of ``source`` (one file, one multi-frame file, or one series) as a :class:`Scan`."""
    datasets = [_read_full(path) for path in source.paths]
    if len(datasets) == 1 and int(datasets[0].get("NumberOfFrames", 1) or 1) > 1:
        native, lps_affine, headers, frame_order, step = _read_multiframe(datasets[0], source.paths[0])
    else:
        native, lps_affine, headers, step = _read_single_frames(datasets, list(source.paths), source.path)
        frame_order = None
    check_finite(native, source.path)
    native_affine = LPS_TO_RAS @ lps_affine
    data, ras_affine = to_ras(native, native_affine)
    first = headers[0]
    modality = str(first.get("Modality", "OT")).upper()
    meta = {"filename_or_obj": str(source.path)}
    if frame_order is not None:
        meta["sgad_frame_order"] = frame_order
    image = MetaTensor(torch.from_numpy(data)[None], affine=torch.as_tensor(ras_affine), meta=meta)
    series_uid = str(first.get("SeriesInstanceUID", "")) or source.series_uid or str(source.path)
    return Scan(
        image=image,
        scan_id=source.scan_id or scan_id_for_series(series_uid),
        modality=modality if modality in ("CT", "MR") else "OT",
        source=source,
        native_affine=native_affine,
        dicom_headers=headers,
        quantization_step=step,
    )


def _read_full(path: Path) -> pydicom.Dataset:
    ds = _check_object(_dcmread(path, stop_before_pixels=False), path)
    reason = non_image_reason(ds)
    if reason is not None:
        raise UnsupportedScanError(path, reason, fix="sgad-med reads CT and MR image series")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise UnsupportedScanError(path, "has no pixel data", fix="sgad-med reads CT and MR image series")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise UnsupportedScanError(
            path, f"is a colour image ({ds.get('PhotometricInterpretation')}); sgad-med reads grayscale CT and MR"
        )
    return ds


def _pixels(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    """Decoded stored values, frames first for multi-frame; clear errors for missing decoders and damage."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is not None and syntax.is_compressed:
        from pydicom.pixels import get_decoder

        try:
            decoder = get_decoder(syntax)
        except NotImplementedError as err:
            problem = f"uses transfer syntax {syntax.name}, which pydicom cannot decode"
            raise UnsupportedScanError(path, problem) from err
        if not decoder.is_available:
            raise MissingDecoderError(
                path, f"pixel data is compressed ({syntax.name}) and no decoder plugin is installed", fix=CODECS_EXTRA
            )
    try:
        return ds.pixel_array
    except Exception as err:
        raise ScanReadError(path, f"pixel data cannot be decoded, the file may be truncated ({err})") from err


def _quantization_step(ds: pydicom.Dataset, slope: float) -> float:
    stored = np.float32 if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds else np.int32
    return quantization_step(stored, slope)


def plane_geometry(ds: pydicom.Dataset, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row and column direction cosines (LPS) and (row spacing, column spacing) of a single-frame header."""
    if "ImageOrientationPatient" not in ds or "PixelSpacing" not in ds:
        raise InvalidScanDataError(path, "lacks ImageOrientationPatient or PixelSpacing, so its geometry is unknown")
    return _orientation(ds.ImageOrientationPatient, path) + (_spacing(ds.PixelSpacing, path),)


def _plane_or_identity(ds: pydicom.Dataset, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Plane geometry of a lone image; identity directions when it has none (secondary captures and the like)."""
    if "ImageOrientationPatient" in ds and "ImagePositionPatient" in ds and "PixelSpacing" in ds:
        row, col, spacing = plane_geometry(ds, path)
        return row, col, spacing, np.asarray([float(v) for v in ds.ImagePositionPatient])
    logger.warning("%s: no patient geometry (ImageOrientation/PositionPatient); using identity directions", path)
    spacing = _spacing(ds.get("PixelSpacing", ds.get("ImagerPixelSpacing", [1.0, 1.0])), path)
    return np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]), spacing, np.zeros(3)


def _orientation(values: Sequence[float], path: Path) -> tuple[np.ndarray, np.ndarray]:
    iop = np.asarray([float(v) for v in values], dtype=np.float64)
    if iop.shape != (6,) or not np.all(np.isfinite(iop)):
        raise InvalidScanDataError(path, f"ImageOrientationPatient {list(values)} is not six finite numbers")
    row, col = iop[:3], iop[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-2 or abs(np.linalg.norm(col) - 1) > 1e-2 or abs(row @ col) > 1e-2:
        raise InvalidScanDataError(path, f"ImageOrientationPatient {list(values)} is not two orthogonal unit vectors")
    return row / np.linalg.norm(row), col / np.linalg.norm(col)


def _spacing(values: Sequence[float], path: Path) -> np.ndarray:
    spacing = np.asarray([float(v) for v in values], dtype=np.float64)
    if spacing.shape != (2,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InvalidScanDataError(path, f"PixelSpacing {list(values)} is not two positive numbers")
    return spacing


def _affine(row: np.ndarray, col: np.ndarray, spacing: np.ndarray, first: np.ndarray, step: np.ndarray) -> np.ndarray:
    """LPS affine of voxel (i = column, j = row, k = slice)."""
    affine = np.eye(4)
    affine[:3, 0] = row * spacing[1]
    affine[:3, 1] = col * spacing[0]
    affine[:3, 2] = step
    affine[:3, 3] = first
    return affine


def _thickness(ds: pydicom.Dataset) -> float:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = ds.get(keyword)
        if value not in (None, "") and float(value) > 0:
            return float(value)
    return 1.0


def _order_along_normal(positions: np.ndarray, normal: np.ndarray, paths: Sequence[Path], folder: Path) -> np.ndarray:
    distances = positions @ normal
    order = np.argsort(distances, kind="stable")
    gaps = np.diff(distances[order])
    if np.any(gaps < _POSITION_TOLERANCE):
        dup = int(np.argmax(gaps < _POSITION_TOLERANCE))
        raise UnsupportedScanError(
            folder,
            f"two slices share one position ({paths[order[dup]].name} and {paths[order[dup + 1]].name}); "
            "the series holds several volumes (echoes, phases or repeats)",
            fix="split the volumes into separate folders",
        )
    if len(gaps) > 1 and np.ptp(gaps) > max(0.01 * np.median(gaps), 1e-3):
        raise UnsupportedScanError(
            folder,
            f"slice spacing is irregular ({gaps.min():.3g}..{gaps.max():.3g} mm); slices are missing or the series "
            "mixes acquisitions",
            fix="check the series is complete",
        )
    return order


def _read_single_frames(
    datasets: list[pydicom.Dataset], paths: list[Path], folder: Path
) -> tuple[np.ndarray, np.ndarray, list[pydicom.Dataset], float]:
    if len(datasets) == 1:
        ds, path = datasets[0], paths[0]
        stored = _pixels(ds, path)
        if stored.ndim != 2:
            raise UnsupportedScanError(path, f"pixel data has shape {stored.shape}; expected one grayscale slice")
        row, col, spacing, first = _plane_or_identity(ds, path)
        affine = _affine(row, col, spacing, first, np.cross(row, col) * _thickness(ds))
        values = apply_modality_lut(stored, ds).astype(np.float32)
        step = _quantization_step(ds, float(ds.get("RescaleSlope", 1)))
        return values.T[..., None], affine, [_strip_pixels(ds)], step

    geometry = [plane_geometry(ds, path) for ds, path in zip(datasets, paths)]
    row, col, spacing = geometry[0]
    for (r, c, s), ds, path in zip(geometry, datasets, paths):
        if np.abs(r - row).max() > 1e-3 or np.abs(c - col).max() > 1e-3 or np.abs(s - spacing).max() > 1e-3:
            problem = f"{path.name} has a different orientation or pixel spacing from the rest"
            raise UnsupportedScanError(folder, problem)
        if (ds.Rows, ds.Columns) != (datasets[0].Rows, datasets[0].Columns):
            raise UnsupportedScanError(folder, f"{path.name} has a different image size from the rest of the series")
    if any("ImagePositionPatient" not in ds for ds in datasets):
        missing = next(path for ds, path in zip(datasets, paths) if "ImagePositionPatient" not in ds)
        raise InvalidScanDataError(missing, "lacks ImagePositionPatient, so the series cannot be ordered")
    positions = np.asarray([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    order = _order_along_normal(positions, np.cross(row, col), paths, folder)
    slices, steps = [], []
    for index in order:
        ds, path = datasets[index], paths[index]
        stored = _pixels(ds, path)
        if stored.ndim != 2:
            raise UnsupportedScanError(path, f"pixel data has shape {stored.shape}; expected one grayscale slice")
        slices.append(apply_modality_lut(stored, ds).astype(np.float32).T)
        steps.append(_quantization_step(ds, float(ds.get("RescaleSlope", 1))))
    step_vector = (positions[order[-1]] - positions[order[0]]) / (len(order) - 1)
    affine = _affine(row, col, spacing, positions[order[0]], step_vector)
    headers = [_strip_pixels(datasets[index]) for index in order]
    return np.stack(slices, axis=-1), affine, headers, max(steps)


def functional_group(ds: pydicom.Dataset, frame: int, sequence: str) -> pydicom.Dataset | None:
    """The item of functional-group ``sequence`` for ``frame``: per-frame if present there, else shared."""
    for groups in (ds.get("PerFrameFunctionalGroupsSequence"), ds.get("SharedFunctionalGroupsSequence")):
        if not groups:
            continue
        item = groups[frame] if groups is ds.get("PerFrameFunctionalGroupsSequence") else groups[0]
        if sequence in item and len(item[sequence].value):
            return item[sequence].value[0]
    return None


def frame_rescale(ds: pydicom.Dataset, frame: int) -> tuple[float, float]:
    """(slope, intercept) of one frame of a multi-frame image (functional groups, else the top-level tags)."""
    item = functional_group(ds, frame, "PixelValueTransformationSequence")
    source = item if item is not None else ds
    return float(source.get("RescaleSlope", 1) or 1), float(source.get("RescaleIntercept", 0) or 0)


def _read_multiframe(
    ds: pydicom.Dataset, path: Path
) -> tuple[np.ndarray, np.ndarray, list[pydicom.Dataset], list[int], float]:
    stored = _pixels(ds, path)
    frames = int(ds.NumberOfFrames)
    if stored.ndim != 3 or stored.shape[0] != frames:
        raise UnsupportedScanError(path, f"pixel data has shape {stored.shape}; expected {frames} grayscale frames")
    if "PerFrameFunctionalGroupsSequence" in ds:
        orientation = functional_group(ds, 0, "PlaneOrientationSequence")
        measures = functional_group(ds, 0, "PixelMeasuresSequence")
        if orientation is None or measures is None:
            raise InvalidScanDataError(path, "multi-frame image lacks plane orientation or pixel measures")
        row, col = _orientation(orientation.ImageOrientationPatient, path)
        spacing = _spacing(measures.PixelSpacing, path)
        positions = []
        for frame in range(frames):
            plane = functional_group(ds, frame, "PlanePositionSequence")
            if plane is None or "ImagePositionPatient" not in plane:
                raise InvalidScanDataError(path, f"frame {frame + 1} has no ImagePositionPatient")
            positions.append([float(v) for v in plane.ImagePositionPatient])
        positions_array = np.asarray(positions)
        frame_paths = [Path(f"{path.name} frame {i + 1}") for i in range(frames)]
        order = _order_along_normal(positions_array, np.cross(row, col), frame_paths, path)
        step_vector = (positions_array[order[-1]] - positions_array[order[0]]) / max(frames - 1, 1)
        first = positions_array[order[0]]
    else:  # a classic multi-frame image: frames are equally spaced along the normal of one plane
        row, col, spacing, first = _plane_or_identity(ds, path)
        step_vector = np.cross(row, col) * _thickness(ds)
        order = np.arange(frames)
    volume, steps = [], []
    for frame in order:
        slope, intercept = frame_rescale(ds, int(frame))
        volume.append((stored[frame].astype(np.float64) * slope + intercept).astype(np.float32).T)
        steps.append(_quantization_step(ds, slope))
    affine = _affine(row, col, spacing, first, step_vector)
    return np.stack(volume, axis=-1), affine, [_strip_pixels(ds)], [int(i) for i in order], max(steps)


def _strip_pixels(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Drop the (already decoded) pixel data from our in-memory copy; the header is kept for writing back."""
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds
