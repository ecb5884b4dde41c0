"""Which axis of a scan the 2D networks slice along: the acquisition's through-plane axis.

A sagittal knee or a 3D sagittal T1 must be cut into sagittal slices, the planes it was acquired in: cutting it
axially gives images the networks never saw (and a single sagittal image becomes one-pixel-wide lines).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sgad_med.errors import SGADError
from sgad_med.io.scan import Scan

#: The RAS-oriented volume's axes: index, the direction it increases to, the plane its slices lie in.
AXIS_NAMES = ("R", "A", "S")
PLANES = ("sagittal", "coronal", "axial")

# Spacings within this ratio of each other count as isotropic: the spacing then says nothing of the acquisition.
_ISOTROPIC_RATIO = 1.05


@dataclass(frozen=True)
class SliceAxis:
    """The slice axis chosen for a scan.

    Attributes:
        index: the axis of the RAS-oriented image ``[H, W, D]`` (0, 1 or 2) the slices are taken along.
        reason: why this axis (recorded in ``report.json``).
    """

    index: int
    reason: str

    @property
    def name(self) -> str:
        """``"R"``, ``"A"`` or ``"S"``: the direction the slice index increases to."""
        return AXIS_NAMES[self.index]

    @property
    def plane(self) -> str:
        """``"sagittal"``, ``"coronal"`` or ``"axial"``."""
        return PLANES[self.index]

    def as_dict(self) -> dict[str, object]:
        return {"index": self.index, "name": self.name, "plane": self.plane, "reason": self.reason}


def parse_slice_axis(value: str | int | None) -> int | None:
    """``"auto"``/``None`` -> ``None``; ``0``-``2``, ``"R"``/``"A"``/``"S"`` or a plane name -> the axis index.

    Raises:
        SGADError: anything else.
    """
    if value is None or (isinstance(value, str) and value.lower() == "auto"):
        return None
    text = str(value).strip()
    for index in range(3):
        if text.lower() in (str(index), AXIS_NAMES[index].lower(), PLANES[index]):
            return index
    raise SGADError(None, f"unknown slice axis {value!r}",
                    fix="use auto, axial, coronal, sagittal, or the RAS axis index 0, 1 or 2")


def native_slice_axis(scan: Scan) -> int | None:
    """The RAS axis along which the source stored its slices (DICOM: the normal of ImageOrientationPatient)."""
    if scan.native_affine is None:
        return None
    through = np.asarray(scan.native_affine, dtype=np.float64)[:3, 2]
    axes = np.asarray(scan.affine, dtype=np.float64)[:3, :3]
    cosines = np.abs(axes.T @ through) / np.maximum(np.linalg.norm(axes, axis=0) * np.linalg.norm(through), 1e-12)
    return int(np.argmax(cosines))


def choose_slice_axis(scan: Scan, override: str | int | None = None) -> SliceAxis:
    """The axis to slice ``scan`` along.

    In order: the override; the only axis of length 1 (a single 2D image, whatever its orientation); the axis
    with the largest spacing (slices are thicker than their pixels); for isotropic voxels, the axis the source
    stored its slices along (a DICOM series' ImageOrientationPatient normal, a NIfTI file's third axis); else axial.

    Args:
        scan: the scan, RAS-oriented as loaded.
        override: ``"auto"``/``None``, or an axis as :func:`parse_slice_axis` reads it.

    Returns:
        The chosen :class:`SliceAxis`.
    """
    forced = parse_slice_axis(override)
    if forced is not None:
        return SliceAxis(forced, "--slice-axis")
    shape, spacing = np.asarray(scan.shape), np.asarray(scan.spacing, dtype=np.float64)
    native = native_slice_axis(scan)
    flat = np.flatnonzero(shape == 1)
    if len(flat) == 1 or (len(flat) > 1 and native in flat):
        index = int(flat[0]) if len(flat) == 1 else int(native)
        return SliceAxis(index, "a single image: the axis of length 1")
    thick = np.flatnonzero(spacing >= spacing.max() / _ISOTROPIC_RATIO)
    if spacing.max() > spacing.min() * _ISOTROPIC_RATIO and len(thick) == 1:
        return SliceAxis(int(thick[0]), f"the largest spacing ({spacing[thick[0]]:.3g} mm)")
    if native is not None and (len(thick) == 3 or native in thick):
        return SliceAxis(native, "isotropic voxels: the source's slice axis")
    return SliceAxis(2, "isotropic voxels: axial by default")
