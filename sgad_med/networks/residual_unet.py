"""A residual 2.5D U-Net: a stack of slices (k-c … k+c) in, slice k out, as the centre slice plus a learned change.

The harmonization generator and the slice restorer are both this network; they differ in what they are trained
to change.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import BasicUNet
from torch import nn


def slice_stack_unet(
    context: int, out_channels: int, features: Sequence[int], dropout: float = 0.0, extra_channels: int = 0
) -> BasicUNet:
    """The MONAI :class:`~monai.networks.nets.BasicUNet` our slice networks share: ``2 * context + 1`` slices
    (plus ``extra_channels`` maps derived from them) in as channels, resize-then-convolve upsampling (no
    transposed-convolution checkerboard), instance norm."""
    return BasicUNet(
        spatial_dims=2,
        in_channels=2 * int(context) + 1 + int(extra_channels),
        out_channels=out_channels,
        features=tuple(features),
        dropout=dropout,
        upsample="nontrainable",
    )


class ResidualSliceUNet(nn.Module):
    """Maps a 2.5D stack of normalized slices (k-c … k+c) to a new slice k: the centre slice plus a residual.

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

        net = ResidualSliceUNet(context=1, features=(16, 16, 32, 64, 128, 16))
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
        self.unet = slice_stack_unet(self.context, 1, features, dropout)

    @property
    def in_channels(self) -> int:
        """Slices in the input stack."""
        return 2 * self.context + 1

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        out = self.unet(stack)
        if self.residual:
            out = out + stack[:, self.context : self.context + 1]
        return out
