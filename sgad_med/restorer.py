"""Restoration of chosen slices of a scan with a trained :class:`~sgad_med.networks.SliceRestorationNet`."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from sgad_med.errors import SGADError
from sgad_med.io import Scan, load_scan, save_scan
from sgad_med.slice_runner import SliceNetworkRunner
from sgad_med.transforms.intensity import denormalize
from sgad_med.transforms.slices import unpad

logger = logging.getLogger(__name__)


class SliceRestorer(SliceNetworkRunner):
    """Repairs given axial slices of a scan from their neighbours; every other slice is left bit for bit.

    Each requested slice is predicted from the stack k-c … k+c of the *input* (neighbours that are themselves
    damaged are taken as they are: the network was trained with damaged neighbours now and then), clamped to
    [0, 1] and mapped back to the scan's units; only the requested slices of the returned scan differ from the
    input.

    Args:
        network: the trained restoration network; its ``context`` attribute gives the stack size.
        device: where to run it (``"auto"``: CUDA when present).
        batch_size: slices per forward pass.
        multiple: pad slices to a multiple of this (the U-Net's downsampling).
        progress: show a progress bar over slices.
        inferer: how the network is called on a batch (MONAI inferer; plain forward by default).
        normalizer: how a scan is mapped to [0, 1] and back (see :class:`~sgad_med.slice_runner.SliceNetworkRunner`).

    Example::

        restorer = SliceRestorer.from_bundle("bundles/slice_restoration")
        repaired = restorer(scan, slices=[12, 40])
    """

    default_bundle = "bundles/slice_restoration"

    def __init__(self, network: nn.Module, **kwargs: Any) -> None:
        super().__init__(network, **kwargs)
        self.context = int(getattr(network, "context", 2))

    @staticmethod
    def _checked_slices(slices: Sequence[int] | np.ndarray, depth: int) -> np.ndarray:
        chosen = np.asarray(slices, dtype=np.int64).reshape(-1)
        if chosen.dtype == bool or np.asarray(slices).dtype == bool:
            chosen = np.flatnonzero(np.asarray(slices, dtype=bool))
        if chosen.size and (chosen.min() < -depth or chosen.max() >= depth):
            raise ValueError(f"slice indices must lie in [0, {depth}), got {chosen.tolist()}")
        return np.unique(chosen % depth) if chosen.size else chosen

    @torch.no_grad()
    def restore01(self, volume01: torch.Tensor | np.ndarray, slices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """A copy of a normalized volume ``[H, W, D]`` with ``slices`` restored (indices or a boolean mask)."""
        volume01 = torch.as_tensor(volume01, dtype=torch.float32)
        out = volume01.clone()
        chosen = self._checked_slices(slices, volume01.shape[-1])
        starts = range(0, len(chosen), self.batch_size)
        for start in tqdm(starts, desc="restoring", unit="batch", disable=not self.progress):
            batch = chosen[start : start + self.batch_size]
            stacks, pads = self.padded_stacks(volume01, batch)
            with torch.autocast("cuda", enabled=self.device.type == "cuda"):
                pred = self.inferer(stacks, self.network)
            out[..., batch] = unpad(pred.float(), pads)[:, 0].clamp(0.0, 1.0).permute(1, 2, 0).cpu()
        return out

    def __call__(self, scan: Scan, slices: Sequence[int] | np.ndarray) -> Scan:
        """The scan with ``slices`` (indices along the last axis, or a boolean mask) restored, in its own units."""
        image = scan.image.as_tensor()
        chosen = self._checked_slices(slices, image.shape[-1])
        if chosen.size == 0:
            return scan.with_image(image.clone())
        volume01, params = self.normalize_scan(scan)
        restored01 = self.restore01(volume01, chosen)
        back = torch.as_tensor(denormalize(restored01[None], params, restore_clipped=False))
        out = image.clone()
        out[0, ..., chosen] = back[0, ..., chosen].to(out.dtype)
        return scan.with_image(out)


def flagged_slices(csv_path: str | os.PathLike) -> list[int]:
    """Slices with ``flagged == 1`` in a ``slices.csv`` as ``sgad-med run`` writes it (columns ``slice,flagged``).

    Args:
        csv_path: the CSV file.

    Returns:
        The flagged slice indices, sorted.

    Raises:
        SGADError: the file lacks the ``slice`` or ``flagged`` column, or holds a value that is not a number.
    """
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"slice", "flagged"} <= set(reader.fieldnames):
            raise SGADError(csv_path, "has no 'slice' and 'flagged' columns", fix="use the slices.csv of sgad-med run")
        try:
            return sorted(int(row["slice"]) for row in reader if int(float(row["flagged"])) == 1)
        except ValueError as err:
            raise SGADError(csv_path, f"holds a value that is not a number ({err})") from err


class RestoreFolder:
    """The bundle's inference "evaluator": restore chosen slices of every scan found in a folder.

    Per scan, the slices restored are those of ``<slices_dir>/<scan_id>/slices.csv`` flagged 1 (the output of
    ``sgad-med run``) when ``slices_dir`` is given and that file exists, otherwise ``slices`` (indices along
    the last, axial, axis; negative ones count from the end). Indices outside a scan (a one-slice DICOM file,
    say) are left out for that scan, with a log message. Every other slice is written bit for bit as read.
    One bad scan never stops the others: its error is kept in :attr:`failed`.

    Args:
        sources: scans to restore (e.g. ``sgad_med.discover_scans(dataset_dir)``).
        restorer: a :class:`~sgad_med.restorer.SliceRestorer`.
        output_dir: where ``<scan_id>_restored.nii.gz`` files go.
        slices: the slices to restore in every scan (when no per-scan CSV applies).
        slices_dir: folder of ``<scan_id>/slices.csv`` files, or ``None``.
        overwrite: replace existing outputs.
    """

    def __init__(self, sources: Sequence[Any], restorer: Any, output_dir: str | os.PathLike,
                 slices: Sequence[int] = (), slices_dir: str | os.PathLike | None = None,
                 overwrite: bool = False) -> None:
        self.sources, self.restorer = list(sources), restorer
        self.output_dir, self.overwrite = Path(output_dir), overwrite
        self.slices = [int(s) for s in slices]
        self.slices_dir = None if slices_dir is None else Path(slices_dir)
        self.written: list[Path] = []
        self.restored: dict[str, list[int]] = {}
        self.failed: dict[str, str] = {}

    def slices_for(self, scan_id: str, depth: int) -> list[int]:
        """The slices of scan ``scan_id`` (``depth`` slices) to restore."""
        if self.slices_dir is not None and (self.slices_dir / scan_id / "slices.csv").is_file():
            wanted = flagged_slices(self.slices_dir / scan_id / "slices.csv")
        else:
            wanted = self.slices
        inside = sorted({s % depth for s in wanted if -depth <= s < depth})
        if len(inside) < len(set(wanted)):
            logger.info("%s: slices %s lie outside its %d slices and are left out", scan_id,
                        sorted(set(wanted) - {s for s in wanted if -depth <= s < depth}), depth)
        return inside

    def run(self) -> dict[str, str]:
        """Restore every source; returns ``{scan_id: error}`` for the ones that failed."""
        for source in self.sources:
            if getattr(source, "skip_reason", None) is not None:
                continue
            try:
                scan = load_scan(source)
                target = self.output_dir / f"{scan.scan_id}_restored.nii.gz"
                if target.exists() and not self.overwrite:
                    continue
                chosen = self.slices_for(scan.scan_id, int(scan.image.shape[-1]))
                self.written += save_scan(self.restorer(scan, slices=np.asarray(chosen, dtype=np.int64)), target,
                                          overwrite=self.overwrite)
                self.restored[scan.scan_id] = chosen
            except SGADError as err:
                self.failed[str(getattr(source, "scan_id", source))] = str(err)
        return self.failed
