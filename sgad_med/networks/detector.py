"""The slice-anomaly detector: a small 2D DenseNet over a 2.5D stack, with a novelty score and its calibration.

One network answers two questions about slice k of a stack (k-c … k+c):

- *does it look like a damage we trained on?* — the classifier logit (binary cross-entropy, our L_det);
- *does it look unlike every clean slice we have seen?* — the novelty score: the Mahalanobis distance of its
  pooled DenseNet features to the features of clean slices (Lee et al. 2018), which needs no example of the
  damage and so also reacts to faults nobody simulated.

The calibration that turns both into one probability lives in the network's buffers, so that it is saved in
``models/model.pt`` with the weights it belongs to: a temperature for the logit, a Platt map for the novelty
score, and the decision threshold. :func:`sgad_med.engines.detection.calibrate_detector` fits them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import DenseNet
from torch import nn


class SliceAnomalyNet(nn.Module):
    """Anomaly logit, novelty score and calibrated probability for the centre slice of 2.5D stacks.

    A MONAI :class:`~monai.networks.nets.DenseNet` (2D, slices as channels). It keeps batch norm: unlike the
    GAN's instance norm, batch statistics keep a slice's absolute brightness, and intensity drift or saturation
    of a whole slice is exactly what must be seen.

    The probability is ``sigmoid(max(logit / temperature, novelty_scale * novelty + novelty_offset))``: either
    evidence alone can flag a slice. Until :meth:`set_calibration` is called it is ``sigmoid(logit)``.

    Args:
        context: neighbours on each side; ``in_channels = 2 * context + 1``.
        init_features: channels after the stem.
        growth_rate: channels each dense layer adds.
        block_config: dense layers per block.
        dropout: dropout probability in the dense layers.
        high_pass: also give the network the local high-frequency energy of every slice (the magnitude of a
            fixed Laplacian, as extra channels). DenseNet's stride-2 stem and pooling discard the finest detail
            before any dense block sees it, and several damages (Gibbs ringing, zipper lines, noise) live there;
            the energy map turns that detail into a smooth signal the stem keeps.

    Example::

        net = SliceAnomalyNet(context=1)
        logits = net(torch.rand(4, 3, 112, 128))          # -> (4, 1)
        probability = net.probability(torch.rand(4, 3, 112, 128))  # -> (4,)
    """

    def __init__(
        self,
        context: int = 1,
        init_features: int = 16,
        growth_rate: int = 8,
        block_config: Sequence[int] = (2, 4, 4),
        dropout: float = 0.0,
        high_pass: bool = False,
    ) -> None:
        super().__init__()
        self.context = int(context)
        self.high_pass = high_pass
        laplacian = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        self.register_buffer("laplacian", laplacian[None, None], persistent=False)
        self.densenet = DenseNet(
            spatial_dims=2,
            in_channels=(2 if high_pass else 1) * (2 * self.context + 1),
            out_channels=1,
            init_features=init_features,
            growth_rate=growth_rate,
            block_config=tuple(block_config),
            dropout_prob=dropout,
        )
        n_features = self.densenet.class_layers.out.in_features
        # Calibration, saved with the weights; identity values until calibrate_detector fits them.
        self.register_buffer("novelty_mean", torch.zeros(n_features))
        self.register_buffer("novelty_precision", torch.eye(n_features))
        self.register_buffer("temperature", torch.tensor(1.0))
        self.register_buffer("novelty_scale", torch.tensor(0.0))
        self.register_buffer("novelty_offset", torch.tensor(-30.0))
        self.register_buffer("threshold", torch.tensor(0.5))
        self.register_buffer("calibrated", torch.tensor(False))

    @property
    def in_channels(self) -> int:
        """Slices in the input stack."""
        return 2 * self.context + 1

    def _inputs(self, stack: torch.Tensor) -> torch.Tensor:
        if not self.high_pass:
            return stack
        slices = stack.reshape(-1, 1, *stack.shape[-2:])
        energy = torch.nn.functional.conv2d(slices, self.laplacian.to(stack.dtype), padding=1).abs()
        return torch.cat([stack, energy.reshape(stack.shape)], dim=1)

    def embed(self, stack: torch.Tensor) -> torch.Tensor:
        """Pooled DenseNet features ``[B, F]`` of stacks ``[B, 2c+1, H, W]`` (any H, W)."""
        layers = self.densenet.class_layers
        return layers.flatten(layers.pool(layers.relu(self.densenet.features(self._inputs(stack)))))

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        """Classifier logits ``[B, 1]``: the training output (binary cross-entropy against the slice label)."""
        return self.densenet.class_layers.out(self.embed(stack))

    def novelty(self, features: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance ``[B]`` of features to the clean-slice distribution fitted at calibration."""
        centred = features - self.novelty_mean
        return torch.sqrt(torch.einsum("bi,ij,bj->b", centred, self.novelty_precision, centred).clamp_min(0.0))

    def evidence(self, stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logit [B], novelty [B])`` of stacks, in one forward pass."""
        features = self.embed(stack)
        return self.densenet.class_layers.out(features)[:, 0], self.novelty(features)

    def combine(self, logit: torch.Tensor, novelty: torch.Tensor) -> torch.Tensor:
        """The calibrated probability ``[B]`` from a logit and a novelty score."""
        classifier = logit / self.temperature
        if not bool(self.calibrated):
            return torch.sigmoid(classifier)
        return torch.sigmoid(torch.maximum(classifier, self.novelty_scale * novelty + self.novelty_offset))

    def probability(self, stack: torch.Tensor) -> torch.Tensor:
        """Calibrated probability ``[B]`` that the centre slice of each stack is anomalous."""
        return self.combine(*self.evidence(stack))

    @torch.no_grad()
    def set_calibration(
        self,
        novelty_mean: torch.Tensor,
        novelty_precision: torch.Tensor,
        temperature: float,
        novelty_scale: float,
        novelty_offset: float,
        threshold: float,
    ) -> None:
        """Store a fitted calibration in the buffers (see :func:`sgad_med.engines.detection.calibrate_detector`)."""
        self.novelty_mean.copy_(novelty_mean)
        self.novelty_precision.copy_(novelty_precision)
        for name, value in (
            ("temperature", temperature),
            ("novelty_scale", novelty_scale),
            ("novelty_offset", novelty_offset),
            ("threshold", threshold),
        ):
            getattr(self, name).fill_(float(value))
        self.calibrated.fill_(True)
