"""The MNI ICBM152 2009a tissue template that the synthetic training data is built from.

The template ships inside nilearn (and, for source checkouts, in ``sample_data/mni`` of the repository) as
three 1 mm NIfTI files: a skull-stripped T1 and grey- and white-matter probability maps, 197 x 233 x 189 voxels,
RAS. :func:`load_mni_template` finds them, resamples them to an isotropic spacing and derives the tissue
maps that are not shipped (CSF, non-brain head tissue, background); see :func:`_derive_tissues`.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from sgad_med.errors import InvalidScanDataError, NoScansFoundError

__all__ = ["MNI_DIR_ENV", "MNI_FILES", "MNITemplate", "find_mni_dir", "load_mni_template"]

#: Environment variable naming a folder that holds the three template files.
MNI_DIR_ENV = "SGAD_MED_MNI_DIR"

#: The template files, by map name (the names nilearn ships them under).
MNI_FILES: dict[str, str] = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}

#: Radius (mm) of the morphological closing that turns the grey+white matter region into an intracranial mask.
ICV_CLOSING_MM = 5.0
#: Thickness (mm) of the synthetic skull + scalp shell around the intracranial mask.
HEAD_SHELL_MM = 10.0
#: The derived maps are built at this spacing (mm) or finer, then resampled to the requested spacing.
DERIVE_SPACING_MM = 2.0
#: Gaussian sigma (mm) that softens the edges of the derived binary masks into partial-volume maps.
EDGE_SIGMA_MM = 1.0


@dataclass(frozen=True, eq=False)
class MNITemplate:
    """Tissue maps of the MNI ICBM152 2009a symmetric template at one isotropic spacing.

    All maps are read-only float32 arrays of the same shape ``[H, W, D]`` (RAS: axis 0 runs to the
    right, axis 1 anterior, axis 2 superior, so the last axis is the axial slice axis). The five tissue
    maps ``background, csf, gm, wm, other`` are partial-volume fractions that sum to 1 in every voxel.

    Args:
        t1: the template's skull-stripped T1 image, scaled to [0, 1] (not used for rendering; for reference).
        gm: grey-matter probability.
        wm: white-matter probability.
        csf: cerebrospinal-fluid fraction (derived, see :func:`_derive_tissues`).
        other: non-brain head tissue, a synthetic skull/scalp shell (derived).
        background: air outside the head (derived).
        affine: 4x4 voxel-to-RAS-world (mm) affine of the maps.
        spacing: the isotropic voxel size in mm.
        source_dir: the folder the template files were read from.
    """

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    other: np.ndarray
    background: np.ndarray
    affine: np.ndarray
    spacing: float
    source_dir: Path

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(H, W, D)`` of the maps."""
        return tuple(self.gm.shape)  # type: ignore[return-value]


def _has_template(folder: Path) -> bool:
    return all((folder / name).is_file() for name in MNI_FILES.values())


def _repo_sample_dir() -> Path | None:
    """``sample_data/mni`` of a source checkout or editable install, if it is there."""
    folder = Path(__file__).resolve().parents[2] / "sample_data" / "mni"
    return folder if folder.is_dir() else None


def _nilearn_data_dir() -> Path | None:
    """nilearn's packaged data folder, found without importing nilearn (slow, and optional)."""
    try:
        spec = importlib.util.find_spec("nilearn")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "datasets" / "data"
        if folder.is_dir():
            return folder
    return None


