"""Tiny untrained networks and a tiny bundles folder, so pipeline, batch and bundle tests run in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sgad_med.detector import SliceAnomalyDetector
from sgad_med.harmonizer import Harmonizer
from sgad_med.networks import HarmonizationGenerator, SliceAnomalyNet, SliceRestorationNet
from sgad_med.restorer import SliceRestorer

TINY_NETWORKS = {
    "style_harmonization": {"_target_": "sgad_med.networks.HarmonizationGenerator", "context": 1,
                            "features": [4, 4, 8, 8, 16, 4]},
    "slice_anomaly_detection": {"_target_": "sgad_med.networks.SliceAnomalyNet", "context": 1, "init_features": 4,
                                "growth_rate": 4, "block_config": [1, 1]},
    "slice_restoration": {"_target_": "sgad_med.networks.SliceRestorationNet", "context": 2,
                          "features": [4, 4, 8, 8, 16, 4]},
}


def tiny_components(seed: int = 0) -> tuple[Harmonizer, SliceAnomalyDetector, SliceRestorer]:
    """An untrained harmonizer, detector and restorer, on CPU."""
    torch.manual_seed(seed)
    harmonizer = Harmonizer(HarmonizationGenerator(context=1, features=(4, 4, 8, 8, 16, 4)), device="cpu")
    detector = SliceAnomalyDetector(SliceAnomalyNet(context=1, init_features=4, growth_rate=4, block_config=(1, 1)),
                                    device="cpu")
    restorer = SliceRestorer(SliceRestorationNet(context=2, features=(4, 4, 8, 8, 16, 4)), device="cpu")
    return harmonizer, detector, restorer


def make_tiny_bundles(root: Path, seed: int = 0) -> Path:
    """A bundles folder with the three bundles (configs/inference.json with a tiny network_def, models/model.pt)."""
    torch.manual_seed(seed)
    for name, network_def in TINY_NETWORKS.items():
        bundle = root / name
        (bundle / "configs").mkdir(parents=True, exist_ok=True)
        (bundle / "models").mkdir(exist_ok=True)
        (bundle / "configs" / "inference.json").write_text(json.dumps({"network_def": network_def}, indent=1))
        kwargs = {k: v for k, v in network_def.items() if k != "_target_"}
        network = {"style_harmonization": HarmonizationGenerator, "slice_anomaly_detection": SliceAnomalyNet,
                   "slice_restoration": SliceRestorationNet}[name](**kwargs)
        torch.save(network.state_dict(), bundle / "models" / "model.pt")
    return root
