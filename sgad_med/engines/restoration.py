"""Training pieces of the slice restorer for MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator``.

The restorer is trained by MONAI's own :class:`~monai.engines.SupervisedTrainer` (wired in the
``slice_restoration`` bundle's ``train.json``); this module gives it what is specific to restoration:

- :class:`RestorationLoss`, our L_rec: ``l1_weight`` · L1(R(x), y) + ``ssim_weight`` · (1 − SSIM(R(x), y)), with
  ``y`` the clean centre slice. The adversarial (PatchGAN) term the issue allows as an option is **not**
  implemented: it is off by default there, a supervised trainer has no discriminator step, and a GAN term
  invents texture, which a restorer that must not invent anatomy does not want. Train with
  :class:`~sgad_med.engines.PairedHarmonizationTrainer`-style code if sharpness ever needs it.
- :func:`prepare_restoration_batch`: feeds ``batch["image"]`` (damaged stacks) as the input and
  ``batch["clean"]`` (the truth centre slice) as the target, instead of MONAI's default ``label`` (which in
  :class:`~sgad_med.data.corrupted.CorruptedSlices` is the detector's 0/1 target).
- :class:`RestoreFolder`: the bundle's ``inference.json`` "evaluator": restore chosen slices of every scan in
  a folder and write NIfTI files.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import SSIMLoss
from monai.utils import CommonKeys
from torch import nn

from sgad_med.errors import SGADError

__all__ = ["RestorationLoss", "prepare_restoration_batch", "RestoreFolder", "flagged_slices"]

logger = logging.getLogger(__name__)


class RestorationLoss(nn.Module):
    """L_rec of the restorer: weighted L1 plus an SSIM term, between the restored and the clean slice.

    The SSIM term is computed on the prediction clamped to [0, 1] (the range every caller clamps to), with
    MONAI's :class:`~monai.losses.SSIMLoss` (data range 1, 7 x 7 window); L1 on the raw prediction keeps a
    gradient where the clamp is flat.

    Args:
        l1_weight: weight of the mean absolute error.
        ssim_weight: weight of ``1 - SSIM``.
        win_size: SSIM window size (must not exceed the slice's sides).

    Example::

        loss = RestorationLoss(l1_weight=1.0, ssim_weight=0.2)
        value = loss(net(batch["image"]), batch["clean"])
    """

    def __init__(self, l1_weight: float = 1.0, ssim_weight: float = 0.2, win_size: int = 7) -> None:
        super().__init__()
        if l1_weight < 0 or ssim_weight < 0 or l1_weight + ssim_weight == 0:
            raise ValueError(f"weights must be >= 0 and not both 0, got l1={l1_weight}, ssim={ssim_weight}")
        self.l1_weight, self.ssim_weight = float(l1_weight), float(ssim_weight)
        self.ssim = SSIMLoss(spatial_dims=2, data_range=1.0, win_size=win_size)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of predictions ``[N, 1, H, W]`` against clean slices of the same shape."""
        loss = self.l1_weight * torch.mean(torch.abs(pred - target))
        if self.ssim_weight:
            loss = loss + self.ssim_weight * self.ssim(pred.float().clamp(0.0, 1.0), target.float())
        return loss


def prepare_restoration_batch(
    batchdata: Mapping[str, torch.Tensor],
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(damaged stacks, clean centre slices)`` of a batch, for ``SupervisedTrainer(prepare_batch=...)``.

    Args:
        batchdata: a batch of :class:`~sgad_med.data.corrupted.CorruptedSlices` items (``image``, ``clean``).
        device: where the tensors go.
        non_blocking: asynchronous copy to the device.
        kwargs: further ``Tensor.to`` arguments (as MONAI's default ``prepare_batch`` takes).

    Returns:
        ``(image [N, 2c+1, H, W], clean [N, 1, H, W])`` on ``device``; the engines put them in their output as
        ``image`` and ``label``, so metric handlers compare ``pred`` with the clean slice.
    """
    if CommonKeys.IMAGE not in batchdata or "clean" not in batchdata:
        raise KeyError(f"a restoration batch needs 'image' and 'clean', got keys {sorted(batchdata)}")
    image = batchdata[CommonKeys.IMAGE].to(device=device, non_blocking=non_blocking, **kwargs)
    clean = batchdata["clean"].to(device=device, non_blocking=non_blocking, **kwargs)
    return image, clean


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
        from sgad_med.io import load_scan, save_scan

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
