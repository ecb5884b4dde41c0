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

The bundle's inference "evaluator" is :class:`sgad_med.restorer.RestoreFolder`, beside the restorer it runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.losses import SSIMLoss
from monai.utils import CommonKeys
from torch import nn

__all__ = ["RestorationLoss", "prepare_restoration_batch"]


class RestorationLoss(nn.Module):
    """L_rec of the restorer: weighted L1 plus an SSIM term, between the restored and the clean slice.

    The SSIM term is computed on the prediction clamped to [0, 1] (the range every caller clamps to), with
    MONAI's :class:`~monai.losses.SSIMLoss` (data range 1, 7 x 7 window); L1 on the raw prediction keeps a
    gradient where the clamp is flat.

    The optional keep term, ``keep_weight`` · mean(1 − g), charges the gated network
    (:class:`~sgad_med.networks.SliceRestorationNet`) for every pixel it takes from the neighbours instead of the
    slice: replacing a damaged pixel still pays (its L1 error is far larger), but where the slice was already right
    the cheapest answer becomes to keep it, bit for bit. Without it the network learnt to rebuild even clean
    slices from their neighbours.

    The optional gate term, ``gate_weight`` · BCE(g, t), tells the gate directly where to keep: the target ``t``
    is 1 where the slice the gate keeps (slice k, or slice k re-registered with ``align``) is within
    ``gate_tolerance`` of the clean slice, its absolute error averaged over ``gate_window`` × ``gate_window``
    pixels, else 0, known exactly in synthetic training. The L1 loss alone reaches the gate only through
    ``g (1 - g)``, which vanishes once the gate has shut: trained that way, the gate stayed shut (mean 0.05-0.08 in
    the head) even on slices the re-registration had made exact. The error is averaged because, pixel by pixel,
    noise leaves a random share of pixels within the tolerance, a target no network can predict: the gate then
    learnt to keep about that share of every noisy slice, mixing the noise back in.

    With ``gate_keep_better`` the target is also 1 where the kept slice's averaged error is no larger than that of
    what the gate would take instead (the neighbours' mean plus the residual, of a ``gate_residual`` network): a
    slice damaged mildly everywhere (Gibbs ringing) is often off by more than the tolerance and still closer to the
    truth than anything rebuilt from the neighbours, and the tolerance alone taught the gate to leave it.

    Args:
        l1_weight: weight of the mean absolute error.
        ssim_weight: weight of ``1 - SSIM``.
        win_size: SSIM window size (must not exceed the slice's sides).
        keep_weight: weight of the keep term (0: off).
        gate_weight: weight of the gate term (0: off).
        gate_tolerance: largest absolute error (on the [0, 1] scale, averaged over ``gate_window``) of a pixel the
            gate term asks to keep.
        gate_window: side of the square over which the gate term averages the error (1: pixel by pixel).
        gate_keep_better: also ask the gate to keep where the kept slice is no worse than the alternative (see
            above; needs a ``gate_residual`` network).
        network: the gated network whose last training forward's gate the keep and gate terms read (its
            ``last_gate``, ``last_gate_logits``, ``last_kept``, ``last_alternative``); needed when either weight is
            above 0.

    Example::

        loss = RestorationLoss(l1_weight=1.0, ssim_weight=0.2)
        value = loss(net(batch["image"]), batch["clean"])
    """

    def __init__(self, l1_weight: float = 1.0, ssim_weight: float = 0.2, win_size: int = 7,
                 keep_weight: float = 0.0, network: nn.Module | None = None, gate_weight: float = 0.0,
                 gate_tolerance: float = 0.02, gate_window: int = 1, gate_keep_better: bool = False) -> None:
        super().__init__()
        if l1_weight < 0 or ssim_weight < 0 or l1_weight + ssim_weight == 0:
            raise ValueError(f"weights must be >= 0 and not both 0, got l1={l1_weight}, ssim={ssim_weight}")
        if int(gate_window) < 1 or int(gate_window) % 2 == 0:
            raise ValueError(f"gate_window must be a positive odd number, got {gate_window}")
        if keep_weight < 0 or gate_weight < 0 or gate_tolerance <= 0:
            raise ValueError(f"keep_weight and gate_weight must be >= 0 and gate_tolerance > 0, got "
                             f"{keep_weight}, {gate_weight}, {gate_tolerance}")
        if (keep_weight > 0 or gate_weight > 0) and not getattr(network, "gated", False):
            raise ValueError("keep_weight or gate_weight > 0 needs the gated restoration network whose gate it reads")
        if gate_keep_better and not (gate_weight > 0 and getattr(network, "gate_residual", False)):
            raise ValueError("gate_keep_better needs gate_weight > 0 and a gate_residual network (its alternative)")
        self.l1_weight, self.ssim_weight, self.keep_weight = float(l1_weight), float(ssim_weight), float(keep_weight)
        self.gate_weight, self.gate_tolerance = float(gate_weight), float(gate_tolerance)
        self.gate_window = int(gate_window)
        self.gate_keep_better = bool(gate_keep_better)
        self.ssim = SSIMLoss(spatial_dims=2, data_range=1.0, win_size=win_size)
        # a plain attribute, not a submodule: the loss must not own (or save) the network's weights
        self.__dict__["network"] = network

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of predictions ``[N, 1, H, W]`` against clean slices of the same shape."""
        loss = self.l1_weight * torch.mean(torch.abs(pred - target))
        if self.ssim_weight:
            loss = loss + self.ssim_weight * self.ssim(pred.float().clamp(0.0, 1.0), target.float())
        if self.keep_weight:
            loss = loss + self.keep_weight * torch.mean(1.0 - self._from_network("last_gate", pred))
        if self.gate_weight:
            error = self._local_error(self._from_network("last_kept", pred), target)
            keep_target = error <= self.gate_tolerance
            if self.gate_keep_better:
                keep_target |= error <= self._local_error(self._from_network("last_alternative", pred), target)
            keep_target = keep_target.float()
            logits = self._from_network("last_gate_logits", pred).float()
            loss = loss + self.gate_weight * nn.functional.binary_cross_entropy_with_logits(logits, keep_target)
        return loss

    def _local_error(self, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``|image - target|`` (no gradient) averaged over ``gate_window`` x ``gate_window`` pixels."""
        error = (image.detach().float() - target.float()).abs()
        if self.gate_window > 1:
            error = nn.functional.avg_pool2d(error, self.gate_window, stride=1, padding=self.gate_window // 2,
                                             count_include_pad=False)
        return error

    def _from_network(self, name: str, pred: torch.Tensor) -> torch.Tensor:
        """What the network kept of this batch's training forward (``last_gate`` ...)."""
        value = getattr(self.network, name, None)
        if value is None or value.shape[0] != pred.shape[0]:
            raise RuntimeError(f"the keep and gate terms need the network's {name} from this batch's training forward")
        return value


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
