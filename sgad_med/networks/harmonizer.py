"""The style-harmonization networks: a 2.5D generator and a conditional PatchGAN discriminator."""

from __future__ import annotations

import torch
from monai.networks.nets import PatchDiscriminator
from torch import nn

from sgad_med.networks.residual_unet import ResidualSliceUNet


class HarmonizationGenerator(ResidualSliceUNet):
    """Maps a 2.5D stack of normalized slices (k-c … k+c) to slice k in the reference style.

    A :class:`~sgad_med.networks.residual_unet.ResidualSliceUNet` (resize-convolution upsampling, instance norm,
    residual output without a squashing activation): see there for the arguments.

    Example::

        net = HarmonizationGenerator(context=1, features=(16, 16, 32, 64, 128, 16))
        y = net(torch.rand(2, 3, 112, 128))   # -> (2, 1, 112, 128)
    """


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
