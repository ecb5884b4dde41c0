"""What the harmonizer, the detector and the restorer share: a 2.5D slice network run over scans in batches."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer, SimpleInferer
from torch import nn

from sgad_med.bundles import load_bundle_network, resolve_device
from sgad_med.io import Scan
from sgad_med.transforms.intensity import NormalizationParams, ScanNormalize
from sgad_med.transforms.slices import pad_to_multiple, slice_stacks


class SliceNetworkRunner:
    """A trained slice network with its device, batch size, padding, inferer and progress bar.

    Args:
        network: the network; its ``context`` attribute gives the stack size (k-c … k+c).
        device: where to run it (``"auto"``: CUDA when present).
        batch_size: slices per forward pass (memory grows with it, not with the scan).
        multiple: zero-pad slices to a multiple of this, as in training.
        progress: show a progress bar over slices.
        inferer: how the network is called on a batch (MONAI inferer; plain forward by default).
        normalizer: how a scan is mapped to [0, 1] before the network, as in training; default
            :class:`~sgad_med.transforms.ScanNormalize` with its defaults (:meth:`from_bundle` takes the bundle's,
            the shared ``transforms/scan_normalization.json``).
    """

    #: the bundle :meth:`from_bundle` loads when given none
    default_bundle = ""

    def __init__(self, network: nn.Module, device: str | torch.device = "auto", batch_size: int = 16,
                 multiple: int = 16, progress: bool = False, inferer: Inferer | None = None,
                 normalizer: ScanNormalize | None = None) -> None:
        self.device = resolve_device(device)
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.normalizer = normalizer if normalizer is not None else ScanNormalize()
        self.network = network.to(self.device).eval()
        self.context = int(getattr(network, "context", 1))
        self.batch_size = int(batch_size)
        self.multiple = int(multiple)
        self.progress = progress

    @classmethod
    def from_bundle(cls, bundle: str | os.PathLike | None = None, device: str | torch.device = "auto",
                    overlays: Sequence[str] = (), **kwargs: Any) -> SliceNetworkRunner:
        """Build the bundle's ``network_def`` with its ``models/model.pt`` (see :func:`load_bundle_network`), called
        through the ``inferer`` and with the ``normalizer`` of the bundle's ``inference.json`` unless given, so that
        scripts, the pipeline and ``monai.bundle run`` get the same outputs. ``overlays`` are config files layered
        over ``inference.json`` (e.g. ``["unet_generator.json"]`` for the previous harmonization generator)."""
        network, parser = load_bundle_network(bundle if bundle is not None else cls.default_bundle, device,
                                              overlays=overlays)
        for name in ("inferer", "normalizer"):
            if name not in kwargs and name in parser:
                kwargs[name] = parser.get_parsed_content(name)
        return cls(network, device=device, **kwargs)

    def normalize_scan(self, scan: Scan) -> tuple[torch.Tensor, NormalizationParams]:
        """The scan's first channel in [0, 1] as the network saw it in training, ``[H, W, D]``, and the params
        that map [0, 1] back to the scan's units."""
        volume01, params = self.normalizer.normalize_with_params(scan.image.as_tensor()[0:1], scan.modality)
        return torch.as_tensor(volume01)[0], params

    def padded_stacks(self, volume01: torch.Tensor, slices: Sequence[int] | np.ndarray
                      ) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        """The 2.5D stacks of ``slices`` of a volume ``[H, W, D]``, padded and on the device, and the pads."""
        stacks, pads = pad_to_multiple(slice_stacks(volume01, self.context, slices), self.multiple)
        return stacks.to(self.device), pads
