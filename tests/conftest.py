"""Shared fixtures: small volumes, affines and files written by our own writers."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "sample_data"


def oblique_affine(spacing=(0.9, 1.1, 2.5), angles=(0.2, -0.15, 0.3), flips=(1, 1, 1), origin=(-40.0, 25.0, 10.0)):
    """A RAS affine with rotation about all three axes, anisotropic spacing and optional axis flips."""
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ ry @ rx @ np.diag(np.asarray(spacing) * np.asarray(flips))
    affine[:3, 3] = origin
    return affine


def smooth_volume(shape=(24, 20, 9), seed=0, low=0.0, high=1000.0) -> np.ndarray:
    """A volume with structure along every axis (so a flipped or permuted read is detected)."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    volume = 0.5 + 0.3 * np.sin(3 * i + 1) * np.cos(2 * j) + 0.2 * k + 0.05 * rng.random(shape)
    return (low + (high - low) * (volume - volume.min()) / np.ptp(volume)).astype(np.float32)


@pytest.fixture
def nifti_file(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A 3D NIfTI in a non-RAS (flipped, oblique) orientation, with its data and affine."""
    data = smooth_volume()
    affine = oblique_affine(flips=(-1, 1, -1))
    path = tmp_path / "subject-01_T1w.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return path, data, affine


@pytest.fixture
def copy_of(tmp_path: Path):
    """Copy a file or folder into tmp_path, so tests never touch the originals."""

    def _copy(source: Path, name: str | None = None) -> Path:
        target = tmp_path / (name or source.name)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
        return target

    return _copy
