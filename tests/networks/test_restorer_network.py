from __future__ import annotations

import pytest
import torch
from torch import nn

from sgad_med.networks import SliceRestorationNet

TINY = (4, 4, 8, 8, 16, 4)


def _with_head(gate_bias: float, gated: bool = True) -> SliceRestorationNet:
    net = SliceRestorationNet(context=2, features=TINY, gated=gated)
    nn.init.zeros_(net.unet.final_conv.weight)
    nn.init.zeros_(net.unet.final_conv.bias)
    if gated:
        with torch.no_grad():
            net.unet.final_conv.bias[0] = gate_bias
    return net


def test_output_is_one_slice_of_the_input_size():
    net = SliceRestorationNet(context=2, features=TINY)
    assert net(torch.rand(3, 5, 32, 48)).shape == (3, 1, 32, 48)
    assert net.in_channels == 5


def test_the_gate_chooses_between_the_slice_and_its_nearest_neighbours():
    stack = torch.rand(2, 5, 32, 32)
    centre, neighbours = stack[:, 2:3], 0.5 * (stack[:, 1:2] + stack[:, 3:4])
    assert torch.allclose(_with_head(30.0)(stack), centre, atol=1e-6)  # gate open: the slice passes through
    assert torch.allclose(_with_head(-30.0)(stack), neighbours, atol=1e-6)  # gate shut: the neighbours
    assert torch.allclose(_with_head(0.0)(stack), 0.5 * (centre + neighbours), atol=1e-6)


def test_ungated_network_is_the_slice_plus_a_residual():
    stack = torch.rand(2, 5, 32, 32)
    assert torch.allclose(_with_head(0.0, gated=False)(stack), stack[:, 2:3])


def test_restoration_needs_neighbours():
    with pytest.raises(ValueError, match="neighbour"):
        SliceRestorationNet(context=0)


@pytest.mark.parametrize("gate_residual", [False, True])
def test_gated_residual_leaves_an_open_gate_exact(gate_residual):
    net = SliceRestorationNet(context=2, features=TINY, gate_residual=gate_residual)
    nn.init.zeros_(net.unet.final_conv.weight)
    with torch.no_grad():
        net.unet.final_conv.bias.copy_(torch.tensor([30.0, 0.25]))  # gate open, a constant residual
    stack = torch.rand(2, 5, 32, 32)
    change = (net(stack) - stack[:, 2:3]).abs().max()
    if gate_residual:
        assert change < 1e-6  # the residual is switched off with the neighbours
    else:
        assert torch.isclose(change, torch.tensor(0.25), atol=1e-5)
