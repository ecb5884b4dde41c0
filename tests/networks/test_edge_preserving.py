"""EdgePreservingGenerator: it cannot create an edge, whatever its weights, and it can learn to invert a contrast."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from sgad_med.networks import EdgePreservingGenerator
from sgad_med.networks.edge_preserving import box_filter, guided_filter, piecewise_linear_weights


def _scrambled(seed: int, scale: float = 3.0) -> EdgePreservingGenerator:
    """A generator with large random weights: whatever training could produce, and worse."""
    torch.manual_seed(seed)
    net = EdgePreservingGenerator(context=1, knots=16, grid=4, features=(8, 8, 16), thumbnail=32)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.normal_(0.0, scale / max(1, parameter[0].numel()) ** 0.5)
    return net.eval()


def _phantom(height: int = 64, width: int = 72) -> torch.Tensor:
    """A piecewise-constant slice: a bright disc, a darker square, background, repeated as a 3-slice stack."""
    yy, xx = np.mgrid[:height, :width]
    image = np.full((height, width), 0.2, dtype=np.float32)
    image[(yy - 30) ** 2 + (xx - 24) ** 2 < 14**2] = 0.8
    image[8:24, 44:64] = 0.5
    return torch.from_numpy(image)[None, None].repeat(1, 3, 1, 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_constant_input_gives_a_constant_output_whatever_the_weights(seed):
    net = _scrambled(seed)
    for value in (0.0, 0.37, 1.0):
        with torch.no_grad():
            out = net(torch.full((2, 3, 40, 56), value))
        assert out.shape == (2, 1, 40, 56)
        assert float(out.max() - out.min()) < 1e-5, f"value {value}: output varies by {float(out.max() - out.min())}"


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_output_edges_lie_on_input_edges_for_random_weights(seed):
    """Away from the input's edges (beyond the guided filter's reach), the output holds no edge: its high-pass
    (the image minus its gaussian blur) stays far below the size of a tissue boundary (0.1 and more).

    With random weights of unit scale. At extreme weights the smooth fields may swing over the whole [0, 1] range
    within one grid cell, and the final clamp to [0, 1] then leaves a kink (a high-pass up to ~0.1 at scale 3,
    measured); it is still no step, and a constant input still gives a constant output (test above)."""
    stack = _phantom()
    net = _scrambled(seed, scale=1.0)
    with torch.no_grad():
        out = net(stack)[0, 0].numpy().astype(np.float64)
    image = stack[0, 1].numpy()
    edges = ndimage.generic_gradient_magnitude(image, ndimage.sobel) > 0
    reach = 2 * net.filter_radius + 3  # the filter's two box passes, then the high-pass's own support
    flat = ~ndimage.binary_dilation(edges, iterations=reach)
    flat[:reach], flat[-reach:], flat[:, :reach], flat[:, -reach:] = False, False, False, False
    high_pass = np.abs(out - ndimage.gaussian_filter(out, 1.0, mode="nearest"))
    assert flat.sum() > 1000
    assert high_pass[flat].max() < 0.01, f"an edge away from the input's edges: {high_pass[flat].max():.4f}"


def test_an_edge_the_input_lacks_cannot_appear_but_one_it_has_is_kept():
    """The same generator on a slice with and without a square: only the slice with the square has its edge."""
    net = _scrambled(4, scale=1.0)
    with_square = _phantom()
    without = with_square.clone()
    without[..., 8:24, 44:64] = 0.2
    with torch.no_grad():
        a, b = net(with_square)[0, 0].numpy(), net(without)[0, 0].numpy()
    ring = np.zeros(a.shape, dtype=bool)
    ring[6:26, 42:66] = True
    ring[10:22, 46:62] = False  # the square's outline, where its edge would be
    gradient = [ndimage.generic_gradient_magnitude(x.astype(np.float64), ndimage.sobel) for x in (a, b)]
    assert gradient[1][ring].max() < 0.05 * max(gradient[0][ring].max(), 1e-6) + 0.01


def test_identity_at_initialisation_and_any_slice_size():
    net = EdgePreservingGenerator(context=1)
    stack = torch.rand(2, 3, 37, 53)
    with torch.no_grad():
        out = net(stack)
    assert out.shape == (2, 1, 37, 53)
    # the lightest guided filter smooths pure noise a little; a smooth image comes back as it was
    smooth = torch.from_numpy(ndimage.gaussian_filter(np.random.default_rng(0).random((40, 48)), 4)).float()
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    with torch.no_grad():
        back = net(smooth[None, None].repeat(1, 3, 1, 1))[0, 0]
    assert float((back - smooth).abs().max()) < 0.01


def test_it_learns_to_invert_a_contrast_on_a_toy_case():
    """T2-like in, T1-like out: dark centre / bright ring becomes bright centre / dark ring (a non-monotonic map
    of a three-level image: background stays dark)."""
    yy, xx = np.mgrid[:48, :48]
    radius = np.hypot(yy - 24, xx - 24)
    source = np.where(radius < 10, 0.35, np.where(radius < 18, 0.9, 0.0)).astype(np.float32)
    target = np.where(radius < 10, 0.85, np.where(radius < 18, 0.3, 0.0)).astype(np.float32)
    stack = torch.from_numpy(source)[None, None].repeat(4, 3, 1, 1)
    label = torch.from_numpy(target)[None, None].repeat(4, 1, 1, 1)
    torch.manual_seed(0)
    net = EdgePreservingGenerator(context=1, knots=16, grid=4, features=(8, 8, 16), thumbnail=32)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(150):
        optimizer.zero_grad()
        loss = torch.mean(torch.abs(net(stack) - label))
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        out = net(stack[:1])[0, 0].numpy()
    inner, ring = radius < 8, (radius > 12) & (radius < 16)
    assert out[inner].mean() > out[ring].mean() + 0.4, "the contrast is inverted"
    assert np.abs(out - target)[inner | ring].mean() < 0.05


def test_guided_filter_smooths_flat_noise_and_keeps_a_step():
    rng = np.random.default_rng(0)
    step = np.zeros((1, 1, 40, 40), dtype=np.float32)
    step[..., 20:] = 1.0
    noisy = torch.from_numpy(step + rng.normal(0, 0.03, step.shape).astype(np.float32))
    out = guided_filter(noisy, noisy, radius=2, eps=1e-2)
    assert float(out[..., 5:15, 5:15].std()) < 0.5 * float(noisy[..., 5:15, 5:15].std())
    assert float(out[..., 25:35, 21].mean() - out[..., 25:35, 18].mean()) > 0.9  # the step is still a step
    constant = torch.full((1, 1, 9, 9), 0.4)
    assert torch.allclose(box_filter(constant, 3), constant)


def test_piecewise_linear_weights_interpolate_a_table():
    values = torch.tensor([0.0, 0.1, 0.5, 1.0]).view(1, 1, 1, 4)
    weights = piecewise_linear_weights(values, knots=11)
    assert torch.allclose(weights.sum(dim=1), torch.ones(1, 1, 4))
    table = torch.linspace(0, 1, 11).view(1, 11, 1, 1) ** 2
    mapped = (weights * table).sum(dim=1)[0, 0]
    assert torch.allclose(mapped, values[0, 0, 0] ** 2, atol=1e-6)
