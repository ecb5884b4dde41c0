import pytest
import torch

from sgad_med.inferers import FlipEnsembleInferer


class _WidthRamp(torch.nn.Module):
    """Not flip-equivariant: weights each column by its position, and counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x[:, :1] * torch.linspace(0.0, 1.0, x.shape[-1])


def test_mean_of_plain_and_flipped_back_passes():
    x = torch.rand(2, 3, 8, 6)
    net = _WidthRamp()
    pred = FlipEnsembleInferer()(x, net)
    ramp = torch.linspace(0.0, 1.0, 6)
    # flip(net(flip(x))) weights column j by ramp[W-1-j]: the mean weights every column by 1/2
    expected = 0.5 * (x[:, :1] * ramp + x[:, :1] * ramp.flip(0))
    torch.testing.assert_close(pred, expected)
    assert net.calls == 2


def test_equivariant_network_gives_its_plain_output():
    x = torch.rand(1, 5, 16, 12)
    conv = torch.nn.Conv2d(5, 1, 3, padding=1, bias=False)
    with torch.no_grad():  # a kernel symmetric in both axes commutes with both flips
        kernel = torch.rand(1, 5, 3, 3)
        conv.weight.copy_(kernel + kernel.flip(-1) + kernel.flip(-2) + kernel.flip(-1, -2))
        inferer = FlipEnsembleInferer(flips=[(-1,), (-2,), (-2, -1)])
        torch.testing.assert_close(inferer(x, conv), conv(x))


def test_several_flips_run_one_pass_each():
    net = _WidthRamp()
    FlipEnsembleInferer(flips=[(-1,), (-2,)])(torch.rand(1, 1, 4, 4), net)
    assert net.calls == 3


@pytest.mark.parametrize("flips", [[()], [(0,)], [(1, -1)]])
def test_flips_must_name_spatial_dimensions_from_the_end(flips):
    with pytest.raises(ValueError, match="spatial dimensions"):
        FlipEnsembleInferer(flips=flips)


def test_flip_beyond_the_spatial_dimensions_is_refused_before_any_pass():
    net = _WidthRamp()
    with pytest.raises(ValueError, match="more spatial dimensions"):
        FlipEnsembleInferer(flips=[(-1,), (-3,)])(torch.rand(1, 1, 4, 4), net)
    assert net.calls == 0
