"""Reading DICOM: single files, multi-frame (enhanced) files and series, into RAS-oriented scans.

MONAI's ``PydicomReader`` (1.6) sorts a series by InstanceNumber, skips files that lack it, and takes the
slice spacing from the z coordinate of ImagePositionPatient alone, which is wrong for sagittal, coronal and
oblique series and for series whose instance numbers do not follow anatomy. So DICOM is read here with
pydicom directly: slices are ordered by ImagePositionPatient projected on the slice normal, and the affine is
built from ImageOrientationPatient, PixelSpacing and the positions of the first and last slices.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pydicom
import pydicom.errors
import torch
from monai.data import MetaTensor
from pydicom.encaps import parse_fragments
from pydicom.pixels import apply_modality_lut
from pydicom.uid import UID

from sgad_med.errors import (
    InvalidScanDataError,
    MissingDecoderError,
    ScanReadError,
    UnsupportedScanError,
)
from sgad_med.io.nifti import MAX_VOXELS, check_finite, oriented
from sgad_med.io.scan import Scan, ScanSource, scan_id_for_series
from sgad_med.transforms.intensity import quantization_step

logger = logging.getLogger(__name__)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
CODECS_EXTRA = "pip install 'sgad-med[dicom-codecs]'"
# Positions closer than this (mm) along the normal are the same slice position.
_POSITION_TOLERANCE = 1e-3
# What using a damaged header value raises: pydicom converts values lazily and keeps whatever type the file's
# VR gave, so text where a number belongs (or a sequence, or bytes) fails wherever it is first used.
_VALUE_ERRORS = (ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError, NotImplementedError)


@contextlib.contextmanager
def _header_values(path: Path) -> Iterator[None]:
    """Turn the error a damaged header value raises where it is used into an :class:`InvalidScanDataError`."""
    try:
        yield
    except _VALUE_ERRORS as err:
        problem = f"header holds a value that cannot be interpreted ({_reason(err)})"
        raise InvalidScanDataError(path, problem, fix="the file is damaged; re-export it") from err


def _reason(err: BaseException) -> str:
    """The error's type and first line (pydicom puts whole tracebacks into some messages)."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200] if lines else ''}"


