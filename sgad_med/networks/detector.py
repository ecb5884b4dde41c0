"""The slice-anomaly detector: a small 2D DenseNet over a 2.5D stack, with a novelty score and its calibration.

One network answers two questions about slice k of a stack (k-c … k+c):

- *does it look like a damage we trained on?* — the classifier logit (binary cross-entropy, our L_det);
- *does it look unlike every clean slice we have seen?* — the novelty score: the Mahalanobis distance of its
  pooled DenseNet features to the features of clean slices (Lee et al. 2018), which needs no example of the
  damage and so also reacts to faults nobody simulated.

The calibration that turns both into one probability lives in the network's buffers, so that it is saved in
``models/model.pt`` with the weights it belongs to: a temperature for the logit, a Platt map for the novelty
score, the scan reference and the decision threshold. :func:`sgad_med.engines.detection.calibrate_detector` and
:func:`~sgad_med.engines.detection.calibrate_scan_reference` fit them.

**Scan reference.** Scans from an unfamiliar scanner can look a little unusual on *every* slice: both kinds of
evidence then rise on clean slices too, and a threshold set on familiar scans flags many of them. An anomalous
slice is one that is unlike the rest of its scan, so when the median evidence of a scan's slices lies above the
median of clean calibration scans (:attr:`scan_reference`), the scan's slices are judged against their own
median instead (:meth:`scan_shift`). Scans that look familiar are scored exactly as before.

**Neighbour evidence.** The network sees one neighbour on each side. A third, optional evidence compares each
slice's texture statistics (noise, high-frequency energy, edges) with those of five slices on each side
(:func:`~sgad_med.transforms.slice_statistics.texture_slice_scores`, the classical baseline's score over those
statistics), mapped
to a logit by its own Platt map on ``log(1 + z)`` (:attr:`neighbour_scale`, :attr:`neighbour_offset`; the
score's tail is heavy: damaged slices reach z in the thousands). It counts only from a gate on ``log(1 + z)``
(:attr:`neighbour_gate`, the 99th percentile of clean calibration slices in the bundle): below it, ordinary
slice-to-slice texture variation would lift the bulk of clean slices above the few damaged slices the network
scores weakly (on validation scans that cost contrast inversion 0.006 AUROC). It is relative to the
scan by construction, so the scan shift does not apply to it. It is computed over whole volumes, so it is
given to :meth:`combine` from outside (the detector computes it); weights calibrated without it have scale 0
and ignore it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import DenseNet
from torch import nn

#: ``(scale, offset)`` of the neighbour evidence's Platt map when it is off: scale 0 never lets it count.
NEIGHBOUR_MAP_OFF: tuple[float, float] = (0.0, -30.0)


class SliceAnomalyNet(nn.Module):
    """Anomaly logit, novelty score and calibrated probability for the centre slice of 2.5D stacks.

    A MONAI :class:`~monai.networks.nets.DenseNet` (2D, slices as channels). It keeps batch norm: unlike the
    GAN's instance norm, batch statistics keep a slice's absolute brightness, and intensity drift or saturation
    of a whole slice is exactly what must be seen.

    The probability is ``sigmoid(max(logit / temperature, novelty_scale * novelty + novelty_offset))``: either
    evidence alone can flag a slice; over a whole scan each evidence is first lowered by the scan's
    :meth:`scan_shift`, and the neighbour evidence ``neighbour_scale * log(1 + z) + neighbour_offset`` joins the maximum
    when it is calibrated and given. Until :meth:`set_calibration` is called it is ``sigmoid(logit)``.

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
        # median (classifier, novelty) evidence of clean calibration scans; +inf: no scan-relative shift
        self.register_buffer("scan_reference", torch.full((2,), float("inf")))
        # Platt map of the neighbour statistics' score; scale 0: not calibrated, not used
        self.register_buffer("neighbour_scale", torch.tensor(NEIGHBOUR_MAP_OFF[0]))
        self.register_buffer("neighbour_offset", torch.tensor(NEIGHBOUR_MAP_OFF[1]))
        # log(1 + z) from which the neighbour evidence counts; 0: from every z (as before the gate existed)
        self.register_buffer("neighbour_gate", torch.tensor(0.0))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # weights calibrated before the scan reference / neighbour evidence existed: scored as they were then
        state_dict.setdefault(prefix + "scan_reference", torch.full((2,), float("inf")))
        state_dict.setdefault(prefix + "neighbour_scale", torch.tensor(NEIGHBOUR_MAP_OFF[0]))
        state_dict.setdefault(prefix + "neighbour_offset", torch.tensor(NEIGHBOUR_MAP_OFF[1]))
        state_dict.setdefault(prefix + "neighbour_gate", torch.tensor(0.0))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def uses_neighbour_evidence(self) -> bool:
        """Whether a calibrated neighbour evidence joins the probability (see :meth:`combine`)."""
        return bool(self.calibrated) and float(self.neighbour_scale) > 0.0

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

    def calibrated_evidence(self, logit: torch.Tensor, novelty: torch.Tensor) -> torch.Tensor:
        """``[B, 2]``: the classifier's and the novelty score's evidence, each as a calibrated logit."""
        return torch.stack([logit / self.temperature, self.novelty_scale * novelty + self.novelty_offset], dim=-1)

    def scan_shift(self, logit: torch.Tensor, novelty: torch.Tensor, min_slices: int = 5) -> torch.Tensor:
        """``[2]``: how far a scan's median evidence lies above :attr:`scan_reference` (never below 0).

        Args:
            logit: classifier logits ``[D]`` of the scan's slices with anatomy in them.
            novelty: their novelty scores ``[D]``.
            min_slices: with fewer slices no median is trusted, and the shift is 0.
        """
        if not bool(self.calibrated) or logit.numel() < min_slices:
            return torch.zeros(2, device=logit.device, dtype=logit.dtype)
        median = self.calibrated_evidence(logit, novelty).median(dim=0).values
        return (median - self.scan_reference.to(median.dtype)).clamp_min(0.0)

    def neighbour_evidence(self, neighbour: torch.Tensor) -> torch.Tensor:
        """``[B]``: the neighbour statistics' scores ``z >= 0`` as a calibrated logit, ``-inf`` below the gate."""
        log_z = torch.log1p(neighbour)
        logit = self.neighbour_scale * log_z + self.neighbour_offset
        return torch.where(log_z >= self.neighbour_gate, logit, torch.full_like(logit, float("-inf")))

    def combine(self, logit: torch.Tensor, novelty: torch.Tensor, shift: torch.Tensor | None = None,
                neighbour: torch.Tensor | None = None) -> torch.Tensor:
        """The calibrated probability ``[B]`` from a logit, a novelty score and, optionally, neighbour statistics.

        Args:
            logit: classifier logits ``[B]``.
            novelty: novelty scores ``[B]``.
            shift: ``[2]`` subtracted from the (classifier, novelty) evidence: the slices' scan's
                :meth:`scan_shift`; ``None`` for none.
            neighbour: the slices' :func:`~sgad_med.transforms.slice_statistics.texture_slice_scores` ``[B]``;
                ignored unless :attr:`uses_neighbour_evidence`.
        """
        if not bool(self.calibrated):
            return torch.sigmoid(logit / self.temperature)
        evidence = self.calibrated_evidence(logit, novelty)
        if shift is not None:
            evidence = evidence - shift
        strongest = evidence.max(dim=-1).values
        if neighbour is not None and self.uses_neighbour_evidence:
            strongest = torch.maximum(strongest, self.neighbour_evidence(neighbour.to(strongest)))
        return torch.sigmoid(strongest)

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
        scan_reference: Sequence[float] | None = None,
        neighbour_map: tuple[float, float] | None = None,
        neighbour_gate: float = 0.0,
    ) -> None:
        """Store a fitted calibration in the buffers (see :func:`sgad_med.engines.detection.calibrate_detector`).

        ``scan_reference=None`` (no scan-relative shift) and ``neighbour_map=None`` (no neighbour evidence; else
        its ``(scale, offset)``) unless given; ``neighbour_gate`` is the ``log(1 + z)`` from which it counts.
        """
        reference = (float("inf"), float("inf")) if scan_reference is None else scan_reference
        self.scan_reference.copy_(torch.as_tensor(reference, dtype=self.scan_reference.dtype))
        scale, offset = NEIGHBOUR_MAP_OFF if neighbour_map is None else neighbour_map
        self.neighbour_scale.fill_(float(scale))
        self.neighbour_offset.fill_(float(offset))
        self.neighbour_gate.fill_(float(neighbour_gate))
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
