"""The slice-sequence detector: one shared 2D encoder per slice, then 1D convolutions along the slice axis.

The earlier detector (:class:`~sgad_med.networks.SliceAnomalyNet`) scored the centre slice of a three-slice stack
and had only ever seen clean neighbours beside a damaged centre; it learned "this slice differs from its
neighbours", so clean slices beside damage were flagged and the middles of damaged runs were missed. This
network reads a whole scan (or a long run of consecutive slices) and gives one logit per slice, trained as
sequence labelling on scans whose every slice carries its own label (:mod:`sgad_med.data.slice_runs`):

1. **per slice**: a small strided CNN (MONAI :class:`~monai.networks.blocks.Convolution` blocks, no
   normalization layers: a slice's absolute brightness is evidence, and batch statistics over the slices of one
   scan differ between training and inference) over the slice, the magnitude of its Laplacian (fine detail,
   where Gibbs ringing, zipper lines and noise live) and optionally its differences to its two neighbours
   (shifts and local changes), pooled by mean and max into a feature vector;
2. **against the scan**: each slice's features next to their difference from the scan's median features (a
   median over slices ignores up to half of them damaged, so a run of damage does not move the reference the
   way a mean would);
3. **along the slice axis**: residual 1D convolutions (kernel 3, dilations 1, 2, 4: each slice sees a few
   slices on each side), then a 1x1 convolution to one logit per slice.

The calibration lives in buffers saved with the weights: a temperature for the logit and the decision threshold
(set for a target false-positive rate on clean slices of calibration scans, see
:func:`sgad_med.engines.sequence_detection.calibrate_sequence_detector`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn

__all__ = ["SliceSequenceNet"]


class _ResidualTemporal(nn.Module):
    """``x + conv(relu(conv(x)))`` along the slice axis, both kernel 3 at one dilation (replicate padding)."""

    def __init__(self, channels: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation, padding_mode="replicate"),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation, padding_mode="replicate"),
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class SliceSequenceNet(nn.Module):
    """One anomaly logit per slice of a scan: a shared 2D slice encoder and a 1D network along the slice axis.

    Args:
        channels: output channels of the encoder's strided 2D convolutions (one entry per level, each halves H, W).
        temporal_channels: channels of the 1D network along the slice axis.
        dilations: dilation of each residual 1D block (its receptive field: ``2 * sum(2 * d)`` slices).
        dropout: dropout in the 1D blocks.
        high_pass: also give the encoder the magnitude of a fixed Laplacian of each slice.
        neighbour_difference: also give the encoder the slice minus each of its two neighbours (the first and last
            slice count as their own outer neighbour). Pooled features cannot tell a slice moved by a few pixels,
            or a local patch changed, from anatomy; the differences can, and the 1D network with per-slice labels
            learns which of the slices they involve is the damaged one.

    Example::

        net = SliceSequenceNet()
        logits = net(torch.rand(2, 40, 96, 112))     # scans [B, D, H, W] -> logits [B, D]
        probability = net.probability(torch.rand(1, 40, 96, 112))   # calibrated, [1, D]
    """

    def __init__(
        self,
        channels: Sequence[int] = (16, 32, 48, 64),
        temporal_channels: int = 64,
        dilations: Sequence[int] = (1, 2, 4),
        dropout: float = 0.0,
        high_pass: bool = True,
        neighbour_difference: bool = False,
    ) -> None:
        super().__init__()
        self.high_pass = bool(high_pass)
        self.neighbour_difference = bool(neighbour_difference)
        laplacian = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        self.register_buffer("laplacian", laplacian[None, None], persistent=False)
        layers: list[nn.Module] = []
        in_channels = 1 + int(self.high_pass) + 2 * int(self.neighbour_difference)
        for out_channels in channels:
            layers.append(Convolution(2, in_channels, out_channels, strides=2, kernel_size=3, act="RELU", norm=None))
            layers.append(Convolution(2, out_channels, out_channels, strides=1, kernel_size=3, act="RELU", norm=None))
            in_channels = out_channels
        self.encoder = nn.Sequential(*layers)
        self.n_features = 2 * in_channels  # mean- and max-pooled
        self.project = nn.Conv1d(2 * self.n_features, temporal_channels, 1)
        self.temporal = nn.Sequential(*[_ResidualTemporal(temporal_channels, int(d), dropout) for d in dilations])
        self.head = nn.Conv1d(temporal_channels, 1, 1)
        # calibration, saved with the weights; identity until calibrated
        self.register_buffer("temperature", torch.tensor(1.0))
        self.register_buffer("threshold", torch.tensor(0.5))
        self.register_buffer("calibrated", torch.tensor(False))

    def _inputs(self, slices: torch.Tensor, previous: torch.Tensor | None, following: torch.Tensor | None
                ) -> torch.Tensor:
        """``[N, 1, H, W]`` -> ``[N, C, H, W]``: the slice, its Laplacian magnitude, its neighbour differences."""
        channels = [slices]
        if self.high_pass:
            channels.append(torch.nn.functional.conv2d(slices, self.laplacian.to(slices.dtype), padding=1).abs())
        if self.neighbour_difference:
            if previous is None or following is None:
                raise ValueError("this network needs each slice's neighbours (previous, following)")
            channels += [slices - previous, slices - following]
        return torch.cat(channels, dim=1)

    @torch.jit.export
    def encode(self, slices: torch.Tensor, previous: torch.Tensor | None = None,
               following: torch.Tensor | None = None) -> torch.Tensor:
        """Features ``[N, F]`` of slices ``[N, H, W]`` (any H, W; the encoder pools globally).

        Args:
            slices: the slices.
            previous: with ``neighbour_difference``, the slice before each (``[N, H, W]``).
            following: with ``neighbour_difference``, the slice after each.
        """
        previous = None if previous is None else previous[:, None]
        following = None if following is None else following[:, None]
        maps = self.encoder(self._inputs(slices[:, None], previous, following))
        return torch.cat([maps.mean(dim=(-2, -1)), maps.amax(dim=(-2, -1))], dim=1)

    @torch.jit.export
    def sequence_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, D]`` from the slices' features ``[B, D, F]`` (in slice order)."""
        median = features.median(dim=1, keepdim=True).values
        x = torch.cat([features, features - median], dim=-1).transpose(1, 2)  # [B, 2F, D]
        return self.head(self.temporal(torch.relu(self.project(x))))[:, 0]

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        """Uncalibrated logits ``[B, D]`` of scans ``[B, D, H, W]`` (slice axis first): the training output."""
        batch, depth, height, width = volumes.shape[0], volumes.shape[1], volumes.shape[-2], volumes.shape[-1]
        previous = torch.cat([volumes[:, :1], volumes[:, :-1]], dim=1)
        following = torch.cat([volumes[:, 1:], volumes[:, -1:]], dim=1)
        features = self.encode(volumes.reshape(batch * depth, height, width),
                               previous.reshape(batch * depth, height, width),
                               following.reshape(batch * depth, height, width))
        return self.sequence_logits(features.reshape(batch, depth, -1))

    @torch.jit.export
    def calibrated_probability(self, logits: torch.Tensor) -> torch.Tensor:
        """``sigmoid(logit / temperature)``: the calibrated probability of each slice being damaged."""
        return torch.sigmoid(logits / self.temperature)

    @torch.jit.export
    def probability(self, volumes: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities ``[B, D]`` of scans ``[B, D, H, W]``."""
        return self.calibrated_probability(self(volumes))

    @torch.no_grad()
    def set_calibration(self, temperature: float, threshold: float) -> None:
        """Store a fitted temperature and decision threshold in the buffers (saved with the weights)."""
        if not temperature > 0.0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        self.temperature.fill_(float(temperature))
        self.threshold.fill_(float(threshold))
        self.calibrated.fill_(True)
