"""Style harmonization of whole scans with a trained generator, slice by slice in batches."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sgad_med.errors import SGADError
from sgad_med.io import Scan, ScanSource, load_scan, save_scan
from sgad_med.slice_runner import SliceNetworkRunner
from sgad_med.transforms.intensity import denormalize
from sgad_med.transforms.slices import unpad


class Harmonizer(SliceNetworkRunner):
    """Maps a scan to the reference style with a trained :class:`~sgad_med.networks.HarmonizationGenerator`.

    The scan is normalized as in training (CT window / MR robust percentiles), cut into 2.5D stacks
    ``batch_size`` slices at a time (so memory grows with the batch, not the volume), passed through the
    generator, clamped to [0, 1], and mapped back to the input's units with the input's normalization.
    Voxels the normalization clipped are not put back: they belong to the input's style, not the reference's.

    Args:
        network: the generator; its ``context`` attribute gives the stack size.
        device: where to run it (``"auto"``: CUDA when present).
        batch_size: slices per forward pass.
        multiple: pad slices to a multiple of this (the U-Net's downsampling).
        progress: show a progress bar over slices.
        inferer: how the network is called on a batch (MONAI inferer; plain forward by default).
        normalizer: how a scan is mapped to [0, 1] and back (see :class:`~sgad_med.slice_runner.SliceNetworkRunner`).

    Example::

        harmonizer = Harmonizer.from_bundle("bundles/style_harmonization")
        harmonized = harmonizer(sgad_med.load_scan("sample_data/synthetic_mr.nii.gz"))
    """

    default_bundle = "bundles/style_harmonization"

    @torch.no_grad()
    def harmonize01(self, volume01: torch.Tensor) -> torch.Tensor:
        """Harmonize a normalized volume ``[H, W, D]`` in [0, 1]; returns the same shape, in [0, 1]."""
        depth = volume01.shape[-1]
        out = torch.empty(volume01.shape, dtype=torch.float32)
        starts = range(0, depth, self.batch_size)
        for start in tqdm(starts, desc="harmonizing", unit="batch", disable=not self.progress):
            chosen = np.arange(start, min(start + self.batch_size, depth))
            stacks, pads = self.padded_stacks(volume01, chosen)
            with torch.autocast("cuda", enabled=self.device.type == "cuda"):
                pred = self.inferer(stacks, self.network)
            out[..., chosen] = unpad(pred.float(), pads)[:, 0].clamp(0.0, 1.0).permute(1, 2, 0).cpu()
        return out

    def __call__(self, scan: Scan) -> Scan:
        """The scan in the reference style: same geometry, same units and value range kind as the input."""
        volume01, params = self.normalize_scan(scan)
        harmonized01 = self.harmonize01(volume01)
        back = denormalize(harmonized01[None], params, restore_clipped=False)
        return scan.with_image(torch.as_tensor(back))


class HarmonizeFolder:
    """The bundle's inference "evaluator": harmonize every scan found in a folder and write NIfTI outputs.

    One bad scan never stops the others: its error is logged and counted, and the rest are written.

    Args:
        sources: scans to harmonize (e.g. ``sgad_med.discover_scans(dataset_dir)``).
        harmonizer: the :class:`Harmonizer`.
        output_dir: where ``<scan_id>_harmonized.nii.gz`` files go.
        overwrite: replace existing outputs.
    """

    def __init__(self, sources: Sequence[ScanSource], harmonizer: Harmonizer, output_dir: str | os.PathLike,
                 overwrite: bool = False) -> None:
        self.sources, self.harmonizer = list(sources), harmonizer
        self.output_dir, self.overwrite = Path(output_dir), overwrite
        self.written: list[Path] = []
        self.failed: dict[str, str] = {}

    def run(self) -> dict[str, str]:
        """Harmonize every source; returns ``{scan_id: error}`` for the ones that failed."""
        for source in tqdm(self.sources, desc="scans", unit="scan"):
            if source.skip_reason is not None:
                continue
            try:
                scan = load_scan(source)
                target = self.output_dir / f"{scan.scan_id}_harmonized.nii.gz"
                if target.exists() and not self.overwrite:
                    continue
                self.written += save_scan(self.harmonizer(scan), target, overwrite=self.overwrite)
            except SGADError as err:
                self.failed[source.scan_id] = str(err)
        return self.failed
