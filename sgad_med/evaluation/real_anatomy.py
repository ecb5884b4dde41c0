"""Does the pipeline keep the anatomy of real scans it was never trained on?

Real test images that ship with installed packages have no truth, but they have anatomy: whatever the pipeline
writes as ``corrected`` must keep the input's edges. :func:`real_anatomy_scans` lists them (nibabel's real T1
crop, EPI and functional images, MINC volumes converted to NIfTI (MINC2 only where h5py is installed),
pydicom-data MRs); :func:`evaluate_real_anatomy` runs a pipeline on each and reports, per scan, how many slices were
flagged and took the fallback, and the gradient correlation of the corrected volume with the input in every slice
with tissue, on the pipeline's normalized scale (:func:`~sgad_med.evaluation.anatomy.gradient_correlation`: blind
to a change of scale; a change of contrast between tissues lowers it, an inversion most).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sgad_med.evaluation.anatomy import gradient_correlation
from sgad_med.evaluation.real_scans import FOREGROUND_THRESHOLD

__all__ = ["real_anatomy_scans", "evaluate_real_anatomy", "format_real_anatomy"]

#: Gradient correlation with the input that every slice with tissue must keep (the harmonization issue's bar).
MIN_SLICE_CORRELATION = 0.9


def _minc_as_nifti(path: Path, folder: Path) -> Path:
    """A MINC volume written as NIfTI (sgad-med reads NIfTI and DICOM), same data and affine."""
    import nibabel as nib

    image = nib.load(str(path))
    target = folder / (path.stem + ".nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj, dtype=np.float32), image.affine), str(target))
    return target


def real_anatomy_scans(folder: str | os.PathLike) -> list[tuple[str, str, int | None]]:
    """The real scans of this check, found offline: (name, path, 4D volume index); MINC files are converted into
    ``folder``. Each is listed only where its package is installed."""
    import nibabel

    folder = Path(folder)
    data = Path(nibabel.__file__).parent / "tests" / "data"
    found: list[tuple[str, str, int | None]] = []
    for name, file, index in (("nibabel anatomical.nii (T1 crop)", "anatomical.nii", None),
                              ("nibabel example4d EPI (vol 0)", "example4d.nii.gz", 0),
                              ("nibabel functional.nii (vol 0)", "functional.nii", 0)):
        if (data / file).exists():
            found.append((name, str(data / file), index))
    for file in ("small.mnc", "minc1_1_scale.mnc"):
        if (data / file).exists():
            try:
                converted = _minc_as_nifti(data / file, folder)
            except ImportError:  # MINC2 needs h5py, which sgad-med does not require: the scan is left out
                continue
            found.append((f"nibabel {file} (as NIfTI)", str(converted), None))
    try:
        from pydicom.data import get_testdata_file
    except ImportError:
        return found
    for file in ("emri_small.dcm", "MR_small.dcm"):
        path = get_testdata_file(file)
        if path is not None:
            found.append((f"pydicom {file}", str(path), None))
    return found


def evaluate_real_anatomy(pipeline: Any, scans: Sequence[tuple[str, str, int | None]] | None = None
                          ) -> list[dict[str, Any]]:
    """Run ``pipeline`` on real scans; per scan the flags and the anatomy kept in ``corrected``.

    Args:
        pipeline: an :class:`~sgad_med.pipeline.SGADPipeline`.
        scans: (name, path, volume index); ``None``: :func:`real_anatomy_scans` (converted files in a temporary
            folder).

    Returns:
        One dict per scan: ``scan``, ``shape``, ``tissue_slices``, ``flagged``, ``fallback``, ``fallback_scope``,
        ``grad_corr_mean``, ``grad_corr_min`` (corrected vs input over the slices with tissue) and
        ``slices_below`` (how many fall below :data:`MIN_SLICE_CORRELATION`).
    """
    from sgad_med.io import load_scan

    with tempfile.TemporaryDirectory() as folder:
        scans = real_anatomy_scans(folder) if scans is None else list(scans)
        rows = []
        for name, path, index in scans:
            scan = load_scan(path, volume=index)
            result = pipeline(scan)
            # compared on the pipeline's own [0, 1] scale (the scan's normalization window): the voxels outside
            # it are clipped by the normalization before any network, by design, and are not anatomy a network lost
            low, high = (result.settings["normalization"][k] for k in ("lo", "hi"))
            source, corrected = (np.clip((v.numpy()[0].astype(np.float64) - low) / max(high - low, 1e-6), 0.0, 1.0)
                                 for v in (scan.image, result.corrected.image))
            values = gradient_correlation(corrected, source, source > FOREGROUND_THRESHOLD)
            rows.append({
                "scan": name,
                "shape": list(scan.shape),
                "tissue_slices": int(values.size),
                "flagged": int(np.count_nonzero(result.flagged)),
                "fallback": int(np.count_nonzero(result.fallback)) if result.fallback is not None else 0,
                "fallback_scope": result.fallback_scope,
                "grad_corr_mean": float(values.mean()) if values.size else None,
                "grad_corr_min": float(values.min()) if values.size else None,
                "slices_below": int((values < MIN_SLICE_CORRELATION).sum()),
            })
    return rows


def format_real_anatomy(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`evaluate_real_anatomy` as a fixed-width table."""
    header = (f"{'real scan (corrected vs input)':<40}{'shape':>14}{'tissue':>8}{'flagged':>9}{'fallback':>10}"
              f"{'grad corr':>11}{'worst':>8}{'< 0.9':>7}")
    lines = [header, "-" * len(header)]
    for row in rows:
        shape = "x".join(map(str, row["shape"][-3:]))
        mean = "-" if row["grad_corr_mean"] is None else f"{row['grad_corr_mean']:.3f}"
        worst = "-" if row["grad_corr_min"] is None else f"{row['grad_corr_min']:.3f}"
        lines.append(f"{row['scan']:<40}{shape:>14}{row['tissue_slices']:>8}{row['flagged']:>9}"
                     f"{row['fallback']:>10}{mean:>11}{worst:>8}{row['slices_below']:>7}")
    return "\n".join(lines)
