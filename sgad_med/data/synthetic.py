"""Synthetic training data: MNI anatomy under random deformations, rendered in random scanner styles.

The GAN, the detector and the restorer train offline on volumes whose truth is known. A volume here is
two independent draws:

* an :class:`Anatomy` (tissue fractions of the MNI template after a random affine and elastic deformation),
  named by an integer *anatomy seed*, see :func:`sample_anatomy`;
* a :class:`Style` (tissue intensities, gamma, bias field, noise, blur), named by a *style seed* and a
  *split*, see :func:`sample_style`;

and :func:`render` turns one anatomy and one style into a float32 volume in [0, 1]. The harmonization
target of every volume is the same anatomy rendered in :data:`REFERENCE_STYLE`.

Train/held-out splits, so that later evaluation is honest:

* anatomies: anatomy seeds are the unit. Train on :data:`TRAIN_ANATOMY_SEEDS`, evaluate on
  :data:`HELDOUT_ANATOMY_SEEDS`; :meth:`SyntheticStyleGenerator.pair` refuses a seed of the other split.
* styles: the two splits come from disjoint regions of parameter space, decided by the *effective*
  grey/white-matter contrast ``|wm**gamma - gm**gamma|`` (the contrast of pure tissue in the rendered image,
  before bias, blur and noise): train styles have it >= :data:`TRAIN_MIN_GM_WM_CONTRAST` (0.15), held-out
  styles have it in :data:`HELDOUT_GM_WM_CONTRAST` ([0.05, 0.12]): low-contrast scans the networks never
  saw. Every family (T1, T2, FLAIR, PD, random) exists in both splits with the same tissue orderings, and
  all other parameters (the other tissues, gamma, bias, noise, blur) are drawn from the same ranges in both.
  :func:`style_split` tells which region a style lies in.
* validation styles (``split="validation"``) lie in the gap between the two, contrast in
  :data:`VALIDATION_GM_WM_CONTRAST` ([0.125, 0.145]): a little lower than anything trained on, never a held-out
  style. They exist to judge, on training-pool anatomies, how a choice fares on styles unlike the training ones
  without looking at the held-out set. Their anatomies come from :data:`TRAIN_ANATOMY_SEEDS` (seeds no
  training run uses).
* low-contrast validation styles (``split="validation_low"``) lie *below* the held-out region, contrast in
  :data:`VALIDATION_LOW_GM_WM_CONTRAST` ([0.02, 0.045]): at least as hard as the held-out styles for anything
  that suffers from low tissue contrast, and still never a held-out style. The gap styles above turned out too
  easy to foresee what fails on held-out styles.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi
from torch.utils.data import IterableDataset, get_worker_info

from sgad_med.data.mni import MNITemplate, load_mni_template

__all__ = [
    "FAMILIES",
    "HELDOUT_ANATOMY_SEEDS",
    "HELDOUT_GM_WM_CONTRAST",
    "REFERENCE_STYLE",
    "SPLITS",
    "TISSUES",
    "TRAIN_ANATOMY_SEEDS",
    "TRAIN_MIN_GM_WM_CONTRAST",
    "VALIDATION_GM_WM_CONTRAST",
    "Anatomy",
    "Style",
    "SyntheticPairDataset",
    "SyntheticStyleGenerator",
    "render",
    "sample_anatomy",
    "sample_style",
    "style_split",
]

#: The tissue classes, in the order of :meth:`Anatomy.stack` and :meth:`Anatomy.labels`.
TISSUES: tuple[str, ...] = ("background", "csf", "gm", "wm", "other")

#: Anatomy seeds to train on. Anatomy seeds are the unit of the train/held-out split.
TRAIN_ANATOMY_SEEDS = range(0, 1000)
#: Anatomy seeds to evaluate on; never used for training.
HELDOUT_ANATOMY_SEEDS = range(10_000, 10_100)

SPLITS: tuple[str, ...] = ("train", "heldout", "validation", "validation_low")
#: Style families; ``"random"`` draws every tissue intensity uniformly (any ordering).
FAMILIES: tuple[str, ...] = ("t1", "t2", "flair", "pd", "random")
_FAMILY_WEIGHTS = (0.3, 0.2, 0.15, 0.1, 0.25)

#: Train styles have an effective grey/white-matter contrast ``|wm**gamma - gm**gamma|`` of at least this.
TRAIN_MIN_GM_WM_CONTRAST = 0.15
#: Held-out styles have an effective grey/white-matter contrast in this closed interval.
HELDOUT_GM_WM_CONTRAST = (0.05, 0.12)
#: Validation styles have an effective grey/white-matter contrast in this closed interval (between the two).
VALIDATION_GM_WM_CONTRAST = (0.125, 0.145)
#: Low-contrast validation styles have an effective grey/white-matter contrast in this closed interval (below
#: the held-out region).
VALIDATION_LOW_GM_WM_CONTRAST = (0.02, 0.045)
_TRAIN_MAX_CONTRAST = {"t1": 0.35, "t2": 0.35, "flair": 0.35, "pd": 0.35, "random": 0.7}

GAMMA_RANGE = (0.6, 1.6)
MAX_BIAS_STRENGTH = 0.3
MAX_NOISE_SIGMA = 0.05
MAX_BLUR_SIGMA = 1.5

#: Spacing (mm) of the control grid of the elastic displacement, and the smoothing applied on it (mm).
_CONTROL_MM = 8.0
_ELASTIC_SMOOTH_MM = 16.0
#: Highest cosine order, per axis, of the smooth multiplicative bias field.
_BIAS_ORDER = 2

# RNG stream identifiers: each random quantity has its own stream, derived from the seeds alone.
_ANATOMY_STREAM, _STYLE_STREAM, _RENDER_STREAM, _VOLUME_STREAM = 0, 1, 2, 3


@dataclass(frozen=True)
class Style:
    """One scanner "style": how tissues look and how the acquisition degrades them.

    Intensities are the mean of each pure tissue before gamma; the rendered pure-tissue value is
    ``mean ** gamma`` (see :meth:`effective_means`).

    Args:
        name: a label, e.g. ``"t2-train"``.
        background: intensity of the air around the head, in [0, 1].
        csf: intensity of cerebrospinal fluid, in [0, 1].
        gm: intensity of grey matter, in [0, 1].
        wm: intensity of white matter, in [0, 1].
        other: intensity of non-brain head tissue (skull/scalp), in [0, 1].
        gamma: exponent applied to the mixed image (> 0).
        bias_strength: amplitude of the smooth multiplicative bias field: the image is multiplied by a field
            in ``[1 - bias_strength, 1 + bias_strength]``.
        noise_sigma: standard deviation of the Rician noise (both gaussian channels), in intensity units.
        blur_sigma_inplane: gaussian blur sigma along the first two (in-plane) axes, in voxels.
        slice_thickness: gaussian blur sigma along the slice (last) axis, in voxels.
        family: the family it was drawn from (``"t1"``, ``"t2"``, ``"flair"``, ``"pd"``, ``"random"``,
            ``"custom"``).
    """

    name: str
    background: float
    csf: float
    gm: float
    wm: float
    other: float
    gamma: float = 1.0
    bias_strength: float = 0.0
    noise_sigma: float = 0.0
    blur_sigma_inplane: float = 0.0
    slice_thickness: float = 0.0
    family: str = "custom"

    def __post_init__(self) -> None:
        for tissue in TISSUES:
            value = getattr(self, tissue)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Style {self.name!r}: {tissue} intensity must be in [0, 1], got {value}")
        if not self.gamma > 0:
            raise ValueError(f"Style {self.name!r}: gamma must be positive, got {self.gamma}")
        if not 0.0 <= self.bias_strength < 1.0:
            raise ValueError(f"Style {self.name!r}: bias_strength must be in [0, 1), got {self.bias_strength}")
        for name in ("noise_sigma", "blur_sigma_inplane", "slice_thickness"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"Style {self.name!r}: {name} must be >= 0, got {getattr(self, name)}")

    @property
    def means(self) -> tuple[float, ...]:
        """Tissue intensities in :data:`TISSUES` order."""
        return tuple(getattr(self, tissue) for tissue in TISSUES)

    def effective_means(self) -> dict[str, float]:
        """Rendered intensity of each pure tissue (``mean ** gamma``), before bias, blur and noise."""
        return {tissue: getattr(self, tissue) ** self.gamma for tissue in TISSUES}

    def gm_wm_contrast(self) -> float:
        """Effective grey/white-matter contrast ``|wm**gamma - gm**gamma|``, the quantity splits are decided on."""
        return abs(self.wm**self.gamma - self.gm**self.gamma)

    def asdict(self) -> dict[str, Any]:
        """All parameters as a plain dict (JSON-serialisable), for logging."""
        return dataclasses.asdict(self)


#: The harmonization target: a clean T1-like style (no bias, no noise, no blur, gamma 1). The tissue
#: intensities are those of the MNI template's own T1 (mean over voxels of > 80 % of one tissue).
REFERENCE_STYLE = Style(name="reference-t1", background=0.0, csf=0.30, gm=0.65, wm=0.86, other=0.40, family="t1")


def style_split(style: Style) -> str | None:
    """Which split's region of parameter space ``style`` lies in.

    Args:
        style: any style.

    Returns:
        ``"train"`` when its effective GM/WM contrast is >= :data:`TRAIN_MIN_GM_WM_CONTRAST`, ``"heldout"`` when
        it is within :data:`HELDOUT_GM_WM_CONTRAST`, ``"validation"`` within :data:`VALIDATION_GM_WM_CONTRAST`,
        ``"validation_low"`` within :data:`VALIDATION_LOW_GM_WM_CONTRAST`, ``None`` otherwise.
    """
    contrast = style.gm_wm_contrast()
    tol = 1e-9
    if contrast >= TRAIN_MIN_GM_WM_CONTRAST - tol:
        return "train"
    if HELDOUT_GM_WM_CONTRAST[0] - tol <= contrast <= HELDOUT_GM_WM_CONTRAST[1] + tol:
        return "heldout"
    if VALIDATION_GM_WM_CONTRAST[0] - tol <= contrast <= VALIDATION_GM_WM_CONTRAST[1] + tol:
        return "validation"
    if VALIDATION_LOW_GM_WM_CONTRAST[0] - tol <= contrast <= VALIDATION_LOW_GM_WM_CONTRAST[1] + tol:
        return "validation_low"
    return None


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _effective_tissues(rng: np.random.Generator, family: str, contrast: float) -> dict[str, float]:
    """Draw the pure-tissue intensities of one family as they should appear after gamma."""
    u = rng.uniform
    if family == "t1":  # csf < gm < wm
        gm = u(0.35, min(0.65, 0.98 - contrast))
        wm = gm + contrast
        csf = u(0.03, gm - 0.1)
        background, other = u(0.0, 0.05), u(0.25, 0.9)
    elif family == "t2":  # wm < gm < csf
        wm = u(0.15, 0.45)
        gm = wm + contrast
        csf = u(max(gm + 0.1, 0.7), 1.0)
        background, other = u(0.0, 0.05), u(0.15, 0.7)
    elif family == "flair":  # csf < wm < gm (fluid suppressed)
        wm = u(0.3, 0.5)
        gm = wm + contrast
        csf = u(0.02, min(0.2, wm - 0.1))
        background, other = u(0.0, 0.05), u(0.2, 0.7)
    elif family == "pd":  # wm < gm, csf close to gm
        wm = u(0.35, 0.6)
        gm = wm + contrast
        csf = u(max(wm + 0.03, gm - 0.1), min(1.0, gm + 0.15))
        background, other = u(0.0, 0.05), u(0.4, 0.9)
    elif family == "random":  # any ordering, any background
        gm = u(0.0, 1.0 - contrast)
        wm = gm + contrast
        if rng.random() < 0.5:
            gm, wm = wm, gm
        csf, background, other = u(0.0, 1.0), u(0.0, 1.0), u(0.0, 1.0)
    else:
        raise ValueError(f"family must be one of {FAMILIES} or None, got {family!r}")
    values = {"background": background, "csf": csf, "gm": gm, "wm": wm, "other": other}
    return {k: float(min(max(v, 0.0), 1.0)) for k, v in values.items()}


def sample_style(rng: np.random.Generator, family: str | None = None, split: str = "train") -> Style:
    """Draw a random style (domain randomisation).

    The tissue intensities are drawn, per family, as they should look after gamma, with the grey/white-matter
    contrast drawn from the split's region (train: [0.15, 0.35], 0.7 for ``"random"``; validation:
    [0.125, 0.145]; held-out: [0.05, 0.12]; validation_low: [0.02, 0.045]); the stored means are then
    ``effective ** (1 / gamma)``.
    Families: ``"t1"`` (CSF < GM < WM),
    ``"t2"`` (WM < GM < CSF), ``"flair"`` (CSF < WM < GM), ``"pd"`` (WM < GM, CSF close to GM), ``"random"``
    (every tissue uniform in [0, 1], any ordering, any background). Then gamma ~ U(0.6, 1.6), bias strength
    ~ U(0, 0.3), Rician noise sigma ~ U(0, 0.05), in-plane blur and slice thickness ~ U(0, 1.5) voxels.

    Args:
        rng: the random generator (the only source of randomness).
        family: one of :data:`FAMILIES`; ``None`` picks one (t1 30 %, t2 20 %, flair 15 %, pd 10 %, random 25 %).
        split: one of :data:`SPLITS`; no two produce the same style (see
            :func:`style_split`).

    Returns:
        The style; ``style_split(style) == split``.
    """
    _check_split(split)
    if family is None:
        family = FAMILIES[int(rng.choice(len(FAMILIES), p=_FAMILY_WEIGHTS))]
    elif family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES} or None, got {family!r}")
    if split == "train":
        contrast = rng.uniform(TRAIN_MIN_GM_WM_CONTRAST, _TRAIN_MAX_CONTRAST[family])
    elif split == "validation":
        contrast = rng.uniform(*VALIDATION_GM_WM_CONTRAST)
    elif split == "validation_low":
        contrast = rng.uniform(*VALIDATION_LOW_GM_WM_CONTRAST)
    else:
        contrast = rng.uniform(*HELDOUT_GM_WM_CONTRAST)
    effective = _effective_tissues(rng, family, contrast)
    gamma = float(rng.uniform(*GAMMA_RANGE))
    means = {k: v ** (1.0 / gamma) for k, v in effective.items()}
    return Style(
        name=f"{family}-{split}",
        **means,
        gamma=gamma,
        bias_strength=float(rng.uniform(0.0, MAX_BIAS_STRENGTH)),
        noise_sigma=float(rng.uniform(0.0, MAX_NOISE_SIGMA)),
        blur_sigma_inplane=float(rng.uniform(0.0, MAX_BLUR_SIGMA)),
        slice_thickness=float(rng.uniform(0.0, MAX_BLUR_SIGMA)),
        family=family,
    )


@dataclass(frozen=True, eq=False)
class Anatomy:
    """Tissue fractions of one (deformed) head, on the template's grid.

    The five maps are float32 ``[H, W, D]`` arrays (RAS, last axis axial) that sum to 1 in every voxel.

    Args:
        background: fraction of air.
        csf: fraction of cerebrospinal fluid.
        gm: fraction of grey matter.
        wm: fraction of white matter.
        other: fraction of non-brain head tissue (skull/scalp).
        affine: 4x4 voxel-to-RAS-world affine (the template's).
        spacing: isotropic voxel size in mm.
        seed: the anatomy seed it was drawn from (``None`` for the undeformed template).
        params: the deformation drawn: rotation (degrees about x, y, z), per-axis scale, translation (mm),
            elastic amplitude (mm).
    """

    background: np.ndarray
    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    other: np.ndarray
    affine: np.ndarray
    spacing: float
    seed: int | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(H, W, D)``."""
        return tuple(self.gm.shape)  # type: ignore[return-value]

    def stack(self) -> np.ndarray:
        """The maps as one ``[5, H, W, D]`` array in :data:`TISSUES` order."""
        return np.stack([getattr(self, tissue) for tissue in TISSUES])

    def labels(self) -> np.ndarray:
        """Hard labels: index into :data:`TISSUES` of the largest fraction, uint8 ``[H, W, D]``."""
        return np.argmax(self.stack(), axis=0).astype(np.uint8)

    @classmethod
    def from_template(cls, template: MNITemplate) -> Anatomy:
        """The undeformed template as an anatomy."""
        return cls(
            **{tissue: getattr(template, tissue) for tissue in TISSUES},
            affine=np.asarray(template.affine),
            spacing=template.spacing,
        )


def _rotation_matrix(degrees: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _linear_interp_matrix(positions: np.ndarray, n_nodes: int) -> np.ndarray:
    """Matrix ``[len(positions), n_nodes]`` that linearly interpolates node values at fractional node positions."""
    positions = np.clip(positions, 0.0, n_nodes - 1.0)
    lo = np.minimum(np.floor(positions).astype(int), n_nodes - 2)
    frac = positions - lo
    matrix = np.zeros((len(positions), n_nodes), dtype=np.float32)
    rows = np.arange(len(positions))
    matrix[rows, lo] = 1.0 - frac
    matrix[rows, lo + 1] = frac
    return matrix


def _separable(coefficients: np.ndarray, matrices: Sequence[np.ndarray]) -> np.ndarray:
    """Evaluate ``sum_abc coef[a, b, c] * Mx[:, a] * My[:, b] * Mz[:, c]`` on the full grid."""
    mx, my, mz = matrices
    out = np.tensordot(mx, coefficients.astype(np.float32), axes=(1, 0))  # [H, b, c]
    out = np.tensordot(out, my, axes=(1, 1))  # [H, c, W]
    out = np.tensordot(out, mz, axes=(1, 1))  # [H, W, D]
    return np.ascontiguousarray(out, dtype=np.float32)


def _warp(maps: np.ndarray, coords: Sequence[np.ndarray]) -> np.ndarray:
    """Trilinear resampling of ``maps`` ``[C, H, W, D]`` at voxel coordinates ``coords`` (3 arrays), zeros outside.

    Same result as ``scipy.ndimage.map_coordinates(m, coords, order=1, mode="constant")`` per channel, computed
    once for all channels with ``torch.nn.functional.grid_sample`` (about 4x faster on CPU, deterministic).
    """
    sizes = maps.shape[1:]
    # grid_sample wants normalised (x, y, z) = (last, middle, first) axis, -1..1 at the corner voxel centres
    grid = np.stack([2.0 * coords[a] / max(sizes[a] - 1, 1) - 1.0 for a in (2, 1, 0)], axis=-1).astype(np.float32)
    with torch.no_grad():
        out = torch.nn.functional.grid_sample(
            torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[None],
            torch.from_numpy(grid)[None],
            mode="bilinear",
            padding_mode="zeros",
            align_corners=True,
        )
    return out[0].numpy()


def sample_anatomy(
    template: MNITemplate,
    rng: np.random.Generator,
    max_rotation_deg: float = 10.0,
    max_scale: float = 0.10,
    max_translation_mm: float = 4.0,
    elastic_mm: float = 5.0,
    seed: int | None = None,
) -> Anatomy:
    """Deform the template's tissue maps with a random affine plus a smooth elastic displacement.

    The head is scaled per axis by ~ 1 + U(-max_scale, max_scale), rotated about x, then y, then z by angles
    ~ U(-max_rotation_deg, max_rotation_deg) and moved by ~ U(-max_translation_mm, max_translation_mm) mm per
    axis, about the volume's centre. The elastic displacement is gaussian noise on an 8 mm control grid,
    smoothed with a 16 mm gaussian and scaled so its largest component is ``elastic_mm``, interpolated to every
    voxel. Both are composed into one coordinate map and all tissue maps are resampled together, once,
    trilinearly (zeros outside; background is 1 minus the rest, so the fractions still sum to 1). The random
    draws do not depend on the spacing, so a seed gives the same deformation (in mm) at every spacing.

    Anatomy seeds (the ``rng`` of :class:`SyntheticStyleGenerator` is derived from them) are the unit of the
    train/held-out split: :data:`TRAIN_ANATOMY_SEEDS` = ``range(0, 1000)``, :data:`HELDOUT_ANATOMY_SEEDS` =
    ``range(10_000, 10_100)``.

    Args:
        template: the tissue template (:func:`~sgad_med.data.mni.load_mni_template`).
        rng: the random generator (the only source of randomness).
        max_rotation_deg: largest rotation about each axis, degrees.
        max_scale: largest relative scaling per axis.
        max_translation_mm: largest translation per axis, mm.
        elastic_mm: largest elastic displacement component, mm.
        seed: recorded in the result (the anatomy seed), not used for drawing.

    Returns:
        The deformed anatomy on the template's grid.
    """
    shape = np.array(template.shape)
    spacing = float(template.spacing)
    rotation = rng.uniform(-max_rotation_deg, max_rotation_deg, size=3)
    scale = 1.0 + rng.uniform(-max_scale, max_scale, size=3)
    translation = rng.uniform(-max_translation_mm, max_translation_mm, size=3)
    # control grid: fixed by the field of view rounded up to 32 mm, the same at every spacing
    half_nodes = [int(math.ceil(n * spacing / 2.0 / 32.0)) * 4 for n in shape]
    nodes = [2 * h + 1 for h in half_nodes]
    noise = rng.standard_normal((3, *nodes))
    smooth = np.stack([ndi.gaussian_filter(c, _ELASTIC_SMOOTH_MM / _CONTROL_MM, mode="reflect") for c in noise])
    peak = float(np.abs(smooth).max())
    smooth *= (elastic_mm / peak if peak > 0 else 0.0) / spacing  # in voxels

    centre = (shape - 1) / 2.0
    axes_mm = [(np.arange(n) - c) * spacing for n, c in zip(shape, centre)]
    interp = [_linear_interp_matrix(a / _CONTROL_MM + h, n) for a, h, n in zip(axes_mm, half_nodes, nodes)]
    # forward: out = R S src + t about the centre (the head is scaled by `scale`, then rotated, then moved);
    # resampling needs the inverse, from output voxel to source voxel
    matrix = np.linalg.inv(_rotation_matrix(rotation) @ np.diag(scale))
    shift = -(matrix @ translation) / spacing + centre
    rel = [(np.arange(n, dtype=np.float32) - c) for n, c in zip(shape, centre)]
    coords = []
    for a in range(3):
        coord = _separable(smooth[a], interp)
        coord += np.float32(matrix[a, 0]) * rel[0][:, None, None]
        coord += np.float32(matrix[a, 1]) * rel[1][None, :, None]
        coord += np.float32(matrix[a, 2]) * rel[2][None, None, :]
        coord += np.float32(shift[a])
        coords.append(coord)
    tissues = ("csf", "gm", "wm", "other")
    warped = _warp(np.stack([getattr(template, t) for t in tissues]), coords)
    np.clip(warped, 0.0, 1.0, out=warped)
    maps = dict(zip(tissues, warped))
    background = np.clip(1.0 - warped.sum(axis=0), 0.0, 1.0).astype(np.float32)
    params = {
        "rotation_deg": rotation.tolist(),
        "scale": scale.tolist(),
        "translation_mm": translation.tolist(),
        "elastic_mm": float(elastic_mm),
    }
    return Anatomy(
        background=background,
        **maps,
        affine=np.array(template.affine),
        spacing=spacing,
        seed=seed,
        params=params,
    )


def _bias_field(shape: Sequence[int], strength: float, rng: np.random.Generator, head: np.ndarray) -> np.ndarray:
    """Smooth multiplicative field in ``[1 - strength, 1 + strength]``: low-order cosines over the field of view.

    Scaled so that its extreme over the ``head`` voxels is exactly ``strength`` away from 1 (outside the head it is
    clipped to the same range).
    """
    order = _BIAS_ORDER + 1
    coefficients = rng.standard_normal((order, order, order))
    decay = 1.0 + np.add.outer(np.add.outer(np.arange(order), np.arange(order)), np.arange(order))
    coefficients /= decay
    coefficients[0, 0, 0] = 0.0
    basis = [np.cos(np.pi * np.outer((np.arange(n) + 0.5) / n, np.arange(order))).astype(np.float32) for n in shape]
    field_ = _separable(coefficients, basis)
    peak = float(np.abs(field_[head] if head.any() else field_).max())
    if peak > 0:
        field_ *= np.float32(strength / peak)
    np.clip(field_, -strength, strength, out=field_)
    field_ += np.float32(1.0)
    return field_


def render(anatomy: Anatomy, style: Style, rng: np.random.Generator | None = None) -> np.ndarray:
    """Render an anatomy in a style.

    Steps: mix the tissue intensities by their fractions; ``x ** gamma``; multiply by a smooth bias field
    (low-order cosines, reaching ``1 +- bias_strength`` somewhere in the head); gaussian blur
    (``blur_sigma_inplane`` on the first two axes, ``slice_thickness`` on the last, in voxels); Rician noise
    ``sqrt((x + n1)**2 + n2**2)`` with ``n1, n2 ~ N(0, noise_sigma)``; clip to [0, 1].

    Args:
        anatomy: the tissue fractions.
        style: the appearance.
        rng: source of the bias field and the noise; ``None`` uses ``np.random.default_rng(0)``. Not drawn from
            for a style without bias and noise.

    Returns:
        float32 ``[H, W, D]`` volume in [0, 1].
    """
    image = np.zeros(anatomy.shape, dtype=np.float32)
    for tissue, mean in zip(TISSUES, style.means):
        if mean != 0.0:
            image += np.float32(mean) * getattr(anatomy, tissue)
    np.clip(image, 0.0, 1.0, out=image)
    if style.gamma != 1.0:
        np.power(image, np.float32(style.gamma), out=image)
    if (style.bias_strength > 0 or style.noise_sigma > 0) and rng is None:
        rng = np.random.default_rng(0)
    if style.bias_strength > 0:
        image *= _bias_field(anatomy.shape, style.bias_strength, rng, anatomy.background < 0.5)
    sigma = (style.blur_sigma_inplane, style.blur_sigma_inplane, style.slice_thickness)
    if max(sigma) > 0:
        image = ndi.gaussian_filter(image, sigma, mode="nearest", truncate=3.0)
    if style.noise_sigma > 0:
        noise = rng.standard_normal((2, *anatomy.shape), dtype=np.float32)
        noise *= np.float32(style.noise_sigma)
        image += noise[0]
        np.square(image, out=image)
        np.square(noise[1], out=noise[1])
        image += noise[1]
        np.sqrt(image, out=image)
    np.clip(image, 0.0, 1.0, out=image)
    return image


def _check_seed(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


class SyntheticStyleGenerator:
    """Pairs (a volume in a random style, the same anatomy in the reference style) with known truth.

    Fully deterministic: every random draw comes from ``np.random.default_rng([seed, stream, ...seeds])``, so
    the same seeds give bit-identical arrays in any process, and an anatomy seed gives the same anatomy whatever
    the style (and a style seed the same style whatever the anatomy). No global RNG is touched.

    Args:
        template: the tissue template; ``None`` loads :func:`~sgad_med.data.mni.load_mni_template` at ``spacing``.
        spacing: voxel size in mm when ``template`` is ``None`` (2 mm gives 98 x 116 x 94 volumes).
        seed: global seed; changes every anatomy and style.
        anatomy_cache: how many deformed anatomies to keep in memory (a 2 mm anatomy is 21 MB).
        anatomy_kwargs: passed on to :func:`sample_anatomy` (e.g. ``elastic_mm``).

    Example::

        gen = SyntheticStyleGenerator(spacing=2.0)
        pair = gen.pair(anatomy_seed=3, style_seed=17)          # train split
        pair["source"].shape, pair["style"].name                # (98, 116, 94), e.g. 't2-train'
        test = gen.pair(anatomy_seed=10_000, style_seed=0, split="heldout")
    """

    def __init__(
        self,
        template: MNITemplate | None = None,
        spacing: float = 2.0,
        seed: int = 0,
        anatomy_cache: int = 4,
        anatomy_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.template = template if template is not None else load_mni_template(spacing=spacing)
        self.spacing = float(self.template.spacing)
        self.seed = _check_seed("seed", seed)
        self.anatomy_kwargs = dict(anatomy_kwargs or {})
        self._cache_size = max(int(anatomy_cache), 0)
        self._cache: OrderedDict[int, Anatomy] = OrderedDict()

    def anatomy(self, anatomy_seed: int) -> Anatomy:
        """The deformed anatomy named by ``anatomy_seed`` (cached; treat its arrays as read-only).

        Args:
            anatomy_seed: non-negative integer.

        Returns:
            The anatomy.
        """
        anatomy_seed = _check_seed("anatomy_seed", anatomy_seed)
        if anatomy_seed in self._cache:
            self._cache.move_to_end(anatomy_seed)
            return self._cache[anatomy_seed]
        rng = np.random.default_rng([self.seed, _ANATOMY_STREAM, anatomy_seed])
        anatomy = sample_anatomy(self.template, rng, seed=anatomy_seed, **self.anatomy_kwargs)
        for name in TISSUES:
            getattr(anatomy, name).flags.writeable = False
        if self._cache_size:
            self._cache[anatomy_seed] = anatomy
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return anatomy

    def style(self, style_seed: int, split: str = "train", family: str | None = None) -> Style:
        """The style named by ``style_seed`` in ``split`` (and ``family``, if given).

        Args:
            style_seed: non-negative integer.
            split: one of :data:`SPLITS`.
            family: one of :data:`FAMILIES`, or ``None`` for a random one.

        Returns:
            The style.
        """
        _check_split(split)
        style_seed = _check_seed("style_seed", style_seed)
        rng = np.random.default_rng([self.seed, _STYLE_STREAM, style_seed, SPLITS.index(split)])
        return sample_style(rng, family=family, split=split)

    def volume(self, anatomy_seed: int, style: Style, noise_seed: int = 0) -> np.ndarray:
        """Render anatomy ``anatomy_seed`` in any ``style``.

        Args:
            anatomy_seed: names the anatomy.
            style: the appearance.
            noise_seed: names the bias field and noise draw.

        Returns:
            float32 ``[H, W, D]`` volume in [0, 1].
        """
        anatomy = self.anatomy(anatomy_seed)
        rng = np.random.default_rng([self.seed, _VOLUME_STREAM, anatomy_seed, _check_seed("noise_seed", noise_seed)])
        return render(anatomy, style, rng)

    def pair(self, anatomy_seed: int, style_seed: int, split: str = "train", family: str | None = None) -> dict:
        """A training (or evaluation) pair.

        Args:
            anatomy_seed: names the anatomy; must not belong to the other split's seed range
                (:data:`TRAIN_ANATOMY_SEEDS` / :data:`HELDOUT_ANATOMY_SEEDS`).
            style_seed: names the style within the split.
            split: one of :data:`SPLITS`.
            family: restrict the style to one of :data:`FAMILIES`.

        Returns:
            A dict: ``source`` (float32 ``[H, W, D]`` in the drawn style), ``target`` (the same anatomy in
            :data:`REFERENCE_STYLE`), ``anatomy_seed``, ``style_seed``, ``split``, ``style`` (the :class:`Style`),
            ``style_params`` (``style.asdict()``), ``affine`` (4x4 RAS) and ``spacing``.
        """
        _check_split(split)
        anatomy_seed = _check_seed("anatomy_seed", anatomy_seed)
        other = TRAIN_ANATOMY_SEEDS if split == "heldout" else HELDOUT_ANATOMY_SEEDS
        if anatomy_seed in other:
            raise ValueError(
                f"anatomy seed {anatomy_seed} belongs to the other split than {split!r}: use TRAIN_ANATOMY_SEEDS "
                "for training and HELDOUT_ANATOMY_SEEDS for evaluation"
            )
        anatomy = self.anatomy(anatomy_seed)
        style = self.style(style_seed, split=split, family=family)
        rng = np.random.default_rng([self.seed, _RENDER_STREAM, anatomy_seed, style_seed, SPLITS.index(split)])
        return {
            "source": render(anatomy, style, rng),
            "target": render(anatomy, REFERENCE_STYLE),
            "anatomy_seed": anatomy_seed,
            "style_seed": int(style_seed),
            "split": split,
            "style": style,
            "style_params": style.asdict(),
            "affine": np.array(anatomy.affine),
            "spacing": anatomy.spacing,
        }


class SyntheticPairDataset(IterableDataset):
    """Torch iterable dataset of :meth:`SyntheticStyleGenerator.pair` results, as ``[1, H, W, D]`` tensors.

    One pass yields ``styles_per_anatomy`` pairs for each anatomy seed, in order; style seeds are
    ``(epoch * len(anatomy_seeds) + i) * styles_per_anatomy + k`` for the ``i``-th anatomy, so every pair of
    an epoch has its own style and every epoch new ones. With several DataLoader workers, worker ``w`` takes
    anatomies ``w, w + n, ...``. Each worker builds its generator lazily (nothing large is pickled).

    Args:
        anatomy_seeds: the anatomies to use (e.g. :data:`TRAIN_ANATOMY_SEEDS`).
        styles_per_anatomy: pairs per anatomy per pass.
        split: ``"train"`` or ``"heldout"``.
        spacing: voxel size in mm.
        seed: the generator's global seed.
        mni_dir: folder of the template files (``None``: search, see :func:`~sgad_med.data.mni.find_mni_dir`).
        family: restrict styles to one family.
        epoch: offsets the style seeds; see :meth:`set_epoch`.

    Yields:
        dicts with ``source``, ``target`` (float32 tensors ``[1, H, W, D]``), ``anatomy_seed``, ``style_seed``.
    """

    def __init__(
        self,
        anatomy_seeds: Sequence[int],
        styles_per_anatomy: int = 1,
        split: str = "train",
        spacing: float = 2.0,
        seed: int = 0,
        mni_dir: str | os.PathLike | None = None,
        family: str | None = None,
        epoch: int = 0,
    ) -> None:
        super().__init__()
        _check_split(split)
        self.anatomy_seeds = list(anatomy_seeds)
        self.styles_per_anatomy = int(styles_per_anatomy)
        self.split = split
        self.spacing = float(spacing)
        self.seed = int(seed)
        self.mni_dir = mni_dir
        self.family = family
        self.epoch = int(epoch)
        self._generator: SyntheticStyleGenerator | None = None

    def set_epoch(self, epoch: int) -> None:
        """Use the style seeds of ``epoch`` from now on."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.anatomy_seeds) * self.styles_per_anatomy

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_generator"] = None
        return state

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._generator is None:
            template = load_mni_template(self.mni_dir, spacing=self.spacing)
            self._generator = SyntheticStyleGenerator(template, seed=self.seed, anatomy_cache=1)
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        n = len(self.anatomy_seeds)
        for i in range(worker, n, workers):
            anatomy_seed = self.anatomy_seeds[i]
            for k in range(self.styles_per_anatomy):
                style_seed = (self.epoch * n + i) * self.styles_per_anatomy + k
                pair = self._generator.pair(anatomy_seed, style_seed, split=self.split, family=self.family)
                yield {
                    "source": torch.from_numpy(pair["source"])[None],
                    "target": torch.from_numpy(pair["target"])[None],
                    "anatomy_seed": anatomy_seed,
                    "style_seed": style_seed,
                }