def find_mni_dir(path: str | os.PathLike | None = None) -> Path:
    """Find the folder holding the MNI ICBM152 T1, GM and WM files (:data:`MNI_FILES`).

    Search order: the explicit ``path``; the environment variable ``SGAD_MED_MNI_DIR``; the repository's
    ``sample_data/mni`` (source checkouts and editable installs); nilearn's installed copy. An explicit
    ``path`` or a set environment variable that does not hold the files is an error rather than being
    skipped, so that a typo never silently falls back to another copy.

    Args:
        path: a folder holding the three files, or one of the files itself.

    Returns:
        The resolved folder.

    Raises:
        NoScansFoundError: no folder holding the three files was found.
    """
    fix = f"pass path= or set {MNI_DIR_ENV} to a folder holding {', '.join(MNI_FILES.values())}"
    if path is not None:
        folder = Path(path).expanduser()
        if folder.is_file():
            folder = folder.parent
        if not _has_template(folder):
            raise NoScansFoundError(folder, "this folder does not hold the MNI ICBM152 T1/GM/WM template files", fix)
        return folder.resolve()
    env = os.environ.get(MNI_DIR_ENV)
    if env:
        folder = Path(env).expanduser()
        if not _has_template(folder):
            raise NoScansFoundError(
                folder, f"the folder named by {MNI_DIR_ENV} does not hold the MNI ICBM152 template files", fix
            )
        return folder.resolve()
    for candidate in (_repo_sample_dir(), _nilearn_data_dir()):
        if candidate is not None and _has_template(candidate):
            return candidate.resolve()
    raise NoScansFoundError(
        None,
        "the MNI ICBM152 template files were not found (looked in the repository's sample_data/mni and in the "
        "installed nilearn package)",
        fix + ", or install nilearn",
    )


def load_mni_template(path: str | os.PathLike | None = None, spacing: float = 2.0) -> MNITemplate:
    """Load the MNI ICBM152 tissue template resampled to an isotropic ``spacing`` (mm).

    The result is cached in memory per (folder, spacing); its arrays are read-only, so copy before editing.
    At 2 mm the maps are 98 x 116 x 94 voxels.

    Args:
        path: folder holding the template files; ``None`` searches as :func:`find_mni_dir` does.
        spacing: isotropic voxel size of the result, in mm (the files are 1 mm).

    Returns:
        The template.

    Raises:
        NoScansFoundError: the template files were not found.
        InvalidScanDataError: the files do not share one grid.
    """
    if not spacing > 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    return _load_cached(str(find_mni_dir(path)), float(spacing))


@functools.lru_cache(maxsize=8)
def _load_cached(folder: str, spacing: float) -> MNITemplate:
    maps: dict[str, np.ndarray] = {}
    affine: np.ndarray | None = None
    for key, name in MNI_FILES.items():
        file = Path(folder) / name
        image = nib.as_closest_canonical(nib.load(file))
        data = np.asarray(image.dataobj, dtype=np.float32)
        if data.ndim != 3 or not np.all(np.isfinite(data)):
            raise InvalidScanDataError(file, "expected a finite 3D map", "use the original template file")
        top = float(data.max())
        if top > 1.0:  # shipped as uint8 0..255
            data /= top
        if affine is None:
            affine, shape = image.affine, data.shape
        elif data.shape != shape or not np.allclose(image.affine, affine, atol=1e-3):
            raise InvalidScanDataError(file, "the template maps do not share one voxel grid", "use the original files")
        maps[key] = np.clip(data, 0.0, 1.0)
    assert affine is not None
    in_spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    in_shape = np.array(maps["gm"].shape)
    out_shape = np.maximum(np.round(in_shape * in_spacing / spacing).astype(int), 1)
    # the derived masks are built at <= DERIVE_SPACING_MM (a 10 mm shell needs a few voxels), then resampled
    derive_spacing = min(spacing, DERIVE_SPACING_MM)
    derive_shape = np.maximum(np.round(in_shape * in_spacing / derive_spacing).astype(int), 1)
    derive_affine, resampled = _resample(maps, affine, in_spacing, derive_spacing, derive_shape)
    arrays = {"t1": resampled["t1"], **_derive_tissues(resampled["gm"], resampled["wm"], derive_spacing)}
    out_affine = derive_affine
    if derive_spacing != spacing:
        out_affine, arrays = _resample(arrays, derive_affine, np.full(3, derive_spacing), spacing, out_shape)
        total = sum(arrays[name] for name in ("gm", "wm", "csf", "other", "background"))
        for name in ("gm", "wm", "csf", "other", "background"):
            arrays[name] = (arrays[name] / total).astype(np.float32)
    for array in arrays.values():
        array.flags.writeable = False
    out_affine.flags.writeable = False
    return MNITemplate(**arrays, affine=out_affine, spacing=spacing, source_dir=Path(folder))


