"""Datasets of 2.5D slices cut from synthetic volume pairs, for training the slice networks."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from sgad_med.data.synthetic import SyntheticStyleGenerator
from sgad_med.transforms.intensity import ScanNormalize
from sgad_med.transforms.slices import pad_to_multiple, slice_stacks


def choose_slices(foreground: np.ndarray, min_foreground: float, count: int, seed: Sequence[int]) -> np.ndarray:
    """Up to ``count`` distinct slices (sorted) whose head fraction is at least ``min_foreground``.

    Deterministic in ``seed``; when no slice has enough head (a tiny or unusual scan), any slice may be drawn.
    """
    candidates = np.flatnonzero(foreground >= min_foreground)
    if len(candidates) == 0:
        candidates = np.arange(len(foreground))
    rng = np.random.default_rng(list(seed))
    return np.sort(rng.choice(candidates, size=min(count, len(candidates)), replace=False))


class SyntheticVolumeDataset(Dataset):
    """Base of the datasets of slices cut from synthetic volumes: item ``i`` is volume ``i``.

    Volume ``i`` is anatomy ``anatomy_seeds[i // styles_per_anatomy]`` in style seed ``i``. The generator is
    built on first use, so that DataLoader workers do not pickle the template; the MNI maps are looked for at
    once, so a missing template fails with its fix before a training run starts, not in its middle.

    Args:
        anatomy_seeds: anatomies to use.
        styles_per_anatomy: volumes per anatomy, each in its own style.
        spacing: voxel size of the synthetic volumes, mm.
        seed: generator seed.
        mni_dir: where the MNI maps are (``None``: searched).
        normalizer: the scan normalization of inference (bundles: ``transforms/scan_normalization.json``);
            default :class:`~sgad_med.transforms.ScanNormalize` with its defaults.
    """

    def __init__(self, anatomy_seeds: Sequence[int], styles_per_anatomy: int, spacing: float, seed: int,
                 mni_dir: str | os.PathLike | None, normalizer: ScanNormalize | None = None) -> None:
        from sgad_med.data.mni import find_mni_dir

        self.anatomy_seeds = list(anatomy_seeds)
        self.styles_per_anatomy = int(styles_per_anatomy)
        self.spacing = float(spacing)
        self.seed = int(seed)
        self.mni_dir = mni_dir
        self.normalizer = normalizer if normalizer is not None else ScanNormalize()
        self._generator: SyntheticStyleGenerator | None = None
        find_mni_dir(mni_dir)

    def normalized(self, volume: np.ndarray) -> torch.Tensor:
        """A synthetic volume ``[H, W, D]`` normalized as a real MR scan is at inference, in [0, 1]."""
        return torch.as_tensor(self.normalizer.normalize_with_params(volume[None], "MR")[0])[0]

    def __len__(self) -> int:
        return len(self.anatomy_seeds) * self.styles_per_anatomy

    def anatomy_seed(self, index: int) -> int:
        """The anatomy of volume ``index``."""
        return self.anatomy_seeds[index // self.styles_per_anatomy]

    @property
    def generator(self) -> SyntheticStyleGenerator:
        """The synthetic generator (built on first use)."""
        if self._generator is None:
            from sgad_med.data.mni import load_mni_template

            template = load_mni_template(self.mni_dir, spacing=self.spacing)
            self._generator = SyntheticStyleGenerator(template=template, seed=self.seed, anatomy_cache=2)
        return self._generator


class HarmonizationSlices(SyntheticVolumeDataset):
    """Paired 2.5D slices: a random style in, the reference style out, from synthetic volume pairs.

    Item ``i`` is volume pair ``i``: anatomy ``anatomy_seeds[i // styles_per_anatomy]`` in style seed ``i``
    (domain randomisation: every pair has its own style). From it ``slices_per_volume`` axial slices with
    head in them are drawn (deterministically from ``seed`` and ``i``). The source volume is normalized
    exactly as a real MR scan is at inference (robust percentiles, ``normalizer``),
    and so is the target, so that the generator maps normalized scans of any style to normalized scans of the
    reference style (and one already in the reference style to itself). Items can be cached (``cache=True``),
    so that epochs after the first cost no rendering.

    Each item is a dict of float32 tensors with a leading slice axis (use :func:`collate_slices`):
    ``image`` ``[N, 2c+1, H, W]`` (source stacks), ``label`` ``[N, 1, H, W]`` (target centre slices) and
    ``reference`` ``[N, 2c+1, H, W]`` (target stacks, for the identity term), H and W padded to ``multiple``.

    Args:
        anatomy_seeds: anatomies to use (training: a subset of ``TRAIN_ANATOMY_SEEDS``).
        styles_per_anatomy: pairs per anatomy.
        slices_per_volume: slices drawn from each pair.
        split: ``"train"`` or ``"heldout"`` styles.
        context: neighbours on each side of a slice.
        spacing: voxel size of the synthetic volumes, mm.
        seed: generator seed.
        mni_dir: where the MNI maps are (``None``: searched).
        min_foreground: a slice is drawn only if at least this fraction of it is head.
        multiple: pad H and W to a multiple of this (the U-Net's total downsampling).
        cache: keep items in memory after their first use.
        normalizer: the scan normalization of inference (see :class:`SyntheticVolumeDataset`).
    """

    def __init__(
        self,
        anatomy_seeds: Sequence[int],
        styles_per_anatomy: int = 2,
        slices_per_volume: int = 8,
        split: str = "train",
        context: int = 1,
        spacing: float = 2.0,
        seed: int = 0,
        mni_dir: str | os.PathLike | None = None,
        min_foreground: float = 0.1,
        multiple: int = 16,
        cache: bool = True,
        normalizer: ScanNormalize | None = None,
    ) -> None:
        super().__init__(anatomy_seeds, styles_per_anatomy, spacing, seed, mni_dir, normalizer)
        self.slices_per_volume = int(slices_per_volume)
        self.split = split
        self.context = int(context)
        self.min_foreground = float(min_foreground)
        self.multiple = int(multiple)
        self.cache = cache
        self._items: dict[int, dict[str, torch.Tensor]] = {}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if index in self._items:
            return self._items[index]
        pair = self.generator.pair(self.anatomy_seed(index), style_seed=index, split=self.split)
        # Both sides are normalized as a real MR scan is at inference, so a scan already in the reference style
        # maps to itself (the identity term and the evaluation's preservation check rely on this).
        source, target = self.normalized(pair["source"]), self.normalized(pair["target"])
        foreground = torch.from_numpy(pair["target"] > 0.05).float().mean(dim=(0, 1)).numpy()
        chosen = choose_slices(foreground, self.min_foreground, self.slices_per_volume, [self.seed, index])
        image, _ = pad_to_multiple(slice_stacks(source, self.context, chosen), self.multiple)
        reference, _ = pad_to_multiple(slice_stacks(target, self.context, chosen), self.multiple)
        item = {
            "image": image,
            "label": reference[:, self.context : self.context + 1].clone(),
            "reference": reference,
        }
        if self.cache:
            self._items[index] = item
        return item


def collate_slices(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate items of slices along the slice axis: a batch of ``sum(N_i)`` slices."""
    return {key: torch.cat([item[key] for item in items], dim=0) for key in items[0]}


class ScanSlices(Dataset):
    """2.5D stacks from real scans: every NIfTI file and DICOM series found under a folder.

    Item ``i`` is scan ``i``, normalized as at inference, with ``slices_per_volume`` head-containing slices
    drawn deterministically. Scans that cannot be read are dropped when the dataset is built, with their
    errors kept in :attr:`failed`, so one bad file never stops training.

    Args:
        folder: where the scans are (searched recursively).
        slices_per_volume: slices drawn from each scan.
        context: neighbours on each side of a slice.
        seed: for the choice of slices.
        min_foreground: a slice is drawn only if at least this fraction of it is above 5 % of the range.
        multiple: pad H and W to a multiple of this.
        cache: keep items in memory after their first use.
        normalizer: the scan normalization of inference (default :class:`~sgad_med.transforms.ScanNormalize`).
    """

    def __init__(self, folder: str | os.PathLike, slices_per_volume: int = 8, context: int = 1, seed: int = 0,
                 min_foreground: float = 0.1, multiple: int = 16, cache: bool = True,
                 normalizer: ScanNormalize | None = None) -> None:
        from sgad_med.io import discover_scans

        found = discover_scans(folder)
        self.sources = [s for s in found if s.skip_reason is None and s.problem is None]
        self.failed = {str(s.path): str(s.problem) for s in found if s.problem is not None}
        self.slices_per_volume, self.context, self.seed = int(slices_per_volume), int(context), int(seed)
        self.min_foreground, self.multiple, self.cache = float(min_foreground), int(multiple), cache
        self.normalizer = normalizer if normalizer is not None else ScanNormalize()
        self._items: dict[int, dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from sgad_med.io import load_scan

        if index in self._items:
            return self._items[index]
        scan = load_scan(self.sources[index])
        volume01, _ = self.normalizer.normalize_with_params(scan.image.as_tensor()[0:1], scan.modality)
        volume = torch.as_tensor(volume01)[0]
        foreground = (volume > 0.05).float().mean(dim=(0, 1)).numpy()
        chosen = choose_slices(foreground, self.min_foreground, self.slices_per_volume, [self.seed, index])
        stacks, _ = pad_to_multiple(slice_stacks(volume, self.context, chosen), self.multiple)
        item = {"image": stacks}
        if self.cache:
            self._items[index] = item
        return item


class UnpairedSlices(Dataset):
    """Unpaired batches for CycleGAN training: source-site slices with reference-site slices of other scans.

    Item ``i`` holds the slices of source item ``i`` as ``image`` and those of reference item
    ``perm[i] % len(reference)`` as ``reference``, where ``perm`` is a fixed permutation (so there is no pairing
    to learn from). The two sides are cropped to the same number of slices and padded to the same size.

    Args:
        source: a dataset of source-site items (e.g. :class:`ScanSlices`).
        reference: a dataset of reference-site items.
        seed: for the permutation.
    """

    def __init__(self, source: Dataset, reference: Dataset, seed: int = 0) -> None:
        self.source, self.reference = source, reference
        self.permutation = np.random.default_rng(seed).permutation(max(len(source), len(reference)))

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        source = self.source[index]["image"]
        reference = self.reference[int(self.permutation[index]) % len(self.reference)]["image"]
        n = min(len(source), len(reference))
        height = max(source.shape[-2], reference.shape[-2])
        width = max(source.shape[-1], reference.shape[-1])
        return {"image": _pad_to(source[:n], height, width), "reference": _pad_to(reference[:n], height, width)}


def _pad_to(batch: torch.Tensor, height: int, width: int) -> torch.Tensor:
    extra_h, extra_w = height - batch.shape[-2], width - batch.shape[-1]
    pads = (extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2)
    return torch.nn.functional.pad(batch, pads)