def _show(value: object) -> str:
    text = repr(list(value) if isinstance(value, pydicom.multival.MultiValue) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def _dcmread(path: Path, stop_before_pixels: bool) -> pydicom.Dataset:
    """pydicom.dcmread, also for files without the Part 10 preamble; :class:`ScanReadError` when not DICOM.

    The file is memory-mapped rather than streamed: a damaged element length then reads at most the bytes the
    file holds, where a file object first allocates the (possibly many gigabytes) length the element claims.
    Every element is converted here, inside the error handling, rather than lazily wherever it is first used.
    """
    try:
        if path.stat().st_size == 0:
            raise ScanReadError(path, "not a readable DICOM file (it is empty)")
        with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            try:
                ds = pydicom.dcmread(mapped, stop_before_pixels=stop_before_pixels)
            except pydicom.errors.InvalidDicomError:
                # Older files often lack the preamble and file meta; a forced read is only trusted if it finds
                # the tags every DICOM object has.
                mapped.seek(0)
                ds = pydicom.dcmread(mapped, stop_before_pixels=stop_before_pixels, force=True)
                if "SOPClassUID" not in ds and "Modality" not in ds:
                    raise
            ds.walk(lambda dataset, element: None)
            if getattr(ds, "file_meta", None) is not None:
                ds.file_meta.walk(lambda dataset, element: None)
        ds.filename = str(path)  # as dcmread(path) would have set it
        ds.buffer = None  # the map is closed: nothing reads from it again, and copies must not try to pickle it
        return ds
    except ScanReadError:
        raise
    except Exception as err:  # pydicom raises many types for damaged files; all mean "cannot read"
        raise ScanReadError(path, f"not a readable DICOM file ({_reason(err)})") from err


def read_header(path: Path) -> pydicom.Dataset:
    """Read a DICOM file's header (no pixel data), or raise :class:`ScanReadError` naming the file."""
    return _check_object(_dcmread(path, stop_before_pixels=True), path)


def _whole(ds: pydicom.Dataset, keyword: str, path: Path, default: int) -> int:
    """A whole-number attribute (Rows, NumberOfFrames, ...); ``default`` when absent or empty."""
    value = ds.get(keyword, default)
    if value is None or value == "":
        return default
    try:
        number = float(value)
        if number.is_integer():
            return int(number)
    except (TypeError, ValueError, OverflowError):
        pass
    raise InvalidScanDataError(path, f"{keyword} is {_show(value)}, not a whole number")


def _numbers(values: object, keyword: str, path: Path, count: int) -> np.ndarray:
    """``count`` finite numbers from a DS/IS/FD value, whatever type a damaged file gave it."""
    items = [values] if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__") else values
    try:
        numbers = np.asarray([float(v) for v in items], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        numbers = None
    if numbers is None or numbers.shape != (count,) or not np.all(np.isfinite(numbers)):
        what = "a finite number" if count == 1 else f"{count} finite numbers"
        raise InvalidScanDataError(path, f"{keyword} {_show(values)} is not {what}")
    return numbers


def _check_size(ds: pydicom.Dataset, path: Path) -> None:
    """Refuse sizes no image has, before any decoder allocates what the header claims."""
    rows, columns = _whole(ds, "Rows", path, 0), _whole(ds, "Columns", path, 0)
    frames = _whole(ds, "NumberOfFrames", path, 1) or 1
    if rows < 1 or columns < 1 or frames < 1:
        raise InvalidScanDataError(
            path,
            f"header gives Rows {rows}, Columns {columns}, NumberOfFrames {frames}; an image needs at least one pixel",
        )
    if rows * columns * frames > MAX_VOXELS:
        raise InvalidScanDataError(
            path,
            f"header gives an absurd image size ({frames} frames of {rows} x {columns}); "
            "the header is probably corrupt",
        )
    syntax = _transfer_syntax(ds, path)
    if syntax is not None and syntax.is_encapsulated and "PixelData" in ds:
        # every frame is at least one fragment, so a frame count beyond the fragments is a damaged header
        fragments = parse_fragments(ds.PixelData)[0]
        if frames > fragments:
            raise InvalidScanDataError(
                path, f"NumberOfFrames is {frames} but the compressed pixel data holds {fragments} fragments"
            )


def _check_object(ds: pydicom.Dataset, path: Path) -> pydicom.Dataset:
    if "SOPClassUID" not in ds and "Rows" not in ds:
        raise ScanReadError(path, "holds no DICOM object (no SOPClassUID, no image attributes); the file is corrupt")
    return ds


def non_image_reason(header: pydicom.Dataset) -> str | None:
    """Why a DICOM object is not an image sgad_med reads (RTSTRUCT, SR, SEG, ...), or ``None`` if it is one."""
    sop_class = header.get("SOPClassUID")
    if sop_class is not None and not isinstance(sop_class, UID):  # a damaged file may store it under another VR
        sop_class = UID(sop_class) if isinstance(sop_class, str) else None
    name = sop_class.name if sop_class is not None else ""
    if sop_class is not None and sop_class.is_valid and "Storage" in name and "Image Storage" not in name:
        return f"is a {name.replace(' Storage', '')} object ({header.get('Modality', '?')}), not an image"
    if "Rows" not in header or "Columns" not in header:
        return f"holds no image (no Rows/Columns; SOP class {name or 'unknown'})"
    return None


def read_dicom(source: ScanSource) -> Scan:
    """Read the DICOM files of ``source`` (one file, one multi-frame file, or one series) as a :class:`Scan`."""
    datasets = [_read_full(path) for path in source.paths]
    with _header_values(source.path):
        if len(datasets) == 1 and _whole(datasets[0], "NumberOfFrames", source.paths[0], 1) > 1:
            native, lps_affine, headers, frame_order, step = _read_multiframe(datasets[0], source.paths[0])
        else:
            native, lps_affine, headers, step = _read_single_frames(datasets, list(source.paths), source.path)
            frame_order = None
    check_finite(native, source.path)
    if not np.all(np.isfinite(lps_affine)) or abs(np.linalg.det(lps_affine[:3, :3])) < 1e-12:
        raise InvalidScanDataError(
            source.path, "positions, orientation and spacing give a degenerate or non-finite geometry"
        )
    native_affine = LPS_TO_RAS @ lps_affine
    data, ras_affine = oriented(native, native_affine, source.path)
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
    with _header_values(path):
        reason = non_image_reason(ds)
        if reason is not None:
            raise UnsupportedScanError(path, reason, fix="sgad-med reads CT and MR image series")
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            raise UnsupportedScanError(path, "has no pixel data", fix="sgad-med reads CT and MR image series")
        if _whole(ds, "SamplesPerPixel", path, 1) != 1:
            raise UnsupportedScanError(
                path, f"is a colour image ({ds.get('PhotometricInterpretation')}); sgad-med reads grayscale CT and MR"
            )
        _check_size(ds, path)
    return ds


def _transfer_syntax(ds: pydicom.Dataset, path: Path) -> UID | None:
    """The declared transfer syntax, refused when it is not one (a damaged or hand-edited file meta)."""
    file_meta = getattr(ds, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if syntax is None:
        return None
    syntax = UID(str(syntax))
    if not syntax.is_transfer_syntax:
        raise UnsupportedScanError(path, f"declares transfer syntax {_show(str(syntax))}, which is not one DICOM has")
    return syntax


def _pixels(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    """Decoded stored values, frames first for multi-frame; clear errors for missing decoders and damage."""
    syntax = _transfer_syntax(ds, path)
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
        raise ScanReadError(path, f"pixel data cannot be decoded, the file may be truncated ({_reason(err)})") from err
    except BaseException as err:
        # pylibjpeg-rle is written in Rust: its panic on damaged data arrives as pyo3's PanicException,
        # which derives from BaseException; anything else (KeyboardInterrupt, ...) goes on up
        if type(err).__name__ != "PanicException":
            raise
        raise ScanReadError(path, f"pixel data cannot be decoded, the file is damaged ({_reason(err)})") from err


def _modality_values(stored: np.ndarray, ds: pydicom.Dataset, path: Path) -> np.ndarray:
    """Stored values through RescaleSlope/Intercept (or the modality LUT), as float32."""
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        if ds.get(keyword) not in (None, ""):
            _numbers(ds.get(keyword), keyword, path, 1)
    try:
        return apply_modality_lut(stored, ds).astype(np.float32)
    except _VALUE_ERRORS as err:
        raise InvalidScanDataError(path, f"its modality LUT cannot be applied ({_reason(err)})") from err


def _slope(ds: pydicom.Dataset, path: Path) -> float:
    value = ds.get("RescaleSlope")
    return 1.0 if value in (None, "") else float(_numbers(value, "RescaleSlope", path, 1)[0])


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
        return row, col, spacing, _position(ds.ImagePositionPatient, path)
    logger.warning("%s: no patient geometry (ImageOrientation/PositionPatient); using identity directions", path)
    spacing = _spacing(ds.get("PixelSpacing", ds.get("ImagerPixelSpacing", [1.0, 1.0])), path)
    return np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]), spacing, np.zeros(3)


def _position(values: Sequence[float], path: Path) -> np.ndarray:
    return _numbers(values, "ImagePositionPatient", path, 3)


def _orientation(values: Sequence[float], path: Path) -> tuple[np.ndarray, np.ndarray]:
    iop = _numbers(values, "ImageOrientationPatient", path, 6)
    row, col = iop[:3], iop[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-2 or abs(np.linalg.norm(col) - 1) > 1e-2 or abs(row @ col) > 1e-2:
        raise InvalidScanDataError(path, f"ImageOrientationPatient {_show(values)} is not two orthogonal unit vectors")
    return row / np.linalg.norm(row), col / np.linalg.norm(col)


def _spacing(values: Sequence[float], path: Path) -> np.ndarray:
    spacing = _numbers(values, "PixelSpacing", path, 2)
    if np.any(spacing <= 0):
        raise InvalidScanDataError(path, f"PixelSpacing {_show(values)} is not two positive numbers")
    return spacing


def _affine(row: np.ndarray, col: np.ndarray, spacing: np.ndarray, first: np.ndarray, step: np.ndarray) -> np.ndarray:
    """LPS affine of voxel (i = column, j = row, k = slice)."""
    affine = np.eye(4)
    affine[:3, 0] = row * spacing[1]
    affine[:3, 1] = col * spacing[0]
    affine[:3, 2] = step
    affine[:3, 3] = first
    return affine


def _thickness(ds: pydicom.Dataset, path: Path) -> float:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = ds.get(keyword)
        if value not in (None, "") and (thickness := float(_numbers(value, keyword, path, 1)[0])) > 0:
            return thickness
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
        affine = _affine(row, col, spacing, first, np.cross(row, col) * _thickness(ds, path))
        values = _modality_values(stored, ds, path)
        step = _quantization_step(ds, _slope(ds, path))
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
    positions = np.asarray([_position(ds.ImagePositionPatient, path) for ds, path in zip(datasets, paths)])
    order = _order_along_normal(positions, np.cross(row, col), paths, folder)
    slices, steps = [], []
    for index in order:
        ds, path = datasets[index], paths[index]
        stored = _pixels(ds, path)
        if stored.ndim != 2:
            raise UnsupportedScanError(path, f"pixel data has shape {stored.shape}; expected one grayscale slice")
        slices.append(_modality_values(stored, ds, path).T)
        steps.append(_quantization_step(ds, _slope(ds, path)))
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
    frames = _whole(ds, "NumberOfFrames", path, 1)
    if stored.ndim != 3 or stored.shape[0] != frames:
        raise UnsupportedScanError(path, f"pixel data has shape {stored.shape}; expected {frames} grayscale frames")
    if "PerFrameFunctionalGroupsSequence" in ds:
        per_frame = ds.PerFrameFunctionalGroupsSequence
        if not isinstance(per_frame, pydicom.Sequence) or len(per_frame) != frames:
            count = len(per_frame) if isinstance(per_frame, pydicom.Sequence) else "no"
            raise InvalidScanDataError(
                path, f"NumberOfFrames is {frames} but the per-frame functional groups describe {count} frames"
            )
        orientation = functional_group(ds, 0, "PlaneOrientationSequence")
        measures = functional_group(ds, 0, "PixelMeasuresSequence")
        if (
            orientation is None
            or measures is None
            or "ImageOrientationPatient" not in orientation
            or "PixelSpacing" not in measures
        ):
            raise InvalidScanDataError(path, "multi-frame image lacks plane orientation or pixel measures")
        row, col = _orientation(orientation.ImageOrientationPatient, path)
        spacing = _spacing(measures.PixelSpacing, path)
        positions = []
        for frame in range(frames):
            plane = functional_group(ds, frame, "PlanePositionSequence")
            if plane is None or "ImagePositionPatient" not in plane:
                raise InvalidScanDataError(path, f"frame {frame + 1} has no ImagePositionPatient")
            positions.append(_position(plane.ImagePositionPatient, path))
        positions_array = np.asarray(positions)
        frame_paths = [Path(f"{path.name} frame {i + 1}") for i in range(frames)]
        order = _order_along_normal(positions_array, np.cross(row, col), frame_paths, path)
        step_vector = (positions_array[order[-1]] - positions_array[order[0]]) / max(frames - 1, 1)
        first = positions_array[order[0]]
    else:  # a classic multi-frame image: frames are equally spaced along the normal of one plane
        row, col, spacing, first = _plane_or_identity(ds, path)
        step_vector = np.cross(row, col) * _thickness(ds, path)
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
