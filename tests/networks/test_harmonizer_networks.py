from __future__ import annotations

import torch
from torch import nn

from sgad_med.networks import ConditionalPatchDiscriminator, HarmonizationGenerator


def test_generator_maps_a_stack_to_one_slice_of_the_same_size():
    net = HarmonizationGenerator(context=2, features=(4, 4, 8, 8, 16, 4))
    out = net(torch.rand(2, 5, 32, 48))
    assert out.shape == (2, 1, 32, 48)
    assert net.in_channels == 5


def test_generator_designs_out_the_known_gan_pitfalls():
    net = HarmonizationGenerator(features=(4, 4, 8, 8, 16, 4))
    modules = list(net.modules())
    assert not any(isinstance(m, (nn.ConvTranspose2d, nn.ConvTranspose3d)) for m in modules), "checkerboard risk"
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in modules), "batch norm in a GAN"
    assert any(isinstance(m, nn.InstanceNorm2d) for m in modules)
    assert not any(isinstance(m, (nn.Sigmoid, nn.Tanh)) for m in modules), "a squashing output saturates"


def test_residual_generator_with_zeroed_last_layer_is_the_identity_on_the_centre_slice():
    net = HarmonizationGenerator(features=(4, 4, 8, 8, 16, 4))
    final = net.unet.final_conv
    nn.init.zeros_(final.weight)
    nn.init.zeros_(final.bias)
    stack = torch.rand(3, 3, 32, 32)
    assert torch.equal(net(stack), stack[:, 1:2])


def test_discriminator_uses_instance_norm_and_judges_pairs():
    disc = ConditionalPatchDiscriminator(condition_channels=3, channels=8)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in disc.modules())
    logits = disc(torch.rand(2, 1, 64, 64), torch.rand(2, 3, 64, 64))
    assert logits.shape[:2] == (2, 1) and logits.shape[-1] > 1  # a map of patch logits, not one number
    assert ConditionalPatchDiscriminator(condition_channels=0, channels=8)(torch.rand(2, 1, 64, 64)).shape[0] == 2
