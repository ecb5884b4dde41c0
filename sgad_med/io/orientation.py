"""Reorienting voxel arrays between a file's own axis order and RAS, with the matching affines."""

from __future__ import annotations

import nibabel as nib
import numpy as np

RAS = (("R", "L"), ("A", "P"), ("S", "I"))


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip and permute the first three axes of ``array`` so they run as close to R, A, S as possible.

    Same result as ``nibabel.as_closest_canonical``; oblique acquisitions stay oblique in the affine.

    Args:
        array: voxels, spatial axes first (extra trailing axes are carried along).
        affine: 4x4 voxel-to-RAS-world affine of ``array``.

    Returns:
        The reoriented array and its affine.
    """
    ornt = nib.orientations.io_orientation(affine)
    return _apply(array, affine, ornt)


def from_ras(array: np.ndarray, ras_affine: np.ndarray, native_affine: np.ndarray) -> np.ndarray:
    """Undo :func:`to_ras`: put a RAS-oriented array back into the voxel order of ``native_affine``."""
    source = nib.orientations.io_orientation(ras_affine)
    target = nib.orientations.io_orientation(native_affine)
    transform = nib.orientations.ornt_transform(source, target)
    return nib.orientations.apply_orientation(array, transform)


def _apply(array: np.ndarray, affine: np.ndarray, ornt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    shape = array.shape[:3]
    reoriented = nib.orientations.apply_orientation(array, ornt)
    new_affine = affine @ nib.orientations.inv_ornt_aff(ornt, shape)
    return np.ascontiguousarray(reoriented), new_affine
