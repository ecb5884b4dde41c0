"""The in-memory scan: a RAS-oriented MetaTensor plus what is needed to write it back like its source."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
import torch
from monai.data import MetaTensor

SourceKind = Literal["nifti", "dicom"]


@dataclass(frozen=True)
class ScanSource:
    """Where one scan comes from: a NIfTI file (one volume of it) or the files of one DICOM series.

    ``problem`` is set when discovery already knows the scan cannot be read (a corrupt file, say): the
    source is still listed so that a batch can report it as failed, and ``load_scan`` raises it.
    ``skip_reason`` is set for DICOM objects that are not images (RTSTRUCT, SR, SEG, ...).

    Args:
        kind: ``"nifti"`` or ``"dicom"``.
        paths: the files, sorted; one for NIfTI and for a single or multi-frame DICOM file.
        scan_id: stable, folder-safe identifier (see :func:`scan_id_for_nifti` and :func:`scan_id_for_series`).
        series_uid: the DICOM SeriesInstanceUID, ``None`` for NIfTI.
        volume: for a 4D NIfTI, which volume this scan is.
        problem: an ``SGADError`` found during discovery, raised again by ``load_scan``.
        skip_reason: why this source is not a scan to process, if it is not.
    """

    kind: SourceKind
    paths: tuple[Path, ...]
    scan_id: str
    series_uid: str | None = None
    volume: int | None = None
    problem: Exception | None = None
    skip_reason: str | None = None

    @property
    def path(self) -> Path:
        """The file (NIfTI, single DICOM) or the common folder of the series files."""
        if len(self.paths) == 1:
            return self.paths[0]
        return Path(*Path(self.paths[0]).parts[: _common_prefix_len([p.parts for p in self.paths])])


def _common_prefix_len(parts: list[tuple[str, ...]]) -> int:
    n = 0
    for column in zip(*parts):
        if len(set(column)) != 1:
            break
        n += 1
    return n


@dataclass
class Scan:
    """One 3D scan in memory.

    Args:
        image: float32 MetaTensor ``[C, H, W, D]`` in the scan's own units (HU for CT), axes oriented to
            RAS (first axis towards Right, second Anterior, third Superior, as close as the acquisition
            allows), so the last axis is the slice axis of an axial scan. ``image.affine`` is the RAS affine.
        scan_id: stable identifier, safe as a folder name; never derived from patient identity.
        modality: ``"CT"``, ``"MR"`` or ``"OT"``.
        source: where the scan was read from (``None`` for scans made in memory).
        native_affine: the affine of the voxel array as stored in the source file (nibabel's convention,
            RAS world), used to write outputs back with the input's voxel order and shape.
        dicom_headers: for DICOM sources, the source headers without pixel data, one per slice in the
            source's slice order (or one for a multi-frame file); the derived-series writer copies them.
        quantization_step: the smallest difference the source could store, in the scan's units
            (RescaleSlope for DICOM, scl_slope for integer NIfTI, 0 for float data).
    """

    image: MetaTensor
    scan_id: str
    modality: str = "OT"
    source: ScanSource | None = None
    native_affine: np.ndarray | None = None
    dicom_headers: list[pydicom.Dataset] = field(default_factory=list)
    quantization_step: float = 0.0

    @property
    def affine(self) -> np.ndarray:
        """4x4 RAS affine of ``image`` (float64)."""
        affine = self.image.affine
        return affine.detach().cpu().numpy().astype(np.float64) if isinstance(affine, torch.Tensor) else affine

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along the three image axes, in mm."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(H, W, D)``."""
        return tuple(int(s) for s in self.image.shape[1:])  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        """Axis codes of the source voxel order, e.g. ``"LPS"`` (the image itself is always RAS-like)."""
        import nibabel as nib

        affine = self.native_affine if self.native_affine is not None else self.affine
        return "".join(nib.orientations.aff2axcodes(affine))

    def with_image(self, image: np.ndarray | torch.Tensor) -> Scan:
        """A copy of this scan holding ``image`` (same shape and geometry), e.g. a network's output."""
        array = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
        if array.ndim == 3:
            array = array[None]
        if tuple(array.shape[1:]) != self.shape:
            raise ValueError(f"image shape {tuple(array.shape)} does not match the scan's {tuple(self.image.shape)}")
        meta_dict = {k: v for k, v in self.image.meta.items() if k != "affine"}  # the affine is passed on its own
        meta = MetaTensor(array.to(torch.float32), affine=self.image.affine.clone(), meta=meta_dict)
        return replace(self, image=meta)


def scan_id_for_nifti(path: Path, volume: int | None = None) -> str:
    """The NIfTI file name without ``.nii``/``.nii.gz``, plus ``_vol<k>`` for one volume of a 4D file."""
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "scan"
    return name if volume is None else f"{name}_vol{volume:04d}"


def scan_id_for_series(series_uid: str) -> str:
    """``dcm-`` plus a hash of the SeriesInstanceUID: stable, folder-safe, free of patient identity."""
    return "dcm-" + hashlib.sha256(series_uid.encode("ascii", "replace")).hexdigest()[:16]