def _resample(
    maps: dict[str, np.ndarray], affine: np.ndarray, in_spacing: np.ndarray, spacing: float, out_shape: np.ndarray
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Anti-aliased linear resampling onto an ``out_shape`` grid of ``spacing`` mm, centred on the input's field of
    view."""
    in_shape = np.array(next(iter(maps.values())).shape)
    step = spacing / in_spacing  # output voxel size in input voxels
    if np.allclose(step, 1.0) and np.array_equal(in_shape, out_shape):
        return affine.copy(), {k: v.copy() for k, v in maps.items()}
    offset = ((in_shape - 1) - (out_shape - 1) * step) / 2.0  # keeps the field-of-view centre in place
    sigma = np.maximum((step - 1.0) / 2.0, 0.0)  # the usual anti-aliasing sigma for a downsampling factor
    out = {}
    for key, data in maps.items():
        smooth = ndi.gaussian_filter(data, sigma) if np.any(sigma > 0) else data
        out[key] = np.clip(
            ndi.affine_transform(smooth, step, offset=offset, output_shape=tuple(out_shape), order=1, mode="nearest"),
            0.0,
            1.0,
        ).astype(np.float32)
    index_to_input = np.eye(4)
    index_to_input[:3, :3] = np.diag(step)
    index_to_input[:3, 3] = offset
    return affine @ index_to_input, out


def _derive_tissues(gm: np.ndarray, wm: np.ndarray, spacing: float) -> dict[str, np.ndarray]:
    """Derive CSF, non-brain head tissue and background from the GM and WM maps.

    The template ships only GM and WM probabilities and a skull-stripped T1 (zero outside the brain), so the
    rest is built geometrically, in mm so that every spacing gives the same anatomy (for spacings coarser than
    :data:`DERIVE_SPACING_MM` the maps are derived at that spacing and then resampled):

    1. brain = gm + wm > 0.3; the intracranial mask is its morphological closing with a ball of
       :data:`ICV_CLOSING_MM` (bridges sulci) with holes filled (ventricles);
    2. the mask is softened with a gaussian of :data:`EDGE_SIGMA_MM`: ``icv`` in [0, 1];
       ``csf = clip(icv - gm - wm, 0, 1)`` (sulcal, cisternal and ventricular CSF);
    3. because the T1 holds no skull or scalp, the non-brain head tissue is a synthetic shell: the
       intracranial mask dilated by :data:`HEAD_SHELL_MM` (skull + scalp thickness), softened the same way,
       ``other = clip(head - max(icv, gm + wm), 0, 1)``;
    4. ``background = clip(1 - gm - wm - csf - other, 0, 1)``; finally the five maps are divided by their sum,
       so they are partial-volume fractions summing to 1.

    Args:
        gm: grey-matter probability at ``spacing``.
        wm: white-matter probability at ``spacing``.
        spacing: voxel size in mm.

    Returns:
        ``gm, wm, csf, other, background`` as float32 arrays.
    """
    brain = gm + wm
    pad = int(np.ceil((ICV_CLOSING_MM + HEAD_SHELL_MM) / spacing)) + 2
    mask = np.pad(brain > 0.3, pad)
    sampling = (spacing,) * 3
    # closing by distance transforms: exact ball in mm, O(N) whatever the radius
    dilated = ndi.distance_transform_edt(~mask, sampling=sampling) <= ICV_CLOSING_MM
    closed = ndi.distance_transform_edt(dilated, sampling=sampling) > ICV_CLOSING_MM
    icv_mask = ndi.binary_fill_holes(closed | mask)
    head_mask = ndi.distance_transform_edt(~icv_mask, sampling=sampling) <= HEAD_SHELL_MM
    inner = (slice(pad, -pad),) * 3
    sigma = EDGE_SIGMA_MM / spacing
    icv = ndi.gaussian_filter(icv_mask.astype(np.float32), sigma)[inner]
    head = ndi.gaussian_filter(head_mask.astype(np.float32), sigma)[inner]
    csf = np.clip(icv - brain, 0.0, 1.0)
    other = np.clip(head - np.maximum(icv, brain), 0.0, 1.0)
    background = np.clip(1.0 - brain - csf - other, 0.0, 1.0)
    total = brain + csf + other + background
    return {
        name: (array / total).astype(np.float32)
        for name, array in (("gm", gm), ("wm", wm), ("csf", csf), ("other", other), ("background", background))
    }
