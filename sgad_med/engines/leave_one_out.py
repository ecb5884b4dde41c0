"""Leave-one-type-out: does the detector still flag a kind of damage it never saw in training?

For each artifact kind in turn, a detector is trained on all the *other* kinds, calibrated on validation slices
damaged by those other kinds only, and scored on held-out anatomies in held-out styles damaged by the left-out
kind (slice-level AUROC against the clean slices of the same set). This measures what the novelty score adds:
the classifier alone has never been told that the left-out damage is damage.

To fit in a CPU budget, every fold shares one set of rendered clean slices (:meth:`CorruptedSlices.with_kinds`)
and trains for a fixed number of epochs (fewer than the shipped model); the table says so.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.engines import SupervisedTrainer
from monai.utils import set_determinism
from torch.utils.data import DataLoader

from sgad_med.data.corrupted import CorruptedSlices
from sgad_med.data.slices import collate_slices
from sgad_med.engines.detection import calibrate_detector
from sgad_med.evaluation.detection import auroc
from sgad_med.io.atomic import atomic_file
from sgad_med.networks import SliceAnomalyNet
from sgad_med.transforms.artifacts import ARTIFACT_KINDS

__all__ = ["leave_one_type_out", "format_leave_one_out"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def _scores(network: SliceAnomalyNet, dataset: CorruptedSlices, device: torch.device) -> dict[str, np.ndarray]:
    network.eval()
    parts: dict[str, list[np.ndarray]] = {"probability": [], "logit": [], "novelty": [], "label": []}
    for index in range(len(dataset)):
        item = dataset[index]
        logit, novelty = network.evidence(item["image"].to(device))
        parts["probability"].append(network.combine(logit, novelty).cpu().numpy())
        parts["logit"].append(logit.cpu().numpy())
        parts["novelty"].append(novelty.cpu().numpy())
        parts["label"].append(item["label"][:, 0].numpy())
    return {key: np.concatenate(value) for key, value in parts.items()}



def leave_one_type_out(
    train_set: CorruptedSlices,
    calibration_set: CorruptedSlices,
    test_set: CorruptedSlices,
    network_kwargs: dict[str, Any],
    kinds: Sequence[str] = ARTIFACT_KINDS,
    max_epochs: int = 4,
    volumes_per_batch: int = 4,
    learning_rate: float = 1e-3,
    target_fpr: float = 0.01,
    seed: int = 0,
    device: str | torch.device = "cpu",
    output_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Train one detector per left-out kind and score it on that kind.

    Args:
        train_set: training slices (any kinds: each fold restricts them).
        calibration_set: validation slices for the calibration (restricted like the training slices).
        test_set: held-out anatomies in held-out styles; each fold damages it with the left-out kind only.
        network_kwargs: arguments of :class:`~sgad_med.networks.SliceAnomalyNet`.
        kinds: the kinds to leave out in turn.
        max_epochs: training epochs per fold.
        volumes_per_batch: volumes per batch (each gives ``slices_per_volume`` slices).
        learning_rate: Adam learning rate.
        target_fpr: calibration's false-positive rate on clean validation slices.
        seed: determinism seed (the same for every fold).
        device: where to train.
        output_dir: write ``leave_one_out.json`` here.

    Returns:
        ``{"folds": {kind: {...}}, "mean_auroc": ..., "settings": {...}}`` where each fold holds the AUROC of the
        calibrated score, of the classifier logit alone and of the novelty score alone on the left-out kind, and
        the sensitivity and false-positive rate at the stored threshold.
    """
    device = torch.device(device)
    folds: dict[str, Any] = {}
    for left_out in kinds:
        started = time.perf_counter()
        trained_kinds = [k for k in ARTIFACT_KINDS if k != left_out]
        set_determinism(seed=seed)
        network = SliceAnomalyNet(**network_kwargs).to(device)
        loader = DataLoader(train_set.with_kinds(trained_kinds), batch_size=volumes_per_batch, shuffle=True,
                            collate_fn=collate_slices, generator=torch.Generator().manual_seed(seed))
        trainer = SupervisedTrainer(
            device=device, max_epochs=max_epochs, train_data_loader=loader, network=network,
            optimizer=torch.optim.Adam(network.parameters(), lr=learning_rate),
            loss_function=torch.nn.BCEWithLogitsLoss(),
        )
        trainer.run()
        calibration_loader = DataLoader(calibration_set.with_kinds(trained_kinds), batch_size=4,
                                        collate_fn=collate_slices)
        calibration = calibrate_detector(network, calibration_loader, target_fpr=target_fpr, device=device)
        scored = _scores(network, test_set.with_kinds([left_out]), device)
        label = scored["label"]
        flagged = scored["probability"] >= float(network.threshold)
        folds[left_out] = {
            "auroc": auroc(scored["probability"], label),
            "auroc_classifier": auroc(scored["logit"], label),
            "auroc_novelty": auroc(scored["novelty"], label),
            "sensitivity": float(flagged[label == 1].mean()),
            "fpr": float(flagged[label == 0].mean()),
            "threshold": float(network.threshold),
            "n_corrupted": int((label == 1).sum()),
            "n_clean": int((label == 0).sum()),
            "calibration": calibration,
            "seconds": time.perf_counter() - started,
        }
        logger.info("left out %s: %s", left_out, {k: v for k, v in folds[left_out].items() if k != "calibration"})
    results = {
        "folds": folds,
        "mean_auroc": float(np.mean([fold["auroc"] for fold in folds.values()])),
        "mean_auroc_classifier": float(np.mean([fold["auroc_classifier"] for fold in folds.values()])),
        "mean_auroc_novelty": float(np.mean([fold["auroc_novelty"] for fold in folds.values()])),
        "settings": {
            "network": dict(network_kwargs), "max_epochs": max_epochs, "volumes_per_batch": volumes_per_batch,
            "learning_rate": learning_rate, "target_fpr": target_fpr, "seed": seed,
            "train_anatomies": [min(train_set.anatomy_seeds), max(train_set.anatomy_seeds)],
            "test_anatomies": [min(test_set.anatomy_seeds), max(test_set.anatomy_seeds)],
            "test_split": test_set.split, "test_severity": list(test_set.severity),
        },
    }
    print(format_leave_one_out(results))
    if output_dir is not None:
        target = Path(output_dir) / "leave_one_out.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(target, overwrite=True) as tmp:
            Path(tmp).write_text(json.dumps(results, indent=2) + "\n")
    return results


def format_leave_one_out(results: dict[str, Any]) -> str:
    """The leave-one-type-out table: one row per left-out kind, then the mean."""
    header = f"{'left-out kind':<20}{'AUROC':>8}{'classifier':>12}{'novelty':>9}{'sens@thr':>10}{'FPR@thr':>9}"
    lines = [header, "-" * len(header)]
    for kind, fold in results["folds"].items():
        lines.append(f"{kind:<20}{fold['auroc']:>8.3f}{fold['auroc_classifier']:>12.3f}{fold['auroc_novelty']:>9.3f}"
                     f"{fold['sensitivity']:>10.3f}{fold['fpr']:>9.3f}")
    lines.append("-" * len(header))
    lines.append(f"{'mean':<20}{results['mean_auroc']:>8.3f}{results['mean_auroc_classifier']:>12.3f}"
                 f"{results['mean_auroc_novelty']:>9.3f}")
    return "\n".join(lines)
