"""The slice-restoration network: a damaged slice with its neighbours in, the clean slice out."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sgad_med.networks.residual_unet import slice_stack_unet
from sgad_med.networks.slice_alignment import align_to_reference
from sgad_med.networks.slice_repair import desaturate, despike


class SliceRestorationNet(nn.Module):
    """Predicts a clean slice k from a stack k-c … k+c in which slice k (and now and then a neighbour) is damaged.

    A MONAI :class:`~monai.networks.nets.BasicUNet` (resize-convolution upsampling, instance norm) with two output
    maps, a gate ``g`` and a residual ``r``, combined as

        ``out = g * slice_k + (1 - g) * (slice_{k-1} + slice_{k+1}) / 2 + r``,   ``g = sigmoid(gate logits)``.

    The gate lets the network choose, pixel by pixel, between the slice as it is (an undamaged slice passes
    through: no harm when the detector is wrong) and its two nearest neighbours, which usually hold the same
    anatomy undamaged; the residual corrects what neither gives. Without the gate (``gated=False``) the output is
    the damaged slice plus a residual, which has to learn to undo the damage alone.

    With ``gate_residual=True`` the residual corrects the neighbours' estimate only where the gate leaves the slice:

        ``out = g * slice_k + (1 - g) * ((slice_{k-1} + slice_{k+1}) / 2 + r)``,

    so ``g = 1`` returns the slice exactly. With the residual outside the gate, the first weights learnt to
    rebuild even clean slices from their neighbours (mean ``1 - g`` of 0.96 on clean validation slices), which
    changes a slice the detector flagged by mistake.

    With ``align=True`` slice k is first re-registered in-plane to the mean of its two nearest neighbours
    (:func:`~sgad_med.networks.slice_alignment.align_to_reference`: integer phase correlation, a shift taken only
    when its peak is clear), the re-registered slice is an extra input channel, and the gate keeps it in place of
    slice k. A slice displaced between acquisitions then keeps its own anatomy instead of being rebuilt from the
    neighbours; an undisplaced slice gets no shift, so the re-registered slice is slice k bit for bit.

    With ``repair=True`` slice k is first repaired against the mean of its two nearest neighbours: a k-space spike
    removed (:func:`~sgad_med.networks.slice_repair.despike`), a saturation divided out
    (:func:`~sgad_med.networks.slice_repair.desaturate`); the repaired (and, with ``align``, re-registered) slice
    is the extra input channel and the slice the gate keeps. A slice in which neither repair finds its damage is
    passed on bit for bit.

    Args:
        context: neighbours on each side; ``in_channels = 2 * context + 1`` (at least 1).
        features: BasicUNet's six feature sizes.
        dropout: dropout probability inside the U-Net.
        gated: combine slice and neighbours through a learned gate (default) or only add a residual.
        gate_residual: apply the residual only where the gate takes the neighbours (see above).
        align: re-register slice k to its neighbours first (see above; gated networks only).
        max_shift: with ``align``, the largest displacement searched along each axis, in pixels.
        repair: undo k-space spikes and saturation in slice k first (see above; gated networks only).

    Example::

        net = SliceRestorationNet(context=2)
        clean = net(torch.rand(4, 5, 112, 128))   # -> (4, 1, 112, 128)
    """

    # training-time bookkeeping, left out of TorchScript exports (see forward)
    __jit_ignored_attributes__ = ["last_gate_logits", "last_kept", "last_alternative"]
    __jit_unused_properties__ = ["last_gate"]

    def __init__(
        self,
        context: int = 2,
        features: Sequence[int] = (16, 16, 32, 64, 128, 16),
        dropout: float = 0.0,
        gated: bool = True,
        gate_residual: bool = False,
        align: bool = False,
        max_shift: int = 8,
        repair: bool = False,
    ) -> None:
        super().__init__()
        if int(context) < 1:
            raise ValueError(f"restoration needs at least one neighbour on each side, got context={context}")
        if align and not gated:
            raise ValueError("align=True needs the gated output: the gate is what keeps the re-registered slice")
        if repair and not gated:
            raise ValueError("repair=True needs the gated output: the gate is what keeps the repaired slice")
        self.context = int(context)
        self.gated = gated
        self.gate_residual = gate_residual
        self.align = align
        self.max_shift = int(max_shift)
        self.repair = repair
        self.last_gate_logits: torch.Tensor | None = None
        self.last_kept: torch.Tensor | None = None  # the slice the gate keeps (slice k, or it repaired/re-registered)
        self.last_alternative: torch.Tensor | None = None  # with gate_residual: what the gate takes instead
        extra_channels = int(align or repair)  # the kept slice, when it can differ from slice k
        self.unet = slice_stack_unet(self.context, 2 if gated else 1, features, dropout, extra_channels=extra_channels)

    @property
    def last_gate(self) -> torch.Tensor | None:
        """The gate of the last training forward (``None`` after an inference forward)."""
        return None if self.last_gate_logits is None else torch.sigmoid(self.last_gate_logits)

    @property
    def in_channels(self) -> int:
        """Slices in the input stack."""
        return 2 * self.context + 1

    def _kept_neighbours_and_maps(self, stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The slice the gate keeps (slice k, repaired with ``repair``, re-registered with ``align``), the mean of
        the nearest neighbours, and the U-Net's output maps."""
        c = self.context
        centre = stack[:, c : c + 1]
        neighbours = 0.5 * (stack[:, c - 1 : c] + stack[:, c + 1 : c + 2])
        if not (self.align or self.repair):
            return centre, neighbours, self.unet(stack)
        kept = self._repaired(centre[:, 0], neighbours[:, 0])[:, None]
        return kept, neighbours, self.unet(torch.cat([stack, kept], dim=1))

    def _repaired(self, kept: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        """Slices k ``[N, H, W]`` repaired (``repair``) and re-registered (``align``) against the mean of their
        nearest neighbours ``[N, H, W]``, without gradients. (A method of its own: TorchScript cannot compile the
        ``no_grad`` block after the early return above.)"""
        with torch.no_grad():
            if self.repair:
                kept = desaturate(despike(kept, neighbours), neighbours)
            if self.align:
                kept = align_to_reference(kept, neighbours, self.max_shift)
        return kept

    def gate_map(self, stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The gate ``g`` ``[N, 1, H, W]`` for a stack (the share of each pixel kept, 1: kept) and the slice it keeps
        (slice k, re-registered with ``align``), for inspection."""
        if not self.gated:
            raise ValueError("an ungated network has no gate")
        kept, _, maps = self._kept_neighbours_and_maps(stack)
        return torch.sigmoid(maps[:, :1]), kept

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        centre, neighbours, out = self._kept_neighbours_and_maps(stack)
        if not self.gated:
            return centre + out
        gate = torch.sigmoid(out[:, :1])
        # kept for RestorationLoss's keep and gate terms during training only (not held on to at inference);
        # not in TorchScript (inference only), which cannot type these Optional attributes
        if not torch.jit.is_scripting():
            self.last_gate_logits = out[:, :1] if self.training else None
            self.last_kept = centre if self.training else None
        if self.gate_residual:
            alternative = neighbours + out[:, 1:]
            if not torch.jit.is_scripting():
                self.last_alternative = alternative if self.training else None
            return gate * centre + (1.0 - gate) * alternative
        return gate * centre + (1.0 - gate) * neighbours + out[:, 1:]
