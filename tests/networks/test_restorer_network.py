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
    gate, kept = _with_head(30.0).gate_map(stack)
    assert torch.allclose(gate, torch.ones(2, 1, 32, 32))
    assert torch.equal(kept, centre)
    with pytest.raises(ValueError, match="no gate"):
        _with_head(0.0, gated=False).gate_map(stack)


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


def _aligned_with_open_gate() -> SliceRestorationNet:
    net = SliceRestorationNet(context=2, features=TINY, gate_residual=True, align=True)
    nn.init.zeros_(net.unet.final_conv.weight)
    with torch.no_grad():
        net.unet.final_conv.bias.copy_(torch.tensor([30.0, 0.0]))  # gate open: keep the (re-registered) slice
    return net.eval()


def _smooth_stack(batch: int = 2) -> torch.Tensor:
    """Five identical slices of a smooth blob inside a zero border: neighbours that match slice k."""
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(48.0), indexing="ij")
    blob = torch.exp(-((yy - 18) ** 2 / 60 + (xx - 26) ** 2 / 120))
    blob = blob + 0.5 * torch.exp(-((yy - 26) ** 2 + (xx - 16) ** 2) / 20)
    blob[:4], blob[-4:], blob[:, :4], blob[:, -4:] = 0, 0, 0, 0
    return blob.expand(batch, 5, 40, 48).clone()


def test_align_adds_the_re_registered_slice_as_an_input_channel():
    net = SliceRestorationNet(context=2, features=TINY, align=True)
    assert net.unet.conv_0.conv_0.conv.in_channels == 6
    assert net.in_channels == 5  # the stack the caller gives is unchanged
    assert net(torch.rand(1, 5, 32, 32)).shape == (1, 1, 32, 32)


def test_align_keeps_a_displaced_slice_moved_back_and_an_undisplaced_one_exactly():
    from sgad_med.networks.slice_alignment import translate

    net = _aligned_with_open_gate()
    stack = _smooth_stack()
    with torch.no_grad():
        assert torch.equal(net(stack)[:, 0], stack[:, 2])  # no displacement: slice k bit for bit
        displaced = stack.clone()
        displaced[:, 2] = translate(stack[:, 2], torch.tensor([[3, -2], [-4, 0]]))
        restored = net(displaced)[:, 0]
    inner = (slice(None), slice(6, -6), slice(6, -6))
    assert torch.allclose(restored[inner], stack[:, 2][inner], atol=1e-6)
    assert (displaced[:, 2] - stack[:, 2])[inner].abs().max() > 0.1  # the displacement was real


def test_align_needs_the_gate():
    with pytest.raises(ValueError, match="gate"):
        SliceRestorationNet(context=2, features=TINY, gated=False, align=True)


def test_repair_adds_the_repaired_slice_as_an_input_channel_and_needs_the_gate():
    net = SliceRestorationNet(context=2, features=TINY, repair=True)
    assert net.unet.conv_0.conv_0.conv.in_channels == 6
    both = SliceRestorationNet(context=2, features=TINY, repair=True, align=True)
    assert both.unet.conv_0.conv_0.conv.in_channels == 6  # one kept slice, repaired then re-registered
    with pytest.raises(ValueError, match="gate"):
        SliceRestorationNet(context=2, features=TINY, gated=False, repair=True)


def test_repair_keeps_a_despiked_slice_and_an_undamaged_one_exactly():
    net = SliceRestorationNet(context=2, features=TINY, gate_residual=True, align=True, repair=True)
    nn.init.zeros_(net.unet.final_conv.weight)
    with torch.no_grad():
        net.unet.final_conv.bias.copy_(torch.tensor([30.0, 0.0]))  # gate open: keep the (repaired) slice
    net.eval()
    stack = 0.8 * _smooth_stack(batch=1)
    spiked = stack.clone()
    rows, cols = torch.meshgrid(torch.arange(40.0), torch.arange(48.0), indexing="ij")
    spike = 0.15 * torch.cos(2 * torch.pi * (7 * rows / 40 + 11 * cols / 48) + 0.4)
    spiked[:, 2] = (stack[:, 2] + spike).clamp(0.0, 1.0)
    with torch.no_grad():
        assert torch.equal(net(stack)[:, 0], stack[:, 2])
        restored = net(spiked)[:, 0]
    assert (restored - stack[:, 2]).abs().max() < 0.02
    assert (spiked[:, 2] - stack[:, 2]).abs().max() > 0.1
