"""``load_scan`` and ``save_scan``: the two calls research scripts use."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from sgad_med.errors import ScanWriteError, UnsupportedScanError
from sgad_med.io.dicom_read import read_dicom
from sgad_med.io.dicom_write import write_derived_series, write_new_series
from sgad_med.io.discover import discover_scans
from sgad_med.io.nifti import is_nifti, read_nifti, write_nifti
from sgad_med.io.scan import Scan, ScanSource, scan_id_for_nifti


def load_scan(
    source: str | os.PathLike | ScanSource, volume: int | None = None, modality: str | None = None
) -> Scan:
    """Read one scan: a NIfTI file, a DICOM file, a folder holding one DICOM series, or a discovered source.

    Args:
        source: the path, or a :class:`ScanSource` from :func:`discover_scans`.
        volume: for a 4D NIfTI, which volume to read (0-based).
        modality: ``"CT"``, ``"MR"`` or ``"OT"``, overriding what the file says. NIfTI headers do not record
            the modality, so a NIfTI scan is ``"OT"`` unless this is given (a CT in HU wants ``"CT"``).

    Returns:
        The scan, RAS-oriented, in its own units.

    Raises:
        SGADError: a subclass naming the file and the problem (unreadable, not an image, NaN voxels, ...).
    """
    if not isinstance(source, ScanSource):
        path = Path(source)
        found = discover_scans(path)
        images = [s for s in found if s.skip_reason is None]
        if not images:
            raise UnsupportedScanError(path, found[0].skip_reason or "holds no image")
        if len(images) > 1:
            raise UnsupportedScanError(
                path, f"holds {len(images)} scans", fix="pass one file or series folder, or use discover_scans"
            )
        source = images[0]
        if volume is not None:
            source = ScanSource(source.kind, source.paths, scan_id_for_nifti(source.paths[0], volume), volume=volume)
    if source.problem is not None:
        raise source.problem
    if source.skip_reason is not None:
        raise UnsupportedScanError(source.path, source.skip_reason)
    scan = read_nifti(source) if source.kind == "nifti" else read_dicom(source)
    if modality is not None:
        if modality.upper() not in ("CT", "MR", "OT"):
            raise UnsupportedScanError(source.path, f"unknown modality {modality!r}", fix="use CT, MR or OT")
        scan.modality = modality.upper()
    return scan


def save_scan(
    scan: Scan,
    path: str | os.PathLike,
    format: Literal["auto", "nifti", "dicom"] = "auto",
    description: str = "processed",
    overwrite: bool = False,
    deidentify_salt: str | None = None,
) -> list[Path]:
    """Write a scan as NIfTI (the input's affine and shape) or as a DICOM series.

    For DICOM, a scan read from DICOM becomes a derived series of its source (same study, new series);
    any other scan becomes a new series. The output appears atomically.

    Args:
        scan: the scan to write.
        path: a ``.nii``/``.nii.gz`` file, or for DICOM a folder to create.
        format: ``"nifti"``, ``"dicom"``, or ``"auto"`` (NIfTI when the name ends in .nii/.nii.gz, else DICOM).
        description: for DICOM, what was done to the scan (SeriesDescription, DerivationDescription).
        overwrite: replace an existing output.
        deidentify_salt: for a derived DICOM series, de-identify it (PS3.15 Annex E basic profile, see
            :mod:`sgad_med.io.deidentify`) with this salt; ``None`` keeps the source's patient and study identity.

    Returns:
        The files written.
    """
    path = Path(path)
    if format == "auto":
        format = "nifti" if is_nifti(path) else "dicom"
    if format == "nifti":
        if not is_nifti(path):
            raise ScanWriteError(path, "a NIfTI output needs a .nii or .nii.gz name")
        return [write_nifti(scan, path, overwrite=overwrite)]
    if format != "dicom":
        raise ScanWriteError(path, f"unknown format {format!r}", fix="use 'nifti' or 'dicom'")
    if scan.dicom_headers:
        return write_derived_series(scan, path, description=description, overwrite=overwrite,
                                    deidentify_salt=deidentify_salt)
    volume = scan.image.detach().cpu().numpy()[0]
    modality = scan.modality if scan.modality in ("CT", "MR") else "MR"
    return write_new_series(volume, scan.affine, path, modality=modality, overwrite=overwrite)
