"""The style-harmonization networks: a 2.5D generator and a conditional PatchGAN discriminator."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import BasicUNet, PatchDiscriminator
from torch import nn


class HarmonizationGenerator(nn.Module):
    """Maps a 2.5D stack of normalized slices (k-c … k+c) to slice k in the reference style.

    A MONAI :class:`~monai.networks.nets.BasicUNet` with the GAN pitfalls designed out:

    - upsampling by resize-then-convolve (``upsample="nontrainable"``), not transposed convolutions, so no
      checkerboard at the upsampling stride;
    - instance norm (BasicUNet's default), not batch norm, so small and distributed batches behave;
    - the slices are channels of one grayscale stack (never an RGB image), and the output is the centre
      slice plus a learned residual with no squashing activation: the identity is easy to learn (anatomy is
      kept by default) and the output never saturates a sigmoid/tanh range. Callers clamp to [0, 1].

    Args:
        context: slices on each side of the centre slice; ``in_channels = 2 * context + 1``.
        features: BasicUNet's six feature sizes (four levels, the bottleneck, the last decoder).
        dropout: dropout probability inside the U-Net.
        residual: add the input's centre slice to the output.

    Example::

        net = HarmonizationGenerator(context=1, features=(16, 16, 32, 64, 128, 16))
        y = net(torch.rand(2, 3, 112, 128))   # -> (2, 1, 112, 128)
    """

    def __init__(
        self,
        context: int = 1,
        features: Sequence[int] = (16, 16, 32, 64, 128, 16),
        dropout: float = 0.0,
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.context = int(context)
        self.residual = residual
        self.unet = BasicUNet(
            spatial_dims=2,
            in_channels=2 * self.context + 1,
            out_channels=1,
            features=tuple(features),
            dropout=dropout,
            upsample="nontrainable",
        )

    @property
    def in_channels(self) -> int:
        """Slices in the input stack."""
        return 2 * self.context + 1

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        out = self.unet(stack)
        if self.residual:
            out = out + stack[:, self.context : self.context + 1]
        return out


class ConditionalPatchDiscriminator(nn.Module):
    """MONAI's :class:`~monai.networks.nets.PatchDiscriminator` judging (input stack, output slice) pairs.

    pix2pix-style: the discriminator sees the condition (the source stack) concatenated with the real or
    generated slice, so it can punish outputs that do not match their input's anatomy. Instance norm replaces
    MONAI's default batch norm (unreliable with small or per-GPU batches). Returns the patch logits only.

    Args:
        condition_channels: channels of the conditioning stack (0 for an unconditional discriminator).
        channels: features of the first layer (doubled at each layer).
        num_layers_d: strided layers; 3 gives 70x70-pixel patches as in pix2pix.
    """

    def __init__(self, condition_channels: int = 3, channels: int = 32, num_layers_d: int = 3) -> None:
        super().__init__()
        self.net = PatchDiscriminator(
            spatial_dims=2,
            channels=channels,
            in_channels=condition_channels + 1,
            out_channels=1,
            num_layers_d=num_layers_d,
            norm="INSTANCE",
        )

    def forward(self, image: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        x = image if condition is None else torch.cat([condition, image], dim=1)
        return self.net(x)[-1]  # PatchDiscriminator returns every layer's features; the last is the logits
