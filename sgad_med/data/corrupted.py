"""2.5D stacks whose centre slice was damaged on purpose (or left clean), with the truth: for the detector and
the restorer.

Clean volumes come from the synthetic generator (many anatomies, many styles, the reference style among them,
and optionally volumes that went through the harmonizer), are normalized exactly as a real MR scan is at
inference, and are cut into stacks. The artifact is drawn afresh at every access (kind, severity, seed from
``[seed, index, access]``), so every epoch sees new damage on the cached clean stacks; with ``redraw=False`` an
item is the same at every access (validation and evaluation sets).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sgad_med.data.slices import SyntheticVolumeDataset, choose_slices
from sgad_med.transforms.artifacts import ARTIFACT_KINDS, ARTIFACTS
from sgad_med.transforms.intensity import ScanNormalize
from sgad_med.transforms.slices import pad_to_multiple, slice_stacks

__all__ = ["CLEAN", "CorruptedSlices", "corrupt_stack"]

#: ``kind`` value of an item whose centre slice is clean.
CLEAN = -1


def corrupt_stack(
    stack: torch.Tensor, position: int, kind: str, severity: float, rng: np.random.Generator
) -> torch.Tensor:
    """A copy of a stack ``[2c+1, H, W]`` with slice ``position`` damaged by artifact ``kind``."""
    out = stack.clone()
    out[position] = torch.from_numpy(ARTIFACTS[kind](stack[position].numpy(), severity, rng))
    return out


def check_kinds(kinds: Sequence[str]) -> None:
    """Refuse an empty list of artifact kinds or names outside :data:`ARTIFACT_KINDS`."""
    unknown = sorted(set(kinds) - set(ARTIFACT_KINDS))
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {ARTIFACT_KINDS}, got unknown {unknown}")


class CorruptedSlices(SyntheticVolumeDataset):
    """Stacks of synthetic slices, the centre slice corrupted with probability ``corrupt_fraction``.

    Item ``i`` is volume ``i``: anatomy ``anatomy_seeds[i // styles_per_anatomy]`` in style seed ``i`` of
    ``split`` (with probability ``reference_fraction`` in the reference style instead, and with probability
    ``harmonized_fraction`` passed through ``harmonizer`` first). From it ``slices_per_volume`` slices with head
    are drawn. Each item is a dict of tensors with a leading slice axis (batch them with
    :func:`sgad_med.data.slices.collate_slices`):

    - ``image`` ``[N, 2c+1, H, W]``: the stacks as damaged (H, W zero-padded to ``multiple``);
    - ``label`` ``[N, 1]``: 1 where the centre slice was damaged (the detector's target);
    - ``clean`` ``[N, 1, H, W]``: the centre slice before damage (the restorer's target);
    - ``kind`` ``[N]``: index into :data:`~sgad_med.transforms.artifacts.ARTIFACT_KINDS`, :data:`CLEAN` if clean;
    - ``severity`` ``[N]``: the severity drawn (0 for clean slices).

    Args:
        anatomy_seeds: anatomies to use.
        styles_per_anatomy: volumes per anatomy, each in its own style.
        slices_per_volume: slices drawn from each volume.
        split: ``"train"`` or ``"heldout"`` styles (anatomy seeds must belong to the same split).
        context: neighbours on each side of the centre slice.
        kinds: artifact kinds to draw from (leave one out to measure the novelty score on it).
        severity: ``(low, high)`` range severities are drawn from uniformly; a single float fixes it.
        corrupt_fraction: probability that a centre slice is damaged.
        neighbour_fraction: probability that, in addition, one neighbour of the stack is damaged (as in real
            scans, where damage often spans slices); that slice's truth is not recorded in ``label``.
        reference_fraction: probability that a volume is in the reference style.
        harmonizer: an object with ``harmonize01(volume [H, W, D]) -> volume`` (e.g.
            :class:`sgad_med.harmonizer.Harmonizer`), so clean slices also look like harmonized ones.
        harmonized_fraction: probability that a volume goes through ``harmonizer``.
        redraw: draw new damage at every access (training) or keep it fixed (validation).
        spacing: voxel size of the synthetic volumes, mm.
        seed: seed of every draw.
        mni_dir: where the MNI maps are (``None``: searched).
        min_foreground: a slice is drawn only if at least this fraction of it is head.
        multiple: pad H and W to a multiple of this.
        cache: keep the clean stacks of a volume in memory after their first use.
        normalizer: the scan normalization of inference (see :class:`~sgad_med.data.slices.SyntheticVolumeDataset`).
    """

    def __init__(
        self,
        anatomy_seeds: Sequence[int],
        styles_per_anatomy: int = 2,
        slices_per_volume: int = 8,
        split: str = "train",
        context: int = 1,
        kinds: Sequence[str] = ARTIFACT_KINDS,
        severity: float | Sequence[float] = (0.2, 1.0),
        corrupt_fraction: float = 0.5,
        neighbour_fraction: float = 0.0,
        reference_fraction: float = 0.2,
        harmonizer: Any = None,
        harmonized_fraction: float = 0.0,
        redraw: bool = True,
        spacing: float = 2.0,
        seed: int = 0,
        mni_dir: str | os.PathLike | None = None,
        min_foreground: float = 0.1,
        multiple: int = 16,
        cache: bool = True,
        normalizer: ScanNormalize | None = None,
    ) -> None:
        check_kinds(kinds)
        super().__init__(anatomy_seeds, styles_per_anatomy, spacing, seed, mni_dir, normalizer)
        self.slices_per_volume = int(slices_per_volume)
        self.split = split
        self.context = int(context)
        self.kinds = [str(k) for k in kinds]
        low, high = (float(severity), float(severity)) if np.isscalar(severity) else map(float, severity)
        self.severity = (low, high)
        self.corrupt_fraction = float(corrupt_fraction)
        self.neighbour_fraction = float(neighbour_fraction)
        self.reference_fraction = float(reference_fraction)
        self.harmonizer = harmonizer
        self.harmonized_fraction = float(harmonized_fraction) if harmonizer is not None else 0.0
        self.redraw = redraw
        self.min_foreground = float(min_foreground)
        self.multiple = int(multiple)
        self.cache = cache
        self.damage_seed = self.seed
        self._stacks: dict[int, torch.Tensor] = {}
        self._accesses: dict[int, int] = {}

    def clean_stacks(self, index: int) -> torch.Tensor:
        """The clean stacks ``[N, 2c+1, H, W]`` of volume ``index`` (normalized, not yet padded)."""
        if index in self._stacks:
            return self._stacks[index]
        rng = np.random.default_rng([self.seed, index, 0])
        pair = self.generator.pair(self.anatomy_seed(index), style_seed=index, split=self.split)
        volume = pair["target"] if rng.random() < self.reference_fraction else pair["source"]
        volume01 = self.normalized(volume)
        if rng.random() < self.harmonized_fraction:
            volume01 = torch.as_tensor(self.harmonizer.harmonize01(volume01))
        foreground = (pair["target"] > 0.05).mean(axis=(0, 1))
        chosen = choose_slices(foreground, self.min_foreground, self.slices_per_volume, [self.seed, index])
        stacks = slice_stacks(volume01, self.context, chosen)
        if self.cache:
            self._stacks[index] = stacks
        return stacks

    def with_kinds(self, kinds: Sequence[str], seed: int | None = None) -> CorruptedSlices:
        """The same clean volumes (sharing their cache), damaged by other kinds (and draws, with ``seed``).

        Leave-one-type-out trains many detectors on the same slices; rendering them once saves most of the time.
        """
        other = copy.copy(self)
        check_kinds(kinds)
        other.kinds = [str(k) for k in kinds]
        other._accesses = {}
        if seed is not None:
            other.damage_seed = int(seed)
        return other

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        stacks = self.clean_stacks(index)
        access = self._accesses.get(index, 0)
        if self.redraw:
            self._accesses[index] = access + 1
        rng = np.random.default_rng([self.damage_seed, index, 1, access])
        centre, width = self.context, stacks.shape[1]
        images, labels, kinds, severities = [], [], [], []
        for stack in stacks:
            if width > 1 and rng.random() < self.neighbour_fraction:
                neighbour = int(rng.choice([p for p in range(width) if p != centre]))
                kind = self.kinds[rng.integers(len(self.kinds))]
                stack = corrupt_stack(stack, neighbour, kind, rng.uniform(*self.severity), rng)
            if rng.random() < self.corrupt_fraction:
                kind_index = int(rng.integers(len(self.kinds)))
                severity = float(rng.uniform(*self.severity))
                stack = corrupt_stack(stack, centre, self.kinds[kind_index], severity, rng)
                labels.append(1.0)
                kinds.append(ARTIFACT_KINDS.index(self.kinds[kind_index]))
                severities.append(severity)
            else:
                labels.append(0.0)
                kinds.append(CLEAN)
                severities.append(0.0)
            images.append(stack)
        # Padded only now, after the damage: damage applied to a padded slice spreads into the zero border
        # (k-space artifacts ring there), a cue that real scans, damaged before any padding, never show.
        return {
            "image": pad_to_multiple(torch.stack(images), self.multiple)[0],
            "label": torch.tensor(labels, dtype=torch.float32)[:, None],
            "clean": pad_to_multiple(stacks[:, centre : centre + 1], self.multiple)[0],
            "kind": torch.tensor(kinds, dtype=torch.int64),
            "severity": torch.tensor(severities, dtype=torch.float32),
        }
