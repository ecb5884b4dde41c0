"""An edge-preserving harmonization generator: a learned, spatially smooth intensity mapping of a denoised input.

The generator never synthesises pixels. It predicts, from a downsampled stack of neighbouring slices,

- a bilateral grid of piecewise-linear lookup tables (``knots`` values on a ``grid`` x ``grid`` spatial grid,
  interpolated bicubically between cells): a non-monotonic intensity mapping (so contrast can invert, T2 → T1)
  that may vary smoothly across the slice, so two tissues of equal intensity in different places can map
  differently (after image-adaptive 3D LUTs, Zeng et al., TPAMI 2020, and HDRNet's bilateral grids);
- a smooth multiplicative log bias field on the same grid;
- the strength of a self-guided filter (He et al., TPAMI 2013) that removes noise before the mapping.

So the output is ``clamp(LUT_p(GF(x)(p)) * exp(bias(p)), 0, 1)`` with ``x`` the centre slice: the guided filter's
output is locally ``a * x + b`` with box-smoothed ``a``, ``b`` (an edge only where ``x`` has one), the lookup
table acts on each pixel's own value, and everything that varies with position is a bicubic interpolation of a
coarse grid. Wherever the input is constant, the output is a smooth field; it is exactly constant when the whole
input is (replicate padding everywhere, no positional input). It cannot draw a structure the input lacks, and
cannot sharpen a blurred one either: that is the price of the guarantee.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

#: Bicubic refinement of the bilateral grid before the per-pixel trilinear lookup: nodes per grid cell.
_FINE_PER_CELL = 4


def box_filter(image: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over ``(2r+1)²`` windows of ``[N, C, H, W]`` images, replicate-padded (a constant image stays constant)."""
    if radius <= 0:
        return image
    padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    return F.avg_pool2d(padded, 2 * radius + 1, stride=1)


def guided_filter(guide: torch.Tensor, source: torch.Tensor, radius: int, eps: torch.Tensor | float) -> torch.Tensor:
    """The guided filter of He et al.: ``source`` smoothed where ``guide`` is flat, kept where ``guide`` has edges.

    Args:
        guide: ``[N, 1, H, W]`` guidance images.
        source: ``[N, 1, H, W]`` images to filter (the guide itself for edge-preserving denoising).
        radius: window radius in pixels.
        eps: regularisation, a float or ``[N, 1, 1, 1]``: the local variance below which the filter smooths.

    Returns:
        ``[N, 1, H, W]``: ``mean(a) * guide + mean(b)``, with ``a``, ``b`` the local linear fit of source to guide.
    """
    mean_guide = box_filter(guide, radius)
    mean_source = box_filter(source, radius)
    covariance = box_filter(guide * source, radius) - mean_guide * mean_source
    variance = (box_filter(guide * guide, radius) - mean_guide * mean_guide).clamp_min(0.0)
    # the same sum either way; the branches only let TorchScript resolve the union type
    if isinstance(eps, torch.Tensor):
        a = covariance / (variance + eps)
    else:
        a = covariance / (variance + eps)
    b = mean_source - a * mean_guide
    return box_filter(a, radius) * guide + box_filter(b, radius)


def soft_histogram(image: torch.Tensor, bins: int) -> torch.Tensor:
    """Fraction of the pixels of each ``[N, 1, H, W]`` image near each of ``bins`` equally spaced levels in [0, 1]."""
    return piecewise_linear_weights(image.clamp(0.0, 1.0), bins).mean(dim=(2, 3))


def piecewise_linear_weights(values: torch.Tensor, knots: int) -> torch.Tensor:
    """Hat-function weights ``[N, knots, H, W]`` of ``[N, 1, H, W]`` values in [0, 1] on ``knots`` equally spaced
    knots: a lookup table ``t`` is then evaluated by linear interpolation as ``(weights * t).sum(1)``."""
    positions = torch.arange(knots, dtype=values.dtype, device=values.device).view(1, knots, 1, 1)
    return (1.0 - (values * (knots - 1) - positions).abs()).clamp_min(0.0)


