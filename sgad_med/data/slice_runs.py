"""Whole scans with every slice labelled: runs of damage, clean slices beside damage, near-empty end slices.

The slice-sequence detector (:class:`~sgad_med.networks.SliceSequenceNet`) learns from scans in which damage
comes as it does in real acquisitions: in contiguous runs of slices (motion during one shot, a spike over
several slices) as well as alone, at any density from none to 40 % of the slices, and anywhere, the thin end
slices with little tissue included. Every slice carries its own label, so the network learns to say *which*
slice is damaged, not *where* a slice differs from its neighbours: a clean slice between two damaged ones is
labelled clean, the middle of a run damaged.

- :func:`draw_damage_layout` draws such a layout (kind and severity per slice) for a scan;
- :func:`apply_damage_layout` applies it with :data:`~sgad_med.transforms.artifacts.ARTIFACTS` and returns the
  truth: a slice counts as damaged only where the artifact changed it measurably (``min_change``; e.g. signal
  loss on an empty slice changes nothing and stays clean);
- :class:`SliceRunVolumes` is the training / calibration dataset: synthetic anatomies in random styles
  (some in the reference style, some passed through the harmonizer), a random run of consecutive slices
  (often the whole scan, ends included), optional in-plane zoom and a perturbation of the normalization, then a
  damage layout.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sgad_med.data.corrupted import check_kinds
from sgad_med.data.slices import SyntheticVolumeDataset
from sgad_med.transforms.artifacts import ARTIFACT_KINDS, ARTIFACTS
from sgad_med.transforms.intensity import ScanNormalize

__all__ = [
    "CLEAN",
    "DENSITY_REGIMES",
    "draw_damage_layout",
    "apply_damage_layout",
    "distance_to_damage",
    "SliceRunVolumes",
]

logger = logging.getLogger(__name__)

#: ``kind`` of a clean slice.
CLEAN = -1
#: ``(probability, (low, high))`` of the damaged fraction of a scan's slices: none, about 5 %, up to 40 %.
DENSITY_REGIMES: tuple[tuple[float, tuple[float, float]], ...] = ((0.15, (0.0, 0.0)), (0.25, (0.02, 0.08)),
                                                                  (0.60, (0.08, 0.40)))


def distance_to_damage(damaged: np.ndarray) -> np.ndarray:
    """Distance ``[D]`` (in slices) of each slice to the nearest damaged slice (0 on damage; ``D`` when none)."""
    damaged = np.asarray(damaged, dtype=bool)
    depth = damaged.size
    where = np.flatnonzero(damaged)
    if where.size == 0:
        return np.full(depth, depth, dtype=np.int64)
    return np.min(np.abs(np.arange(depth)[:, None] - where[None, :]), axis=1)


def draw_damage_layout(
    depth: int,
    rng: np.random.Generator,
    kinds: Sequence[str] = ARTIFACT_KINDS,
    density: float | None = None,
    candidates: np.ndarray | None = None,
    max_run: int = 8,
    single_fraction: float = 0.3,
    sandwich_fraction: float = 0.35,
    end_fraction: float = 0.25,
    severity: Sequence[float] = (0.2, 1.0),
) -> tuple[np.ndarray, np.ndarray]:
    """A damage layout for a scan of ``depth`` slices: runs of one kind, gaps of one or two clean slices, ends.

    Runs are placed until ``density`` of the candidate slices are damaged. A run is one slice long with
    probability ``single_fraction``, else 2 to ``max_run`` slices, of one kind and one severity (each slice
    jittered by up to 0.1). With probability ``sandwich_fraction`` a run is placed one or two clean slices after
    an earlier one, so that clean slices have damaged neighbours on both sides; with ``end_fraction`` it starts
    at the first or last candidate slice (the thin ends of the head).

    Args:
        depth: slices in the scan.
        rng: the random generator (the layout depends only on its state and the arguments).
        kinds: artifact kinds to draw from.
        density: fraction of candidate slices to damage; ``None`` draws it from :data:`DENSITY_REGIMES`.
        candidates: bool ``[D]``, the slices damage may hit (``None``: all).
        max_run: longest run.
        single_fraction: probability that a run is a single slice.
        sandwich_fraction: probability that a run starts 2 or 3 slices after an earlier run's end (or ends 2 or 3
            before its start).
        end_fraction: probability that a run starts at an end of the candidate slices.
        severity: ``(low, high)`` of the run severities.

    Returns:
        ``(kind [D] int64, severity [D] float32)``: index into :data:`ARTIFACT_KINDS` (:data:`CLEAN` for clean
        slices) and the severity (0 for clean slices).
    """
    check_kinds(kinds)
    depth = int(depth)
    allowed = np.ones(depth, bool) if candidates is None else np.asarray(candidates, dtype=bool).copy()
    if allowed.shape != (depth,):
        raise ValueError(f"candidates must have shape ({depth},), got {allowed.shape}")
    kind_of = np.full(depth, CLEAN, dtype=np.int64)
    severity_of = np.zeros(depth, dtype=np.float32)
    if density is None:
        regime = rng.choice(len(DENSITY_REGIMES), p=[p for p, _ in DENSITY_REGIMES])
        density = float(rng.uniform(*DENSITY_REGIMES[regime][1]))
    positions = np.flatnonzero(allowed)
    target = int(round(float(density) * positions.size))
    if target == 0 or positions.size == 0:
        return kind_of, severity_of
    runs: list[tuple[int, int]] = []
    for _ in range(20 * target):
        if (kind_of != CLEAN).sum() >= target:
            break
        length = 1 if rng.random() < single_fraction else int(rng.integers(2, max_run + 1))
        length = min(length, target - int((kind_of != CLEAN).sum()) + 1)
        roll = rng.random()
        if runs and roll < sandwich_fraction:
            start_of, end_of = runs[int(rng.integers(len(runs)))]
            gap = int(rng.integers(1, 3))
            start = end_of + 1 + gap if rng.random() < 0.5 else start_of - gap - length
        elif roll < sandwich_fraction + end_fraction:
            start = int(positions[0]) if rng.random() < 0.5 else int(positions[-1]) - length + 1
        else:
            start = int(rng.choice(positions)) - int(rng.integers(length))
        stop = start + length
        if start < 0 or stop > depth or not allowed[start:stop].all() or (kind_of[start:stop] != CLEAN).any():
            continue
        kind_index = ARTIFACT_KINDS.index(kinds[int(rng.integers(len(kinds)))])
        base = float(rng.uniform(*severity))
        kind_of[start:stop] = kind_index
        severity_of[start:stop] = np.clip(base + rng.uniform(-0.1, 0.1, length), 0.0, 1.0)
        runs.append((start, stop - 1))
    return kind_of, severity_of


def apply_damage_layout(
    volume01: np.ndarray, kind: np.ndarray, severity: np.ndarray, rng: np.random.Generator,
    min_change: float = 1e-3,
) -> tuple[np.ndarray, np.ndarray]:
    """Damage a normalized volume ``[H, W, D]`` as a layout says; the per-slice truth.

    Args:
        volume01: intensities in [0, 1], slice axis last (not changed).
        kind: ``[D]`` kind index per slice (:data:`CLEAN`: left alone).
        severity: ``[D]`` severity per slice.
        rng: generator of the artifacts' random parameters.
        min_change: a slice counts as damaged only if the mean absolute change the artifact made reaches this.

    Returns:
        ``(damaged volume [H, W, D] float32, label [D] float32)``; ``label`` is 1 where a slice was damaged.
    """
    out = np.array(volume01, dtype=np.float32, copy=True)
    label = np.zeros(out.shape[-1], dtype=np.float32)
    for k in np.flatnonzero(np.asarray(kind) != CLEAN):
        before = out[..., k]
        after = ARTIFACTS[ARTIFACT_KINDS[int(kind[k])]](before, float(severity[k]), rng)
        if float(np.abs(after - before).mean()) >= min_change:
            out[..., k] = after
            label[k] = 1.0
    return out, label


class SliceRunVolumes(SyntheticVolumeDataset):
    """Synthetic scans (or runs of their consecutive slices) with damage laid out in runs and every slice labelled.

    Item ``i`` is volume ``i``: anatomy ``anatomy_seeds[i // styles_per_anatomy]`` in style seed ``i`` of
    ``split``, in the reference style with probability ``reference_fraction``, passed through ``harmonizer`` with
    probability ``harmonized_fraction`` (harmonized volumes are kept in memory: the harmonizer is the costly
    part), normalized as at inference. Then, drawn from ``[seed, i, access]`` (a fixed draw per item when
    ``redraw=False``):

    - a run of consecutive slices (the whole scan with probability ``whole_fraction``, else ``min_slices`` or
      more, up to ``max_slices``);
    - an in-plane zoom by a factor in ``zoom`` with probability ``zoom_fraction`` (scans at other resolutions);
    - with probability ``shift_fraction``, the tissue intensities moved as other normalization percentiles would
      move them (``x -> a (c + (1 - c) x)`` on nonzero voxels, ``c`` in ``shift``, ``a`` in ``gain``): a few
      damaged slices can move the scan's percentiles a long way (on the MNI T1, noise over five slices moves the
      low one from 64 to 10, ``c`` = 0.24), and that must not change the scores of the other slices;
    - with probability ``plane_fraction``, the scan cut into sagittal or coronal slices instead of axial ones
      (half each; drawn from its own stream, so the other draws stay as they were): scans acquired in those
      planes are sliced so by the pipeline;
    - a damage layout (:func:`draw_damage_layout`) over all slices (empty ones too: a spike or an intensity jump
      shows on air; damage that changes nothing is not labelled), applied after all of the above.

    Each item is a dict of tensors: ``image`` ``[D, H, W]`` (slice axis first), ``label`` ``[D]`` (1: damaged),
    ``kind`` ``[D]`` (:data:`CLEAN` or an index into :data:`ARTIFACT_KINDS`), ``severity`` ``[D]``,
    ``foreground`` ``[D]`` (head fraction of each slice), ``weight`` ``[D]`` (loss weight: 0 within ``margin``
    slices of an end of the run that is not an end of the scan, where the network lacks context;
    ``neighbour_weight`` for clean slices within 2 slices of damage; 1 elsewhere), ``truncated`` ``[2]`` (whether
    the run was cut at its start / end).

    Args:
        anatomy_seeds: anatomies to use.
        styles_per_anatomy: volumes per anatomy.
        split: ``"train"`` or ``"heldout"`` styles (the anatomy seeds must belong to the same split).
        kinds: artifact kinds to draw from.
        severity: ``(low, high)`` of the run severities.
        density: fixed damaged fraction (``None``: drawn from :data:`DENSITY_REGIMES`).
        reference_fraction: probability that a volume is in the reference style.
        harmonizer: object with ``harmonize01(volume [H, W, D])`` (e.g. :class:`sgad_med.harmonizer.Harmonizer`).
        harmonized_fraction: probability that a volume goes through ``harmonizer``.
        whole_fraction: probability of the whole scan rather than a shorter run of slices.
        min_slices: shortest run of slices.
        max_slices: longest run (``None``: the whole scan).
        max_zoomed_slices: longest run of an item zoomed in by more than 1.25 (``None``: as unzoomed ones).
        zoom: ``(low, high)`` in-plane zoom factors.
        zoom_fraction: probability of a zoom.
        shift: ``(low, high)`` of the normalization perturbation's offset ``c``.
        gain: ``(low, high)`` of its gain ``a``.
        shift_fraction: probability of the perturbation.
        plane_fraction: probability of sagittal or coronal slices instead of axial ones.
        margin: slices at a cut end of the run without loss weight.
        neighbour_weight: loss weight of clean slices within 2 slices of damage.
        redraw: new draws at every access (training) or the same item every time (calibration).
        spacing: voxel size of the synthetic volumes, mm.
        seed: seed of every draw.
        mni_dir: where the MNI maps are (``None``: searched).
        normalizer: the scan normalization of inference.
    """

    def __init__(
        self,
        anatomy_seeds: Sequence[int],
        styles_per_anatomy: int = 1,
        split: str = "train",
        kinds: Sequence[str] = ARTIFACT_KINDS,
        severity: Sequence[float] = (0.2, 1.0),
        density: float | None = None,
        reference_fraction: float = 0.15,
        harmonizer: Any = None,
        harmonized_fraction: float = 0.0,
        whole_fraction: float = 0.5,
        min_slices: int = 16,
        max_slices: int | None = None,
        max_zoomed_slices: int | None = 48,
        zoom: Sequence[float] = (0.6, 2.0),
        zoom_fraction: float = 0.0,
        shift: Sequence[float] = (-0.05, 0.3),
        gain: Sequence[float] = (0.85, 1.15),
        shift_fraction: float = 0.0,
        plane_fraction: float = 0.0,
        margin: int = 3,
        neighbour_weight: float = 2.0,
        redraw: bool = True,
        spacing: float = 2.0,
        seed: int = 0,
        mni_dir: str | os.PathLike | None = None,
        normalizer: ScanNormalize | None = None,
    ) -> None:
        check_kinds(kinds)
        super().__init__(anatomy_seeds, styles_per_anatomy, spacing, seed, mni_dir, normalizer)
        self.split = split
        self.kinds = [str(k) for k in kinds]
        self.severity = tuple(float(s) for s in severity)
        self.density = None if density is None else float(density)
        self.reference_fraction = float(reference_fraction)
        self.harmonizer = harmonizer
        self.harmonized_fraction = float(harmonized_fraction) if harmonizer is not None else 0.0
        self.whole_fraction = float(whole_fraction)
        self.min_slices = int(min_slices)
        self.max_slices = None if max_slices is None else int(max_slices)
        self.max_zoomed_slices = None if max_zoomed_slices is None else int(max_zoomed_slices)
        self.zoom = tuple(float(z) for z in zoom)
        self.zoom_fraction = float(zoom_fraction)
        self.shift = tuple(float(s) for s in shift)
        self.gain = tuple(float(g) for g in gain)
        self.shift_fraction = float(shift_fraction)
        self.plane_fraction = float(plane_fraction)
        self.margin = int(margin)
        self.neighbour_weight = float(neighbour_weight)
        self.redraw = redraw
        self._harmonized: dict[int, tuple[torch.Tensor, np.ndarray]] = {}
        self._plane_foreground: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._accesses: dict[int, int] = {}

    def will_harmonize(self, index: int) -> bool:
        """Whether volume ``index`` goes through the harmonizer (fixed per index)."""
        rng = np.random.default_rng([self.seed, index, 0])
        rng.random()  # the reference-style draw comes first
        return bool(rng.random() < self.harmonized_fraction)

    def clean_volume(self, index: int) -> tuple[torch.Tensor, np.ndarray]:
        """Volume ``index`` clean and normalized ``[H, W, D]`` and the head fraction of each slice ``[D]``."""
        if index in self._harmonized:
            return self._harmonized[index]
        rng = np.random.default_rng([self.seed, index, 0])
        pair = self.generator.pair(self.anatomy_seed(index), style_seed=index, split=self.split)
        volume = pair["target"] if rng.random() < self.reference_fraction else pair["source"]
        volume01 = self.normalized(volume)
        foreground = (pair["target"] > 0.05).mean(axis=(0, 1)).astype(np.float32)
        if self.plane_fraction > 0:  # the head fraction of sagittal and coronal slices, for items cut so
            self._plane_foreground[index] = tuple(
                (np.moveaxis(pair["target"], axis, -1) > 0.05).mean(axis=(0, 1)).astype(np.float32) for axis in (0, 1))
        if rng.random() < self.harmonized_fraction:
            volume01 = torch.as_tensor(self.harmonizer.harmonize01(volume01)).float().clamp(0.0, 1.0)
            self._harmonized[index] = (volume01, foreground)
        return volume01, foreground

    def prepare_harmonized(self, progress: bool = False) -> int:
        """Harmonize (and keep) every volume that will be harmonized, now; returns how many."""
        from tqdm import tqdm

        start = time.perf_counter()
        chosen = [i for i in range(len(self)) if self.will_harmonize(i)]
        for i in tqdm(chosen, desc="harmonizing volumes", disable=not progress):
            self.clean_volume(i)
        logger.info("harmonized %d of %d volumes in %.0f s", len(chosen), len(self),
                                         time.perf_counter() - start)
        return len(chosen)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        volume01, foreground = self.clean_volume(index)
        access = self._accesses.get(index, 0)
        if self.redraw:
            self._accesses[index] = access + 1
        rng = np.random.default_rng([self.seed, index, 1, access])
        plane_rng = np.random.default_rng([self.seed, index, 2, access])
        if self.plane_fraction > 0 and plane_rng.random() < self.plane_fraction:
            axis = int(plane_rng.integers(0, 2))  # 0: sagittal, 1: coronal slices, moved to the last axis
            volume01 = torch.as_tensor(volume01).movedim(axis, -1).contiguous()
            foreground = self._plane_foreground[index][axis]
        depth = volume01.shape[-1]
        zoomed = rng.random() < self.zoom_fraction
        factor = float(rng.uniform(*self.zoom)) if zoomed else 1.0
        longest = depth if self.max_slices is None else min(depth, self.max_slices)
        if factor > 1.25 and self.max_zoomed_slices is not None:  # zoomed in: fewer slices, so that an item
            longest = min(longest, max(self.min_slices, self.max_zoomed_slices))  # costs about as much
        if rng.random() < self.whole_fraction and longest == depth:
            start, length = 0, depth
        else:
            length = int(rng.integers(min(self.min_slices, longest), longest + 1))
            start = int(rng.integers(0, depth - length + 1))
        volume = volume01[..., start : start + length].float()
        fg = foreground[start : start + length]
        if zoomed:
            size = [max(8, int(round(n * factor))) for n in volume.shape[:2]]
            volume = torch.nn.functional.interpolate(volume.permute(2, 0, 1)[None], size=size, mode="bilinear",
                                                     align_corners=False)[0].permute(1, 2, 0).clamp(0.0, 1.0)
        volume = volume.numpy()
        if rng.random() < self.shift_fraction:
            c, a = float(rng.uniform(*self.shift)), float(rng.uniform(*self.gain))
            volume = np.where(volume > 0, np.clip((c + (1.0 - c) * volume) * a, 0.0, 1.0), 0.0).astype(np.float32)
        kind, severity = draw_damage_layout(length, rng, self.kinds, self.density, severity=self.severity)
        damaged, label = apply_damage_layout(volume, kind, severity, rng)
        kind = np.where(label > 0, kind, CLEAN)
        severity = np.where(label > 0, severity, 0.0).astype(np.float32)
        truncated = (start > 0, start + length < depth)
        weight = np.ones(length, dtype=np.float32)
        near = (distance_to_damage(label > 0) <= 2) & (label == 0)
        weight[near] = self.neighbour_weight
        if truncated[0]:
            weight[: self.margin] = 0.0
        if truncated[1]:
            weight[length - self.margin :] = 0.0
        return {
            "image": torch.from_numpy(np.ascontiguousarray(damaged.transpose(2, 0, 1))),
            "label": torch.from_numpy(label),
            "kind": torch.from_numpy(kind.astype(np.int64)),
            "severity": torch.from_numpy(severity),
            "foreground": torch.from_numpy(np.asarray(fg, dtype=np.float32)),
            "weight": torch.from_numpy(weight),
            "truncated": torch.tensor(truncated),
        }
