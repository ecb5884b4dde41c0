"""Real scans that ship with installed packages, for the real-scan sections of the evaluations.

The quality tables are measured on synthetic held-out data with a truth; every evaluation also reports what can be
measured on real scans available offline, naming them:

* :func:`default_real_scans`: every real axial MR scan found (single slices included), for the harmonization
  evaluation (histogram distance and edge agreement, no truth needed);
* :func:`default_real_volumes`: the real *multi-slice* axial volumes, for the detection and restoration
  evaluations, which need neighbouring slices: nibabel's ``tests/data/example4d.nii.gz`` (an EPI, volume 0,
  128 x 96 x 24) and pydicom's ``emri_small.dcm`` (a multi-frame MR, 64 x 64 x 10 frames), where installed;
* :func:`load_real_volumes`: those volumes loaded with :func:`sgad_med.load_scan` and normalized as at inference
  (:func:`sgad_med.transforms.intensity.normalize` with the scan's modality).

These scans have no truth: they are presumed clean, and damage is simulated on them.

Example::

    from sgad_med.evaluation.real_scans import load_real_volumes

    for item in load_real_volumes():
        print(item["name"], item["volume"].shape)     # float32 [H, W, D] in [0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FOREGROUND_THRESHOLD",
    "default_real_scans",
    "default_real_volumes",
    "load_real_volume",
    "load_real_volumes",
    "real_scan_names",
    "resolve_real_scans",
]

#: Normalized intensity above which a voxel of a real scan counts as foreground (there is no truth mask).
FOREGROUND_THRESHOLD = 0.05


def _nibabel_epi() -> Path | None:
    import nibabel

    epi = Path(nibabel.__file__).parent / "tests" / "data" / "example4d.nii.gz"
    return epi if epi.exists() else None


def _pydicom_file(name: str) -> str | None:
    try:
        from pydicom.data import get_testdata_file

        path = get_testdata_file(name)
    except ImportError:  # pydicom missing: the file is simply not available
        return None
    return None if path is None else str(path)


def default_real_scans() -> list[tuple[str, str, int | None]]:
    """Real scans with no truth that ship with installed packages: (name, path, 4D volume index).

    nibabel's example EPI (first volume), its ``anatomical.nii`` (a real T1 crop) and the axial MR slices of
    pydicom's and pydicom-data's test files, where installed. Sagittal single slices are left out: sgad-med works
    on axial slices.
    """
    found: list[tuple[str, str, int | None]] = []
    epi = _nibabel_epi()
    if epi is not None:
        found.append(("nibabel example4d EPI (vol 0)", str(epi), 0))
        anatomical = epi.parent / "anatomical.nii"  # a real T1 crop, 33 x 41 x 25
        if anatomical.exists():
            found.append(("nibabel anatomical.nii (T1)", str(anatomical), None))
    for name in ("MR_small.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm"):
        path = _pydicom_file(name)
        if path is not None:
            found.append((f"pydicom {name}", path, None))
    return found


def default_real_volumes() -> list[tuple[str, str, int | None]]:
    """Real *multi-slice* axial MR volumes available offline: (name, path, 4D volume index).

    nibabel's ``tests/data/example4d.nii.gz``, volume 0 (an EPI, 128 x 96 x 24), and pydicom-data's
    ``emri_small.dcm`` (a multi-frame MR, 10 frames of 64 x 64), each where installed. The detection and
    restoration evaluations need neighbouring slices, so single-slice files are left out.

    Returns:
        The scans found (possibly none), in that order.
    """
    found: list[tuple[str, str, int | None]] = []
    epi = _nibabel_epi()
    if epi is not None:
        found.append(("nibabel example4d EPI (vol 0)", str(epi), 0))
    emri = _pydicom_file("emri_small.dcm")
    if emri is not None:
        found.append(("pydicom emri_small.dcm (multi-frame MR)", emri, None))
    return found


def resolve_real_scans(
    option: bool | Sequence[tuple[str, str, int | None]] | None,
) -> list[tuple[str, str, int | None]]:
    """The real scans an evaluation's ``real_scans`` option names.

    Args:
        option: ``True`` for :func:`default_real_volumes`; ``False``, ``None`` or empty for none; otherwise
            (name, path, volume index) tuples (e.g. from a bundle config).

    Returns:
        (name, path, volume index) tuples.
    """
    if option is True:
        return default_real_volumes()
    if not option:
        return []
    return [(str(name), str(path), None if index is None else int(index)) for name, path, index in option]


def real_scan_names(scans: Sequence[Any]) -> list[str]:
    """The names of real scans given as (name, path, index) tuples or as :func:`load_real_volumes` dicts."""
    return [str(s["name"]) if isinstance(s, dict) else str(s[0]) for s in scans]


def load_real_volume(path: str | Path, volume: int | None = None) -> tuple[np.ndarray, str]:
    """One real scan, loaded (RAS) and normalized as at inference.

    Args:
        path: a NIfTI or DICOM file (anything :func:`sgad_med.load_scan` reads).
        volume: the volume of a 4D NIfTI (``None``: a 3D scan).

    Returns:
        ``(volume01, modality)``: float32 ``[H, W, D]`` in [0, 1] (first channel,
        ``normalize(scan.image.as_tensor()[0:1], modality=scan.modality)``) and the scan's modality.
    """
    from sgad_med.io import load_scan
    from sgad_med.transforms.intensity import normalize

    scan = load_scan(path, volume=volume)
    normalized = normalize(scan.image.as_tensor()[0:1], modality=scan.modality)[0]  # (image, parameters)
    array = normalized.detach().cpu().numpy() if hasattr(normalized, "detach") else np.asarray(normalized)
    return np.asarray(array[0], dtype=np.float32), str(scan.modality)


def load_real_volumes(scans: Sequence[tuple[str, str, int | None]] | None = None) -> list[dict]:
    """Real volumes, loaded and normalized (see :func:`load_real_volume`).

    Args:
        scans: (name, path, volume index) tuples; ``None``: :func:`default_real_volumes`.

    Returns:
        One dict per scan: ``name``, ``path``, ``volume_index``, ``modality``, ``volume`` (float32 ``[H, W, D]``
        in [0, 1]) and ``shape``. Scans with fewer than 3 slices are refused (no neighbours to compare with).
    """
    scans = default_real_volumes() if scans is None else list(scans)
    volumes = []
    for name, path, index in scans:
        volume01, modality = load_real_volume(path, index)
        if volume01.ndim != 3 or volume01.shape[-1] < 3:
            raise ValueError(f"real scan {name!r} ({path}) has shape {volume01.shape}: need [H, W, D] with D >= 3")
        volumes.append({"name": str(name), "path": str(path), "volume_index": index, "modality": modality,
                        "volume": volume01, "shape": list(volume01.shape)})
    return volumes