class _ReplicateConv(nn.Sequential):
    """Replicate padding then a MONAI convolution block (3x3, no norm: absolute intensities carry the style)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(
            nn.ReplicationPad2d(1),
            Convolution(2, in_channels, out_channels, strides=stride, kernel_size=3, padding=0,
                        act=("leakyrelu", {"negative_slope": 0.1}), norm=None),
        )


class EdgePreservingGenerator(nn.Module):
    """Harmonization generator that maps intensities and cannot create an edge (see the module docstring).

    Takes a 2.5D stack of normalized slices ``[N, 2c+1, H, W]`` (k-c … k+c) and returns slice k in the reference
    style, ``[N, 1, H, W]`` in [0, 1]; a drop-in replacement for
    :class:`~sgad_med.networks.HarmonizationGenerator` in the trainers, the bundles and the pipeline. At
    initialisation it is the identity but for a light guided filter.

    Args:
        context: slices on each side of the centre slice.
        knots: knots of each piecewise-linear lookup table.
        grid: cells of the bilateral grid along each spatial axis.
        features: channels of the coefficient network's three strided stages.
        thumbnail: side of the downsampled stack the coefficient network sees.
        filter_radius: radius of the guided filter, in pixels.
        eps_range: smallest and largest guided-filter regularisation (variance units) the network may choose.
        max_log_bias: bound of the log bias field (0.7: a factor of 2 either way).
        lut_range: how far (in intensity) a lookup table value may depart from the identity.

    Example::

        net = EdgePreservingGenerator(context=1)
        y = net(torch.rand(2, 3, 112, 128))   # -> (2, 1, 112, 128)
    """

    def __init__(
        self,
        context: int = 1,
        knots: int = 32,
        grid: int = 8,
        features: tuple[int, int, int] = (16, 32, 64),
        thumbnail: int = 64,
        filter_radius: int = 2,
        eps_range: tuple[float, float] = (1e-5, 3e-2),
        max_log_bias: float = 0.7,
        lut_range: float = 1.0,
    ) -> None:
        super().__init__()
        self.context = int(context)
        self.knots, self.grid, self.thumbnail = int(knots), int(grid), int(thumbnail)
        self.fine_grid = self.grid * _FINE_PER_CELL  # side of the bicubically refined grid (see forward)
        self.filter_radius = int(filter_radius)
        self.log_eps_range = (math.log(eps_range[0]), math.log(eps_range[1]))
        self.max_log_bias, self.lut_range = float(max_log_bias), float(lut_range)
        channels = 2 * self.context + 1
        f1, f2, f3 = features
        stages, size, in_ch = [], self.thumbnail, channels
        for out_ch in (f1, f2, f3):
            stages.append(_ReplicateConv(in_ch, out_ch, stride=2))
            in_ch, size = out_ch, size // 2
        while size > self.grid:  # down to the grid's resolution
            stages.append(_ReplicateConv(in_ch, in_ch, stride=2))
            size //= 2
        self.encoder = nn.Sequential(*stages)
        self.local = nn.Sequential(_ReplicateConv(f3, f3, stride=1), _ReplicateConv(f3, f3, stride=1))
        # Global path: the style of the whole slice, from pooled features and the centre slice's histogram.
        self.global_path = nn.Sequential(nn.Linear(f3 + self.knots, f3), nn.LeakyReLU(0.1), nn.Linear(f3, f3))
        self.fuse = nn.Sequential(nn.LeakyReLU(0.1), nn.Conv2d(f3, f3, 1), nn.LeakyReLU(0.1))
        self.grid_head = nn.Conv2d(f3, self.knots + 1, 1)  # knots lookup values and the log bias, per cell
        self.eps_head = nn.Linear(f3, 1)
        for head in (self.grid_head, self.eps_head):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        # start at the lightest filtering the range allows
        nn.init.constant_(self.eps_head.bias, -4.0)
        self.register_buffer("identity_lut", torch.linspace(0.0, 1.0, self.knots).view(1, self.knots, 1, 1))

    @property
    def in_channels(self) -> int:
        """Slices in the input stack."""
        return 2 * self.context + 1

    def coefficients(self, stack: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the coefficient network predicts for each slice, at the grid's resolution.

        Returns:
            ``lut`` ``[N, knots, grid, grid]`` (lookup values per cell), ``log_bias`` ``[N, 1, grid, grid]`` and
            ``eps`` ``[N, 1, 1, 1]`` (the guided filter's regularisation).
        """
        small = F.adaptive_avg_pool2d(stack, self.thumbnail)
        features = self.encoder(small)
        features = F.adaptive_avg_pool2d(features, self.grid)
        pooled = features.mean(dim=(2, 3))
        histogram = soft_histogram(small[:, self.context : self.context + 1], self.knots)
        global_features = self.global_path(torch.cat([pooled, histogram], dim=1))
        fused = self.fuse(self.local(features) + global_features[:, :, None, None])
        raw = self.grid_head(fused)
        lut = self.identity_lut + self.lut_range * torch.tanh(raw[:, : self.knots])
        log_bias = self.max_log_bias * torch.tanh(raw[:, self.knots :])
        low, high = self.log_eps_range
        eps = torch.exp(low + (high - low) * torch.sigmoid(self.eps_head(global_features)))
        return {"lut": lut, "log_bias": log_bias, "eps": eps[:, :, None, None]}

    def denoise(self, centre: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The centre slice after the self-guided filter, ``[N, 1, H, W]``."""
        return guided_filter(centre, centre, self.filter_radius, eps)

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = stack.shape
        centre = stack[:, self.context : self.context + 1]
        coefficients = self.coefficients(stack)
        denoised = self.denoise(centre, coefficients["eps"]).clamp(0.0, 1.0)
        # Bicubic from the grid to a finer one (no kinks at cell borders), then one trilinear lookup per pixel
        # in (x, y, intensity): HDRNet's "slicing", 8 taps a pixel instead of a full-resolution table per knot.
        fine = [self.fine_grid, self.fine_grid]
        lut = F.interpolate(coefficients["lut"], size=fine, mode="bicubic", align_corners=False)
        log_bias = F.interpolate(coefficients["log_bias"], size=fine, mode="bicubic", align_corners=False)
        ys = torch.linspace(-1.0, 1.0, height, device=stack.device, dtype=stack.dtype)
        xs = torch.linspace(-1.0, 1.0, width, device=stack.device, dtype=stack.dtype)
        plane = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).expand(batch, height, width, 2)
        coords = torch.cat([plane, denoised[:, 0, :, :, None] * 2.0 - 1.0], dim=-1)[:, None]  # [N, 1, H, W, 3]
        mapped = F.grid_sample(lut[:, None], coords, mode="bilinear", align_corners=True)[:, 0]
        bias = F.grid_sample(log_bias, plane, mode="bilinear", align_corners=True)
        return (mapped * torch.exp(bias)).clamp(0.0, 1.0)
