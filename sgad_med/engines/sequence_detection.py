"""Training and calibration of the slice-sequence detector (:class:`~sgad_med.networks.SliceSequenceNet`).

Training is sequence labelling: one scan (or run of consecutive slices) of
:class:`~sgad_med.data.slice_runs.SliceRunVolumes` per step, binary cross-entropy on every slice's label,
weighted by the item's ``weight`` (no weight where a cut run lacks context; extra weight on clean slices beside
damage). It runs for a wall-clock budget, with the learning rate on a cosine over that budget, and is resumable:
``checkpoint.pt`` (weights, optimizer, steps, elapsed time) is written every few minutes and picked up again by
a re-run with the same ``output_dir``. Validation on fixed items of other anatomies keeps the best weights
(lowest validation loss) in ``model.pt``.

Calibration (:func:`calibrate_sequence_detector`), on scans of calibration anatomies, never the evaluation's:

1. temperature scaling of the logit (Guo et al. 2017), the temperature minimising the NLL of every labelled slice;
2. the threshold: for each group of clean slices (isolated clean slices, clean slices within 2 slices of damage,
   end slices with little tissue, clean slices of harmonized scans) the lowest threshold that flags at most
   ``target_fpr`` of that group; the stored threshold is the largest of them, so no group is favoured.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sgad_med.data.slice_runs import distance_to_damage
from sgad_med.engines.detection import save_calibrated
from sgad_med.io.atomic import atomic_file

__all__ = [
    "END_FOREGROUND",
    "masked_bce",
    "clean_slice_groups",
    "train_sequence_detector",
    "load_matching_weights",
    "SequenceDetectorTrainer",
    "collect_slice_logits",
    "calibrate_sequence_detector",
    "calibrate_sequence_bundle_weights",
]

logger = logging.getLogger(__name__)

#: A slice whose head fraction is below this (and above 0) is an end slice with little tissue.
END_FOREGROUND = 0.1


def masked_bce(logits: torch.Tensor, label: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy per slice, weighted, averaged over the weight (0 when all weights are 0)."""
    loss = nn.functional.binary_cross_entropy_with_logits(logits, label, reduction="none")
    return (loss * weight).sum() / weight.sum().clamp_min(1e-6)


def clean_slice_groups(label: np.ndarray, foreground: np.ndarray, end_foreground: float = END_FOREGROUND
                       ) -> dict[str, np.ndarray]:
    """The clean slices of one scan by group, as boolean masks ``[D]``.

    Args:
        label: ``[D]`` truth (1: damaged).
        foreground: ``[D]`` head fraction of each slice.
        end_foreground: below this head fraction (and above 0) a slice is an end slice.

    Returns:
        ``isolated`` (clean, 3 or more slices from damage, not an end slice), ``adjacent`` (clean, within 2 slices of
        damage, not an end slice), ``end`` (clean end slices with some tissue, wherever the damage is).
    """
    label = np.asarray(label) > 0.5
    foreground = np.asarray(foreground, dtype=np.float64)
    clean = ~label
    end = clean & (foreground > 0.0) & (foreground < end_foreground)
    head = foreground >= end_foreground
    near = distance_to_damage(label) <= 2
    return {"isolated": clean & head & ~near, "adjacent": clean & head & near, "end": end}


def load_matching_weights(network: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load weights into a network whose convolutions may take more input channels than the weights'.

    A weight of the same shape but in its second dimension is copied into the first input channels and the rest
    set to 0, so the network computes what the given weights computed until training uses the new inputs.

    Args:
        network: the network (changed in place).
        state: its weights, or those of a version of it with fewer input channels.
    """
    own = network.state_dict()
    adapted = {}
    for name, value in state.items():
        target = own.get(name)
        if target is not None and value.ndim >= 2 and target.shape != value.shape \
                and target.shape[0] == value.shape[0] and target.shape[2:] == value.shape[2:] \
                and target.shape[1] > value.shape[1]:
            padded = torch.zeros_like(target)
            padded[:, : value.shape[1]] = value
            value = padded
        adapted[name] = value
    network.load_state_dict(adapted)


def _first(items: list[Any]) -> Any:
    """The DataLoader's collate: items are whole scans of different sizes, one per step."""
    return items[0]


def _load_state(path: Path, device: torch.device) -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=True)


@torch.no_grad()
def _validate(network: nn.Module, dataset: Any, device: torch.device) -> dict[str, float]:
    """Weighted mean BCE and AUROC over the weighted slices of every item of a fixed dataset."""
    from sgad_med.evaluation.detection import auroc

    network.eval()
    loss_sum, weight_sum, scores, labels = 0.0, 0.0, [], []
    for i in range(len(dataset)):
        item = dataset[i]
        logits = network(item["image"][None].to(device))[0].cpu()
        weight = item["weight"]
        loss_sum += float(masked_bce(logits, item["label"], weight)) * float(weight.sum())
        weight_sum += float(weight.sum())
        keep = weight > 0
        scores.append(logits[keep].numpy())
        labels.append(item["label"][keep].numpy())
    network.train()
    score, label = np.concatenate(scores), np.concatenate(labels)
    return {
        "val_loss": loss_sum / max(weight_sum, 1e-6),
        "val_auroc": auroc(score, label) if 0 < label.sum() < label.size else float("nan"),
    }


def train_sequence_detector(
    network: nn.Module,
    train_set: Any,
    val_set: Any,
    output_dir: str | os.PathLike,
    model_path: str | os.PathLike,
    max_minutes: float = 60.0,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-4,
    device: str | torch.device = "cpu",
    seed: int = 0,
    num_workers: int = 1,
    num_threads: int | None = None,
    checkpoint_minutes: float = 2.0,
    val_minutes: float = 5.0,
    log_every: int = 50,
    max_steps: int | None = None,
    max_epochs: int | None = None,
    init_from: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Train for a wall-clock budget, resumably; the best weights by validation loss go to ``model_path``.

    Args:
        network: a :class:`~sgad_med.networks.SliceSequenceNet`.
        train_set: items with ``image [D, H, W]``, ``label [D]``, ``weight [D]``
            (:class:`~sgad_med.data.slice_runs.SliceRunVolumes`, ``redraw=True``).
        val_set: the same kind of items, fixed (``redraw=False``), of other anatomies.
        output_dir: where ``checkpoint.pt`` and ``history.json`` go (a re-run resumes from them).
        model_path: where the best weights are written (the bundle's ``models/model.pt``).
        max_minutes: the training budget (wall clock, summed over resumed runs).
        learning_rate: Adam's initial learning rate (cosine to 0 over the budget).
        weight_decay: AdamW weight decay.
        device: where to train.
        seed: seed of the order of the items.
        num_workers: DataLoader worker processes preparing items.
        num_threads: torch threads (``None``: leave as is).
        checkpoint_minutes: wall-clock interval between checkpoints.
        val_minutes: wall-clock interval between validations.
        log_every: steps between log lines.
        max_steps: stop after this many steps, whatever the budget (tests).
        max_epochs: stop after this many passes over ``train_set``, whatever the budget.
        init_from: weights to start from when there is no checkpoint to resume (:func:`load_matching_weights`:
            a network with more input channels gets the extra ones zero-initialized, so it starts as the given
            one did).

    Returns:
        The history: validation records, steps, minutes.
    """
    import torch.distributed as dist

    device = torch.device(device)
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    distributed = dist.is_available() and dist.is_initialized()
    main_rank = not distributed or dist.get_rank() == 0
    module = network.module if hasattr(network, "module") else network  # unwrap DistributedDataParallel
    output_dir, model_path = Path(output_dir), Path(model_path)
    if main_rank:
        output_dir.mkdir(parents=True, exist_ok=True)
        model_path.parent.mkdir(parents=True, exist_ok=True)
    network.to(device).train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=weight_decay)
    checkpoint = output_dir / "checkpoint.pt"
    history: dict[str, Any] = {"validation": [], "steps": 0, "minutes": 0.0, "best_val_loss": None}
    if checkpoint.exists():
        state = _load_state(checkpoint, device)
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = json.loads((output_dir / "history.json").read_text())
        logger.info("resumed from %s at step %d, %.1f min", checkpoint, history["steps"], history["minutes"])
    elif init_from is not None:
        load_matching_weights(module, _load_state(Path(init_from), device))
        logger.info("initialized from %s", init_from)
    budget_s = float(max_minutes) * 60.0
    elapsed0, start = float(history["minutes"]) * 60.0, time.monotonic()

    def elapsed() -> float:
        return elapsed0 + time.monotonic() - start

    def save_checkpoint() -> None:
        history["minutes"] = elapsed() / 60.0
        if not main_rank:
            return
        with atomic_file(checkpoint, overwrite=True) as tmp:
            torch.save({"model": module.state_dict(), "optimizer": optimizer.state_dict()}, tmp)
        with atomic_file(output_dir / "history.json", overwrite=True) as tmp:
            Path(tmp).write_text(json.dumps(history, indent=1))

    def validate() -> None:
        if not main_rank:
            return
        record = {"step": history["steps"], "minutes": round(elapsed() / 60.0, 2), **_validate(module, val_set, device)}
        history["validation"].append(record)
        logger.info("validation %s", json.dumps(record))
        best = history["best_val_loss"]
        if best is None or record["val_loss"] < best:
            history["best_val_loss"] = record["val_loss"]
            with atomic_file(model_path, overwrite=True) as tmp:
                torch.save(module.state_dict(), tmp)
            logger.info("new best weights -> %s", model_path)

    generator = torch.Generator().manual_seed(int(seed) + int(history["steps"]))
    sampler = torch.utils.data.DistributedSampler(train_set, shuffle=True, seed=int(seed) + int(history["steps"])) \
        if distributed else None
    loader = torch.utils.data.DataLoader(train_set, batch_size=1, shuffle=sampler is None, sampler=sampler,
                                         num_workers=num_workers, collate_fn=_first, generator=generator,
                                         persistent_workers=num_workers > 0)
    last_checkpoint = last_val = time.monotonic()
    running, n_running = 0.0, 0
    done, epochs = False, 0
    while not done:
        epochs += 1
        if sampler is not None:
            sampler.set_epoch(epochs)
        for item in loader:
            fraction = min(elapsed() / max(budget_s, 1e-9), 1.0)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate * 0.5 * (1.0 + math.cos(math.pi * fraction))
            logits = network(item["image"][None].to(device))[0]
            loss = masked_bce(logits, item["label"].to(device), item["weight"].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history["steps"] += 1
            running, n_running = running + loss.item(), n_running + 1
            if history["steps"] % log_every == 0:
                logger.info("step %d  %.1f min  loss %.4f  lr %.2e", history["steps"], elapsed() / 60.0,
                            running / n_running, optimizer.param_groups[0]["lr"])
                running, n_running = 0.0, 0
            finished = elapsed() >= budget_s or (max_steps is not None and history["steps"] >= max_steps)
            if distributed:  # every rank stops at the same step (rank 0's clock decides)
                flag = torch.tensor([float(finished)], device=device)
                dist.broadcast(flag, src=0)
                finished = bool(flag.item())
            now = time.monotonic()
            if finished or now - last_val >= val_minutes * 60.0:
                validate()
                last_val = time.monotonic()
            if finished or now - last_checkpoint >= checkpoint_minutes * 60.0:
                save_checkpoint()
                last_checkpoint = time.monotonic()
            if finished:
                done = True
                break
        if not done and max_epochs is not None and epochs >= max_epochs:
            validate()
            save_checkpoint()
            done = True
    if history["best_val_loss"] is None:
        validate()
        save_checkpoint()
    logger.info("training done: %d steps, %.1f min", history["steps"], history["minutes"])
    return history


class SequenceDetectorTrainer:
    """The bundle's ``train#trainer``: :func:`train_sequence_detector` with its arguments, run by :meth:`run`.

    Args:
        network: a :class:`~sgad_med.networks.SliceSequenceNet`.
        train_set: training items (see :func:`train_sequence_detector`).
        val_set: validation items.
        output_dir: checkpoint and history folder (a re-run resumes from it).
        model_path: where the best weights go.
        max_epochs: passes over ``train_set`` at most (the wall-clock ``max_minutes`` usually ends training first).
        **kwargs: the other arguments of :func:`train_sequence_detector`.
    """

    def __init__(self, network: nn.Module, train_set: Any, val_set: Any, output_dir: str | os.PathLike,
                 model_path: str | os.PathLike, max_epochs: int | None = None, **kwargs: Any) -> None:
        self.network, self.train_set, self.val_set = network, train_set, val_set
        self.output_dir, self.model_path, self.max_epochs = output_dir, model_path, max_epochs
        self.kwargs = kwargs
        self.history: dict[str, Any] | None = None

    def run(self) -> dict[str, Any]:
        """Train; returns the history."""
        self.history = train_sequence_detector(self.network, self.train_set, self.val_set, self.output_dir,
                                               self.model_path, max_epochs=self.max_epochs, **self.kwargs)
        return self.history


@torch.no_grad()
def collect_slice_logits(detector: Any, volumes: Iterable[Mapping[str, Any]]) -> list[dict[str, np.ndarray]]:
    """Logits of every slice of labelled scans, as the detector computes them at inference.

    Args:
        detector: a :class:`~sgad_med.detector.SliceAnomalyDetector` holding a sequence network.
        volumes: items with ``image [D, H, W]``, ``label [D]``, ``foreground [D]`` and optionally ``harmonized``
            (e.g. :class:`~sgad_med.data.slice_runs.SliceRunVolumes` items, whole scans).

    Returns:
        One dict per scan: ``logit``, ``label``, ``foreground``, ``kind`` and ``harmonized`` (bool).
    """
    out = []
    for item in volumes:
        volume01 = torch.as_tensor(item["image"]).permute(1, 2, 0)
        out.append({
            "logit": detector.sequence_logits01(volume01).numpy().astype(np.float64),
            "label": np.asarray(item["label"], dtype=np.float64),
            "foreground": np.asarray(item["foreground"], dtype=np.float64),
            "kind": np.asarray(item.get("kind", np.full(len(item["label"]), -1))),
            "harmonized": bool(item.get("harmonized", False)),
        })
    return out


def calibrate_sequence_detector(
    network: nn.Module,
    volumes: Iterable[Mapping[str, Any]],
    target_fpr: float = 0.01,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
) -> dict[str, Any]:
    """Fit the temperature and the threshold on labelled calibration scans; store them in the network.

    Args:
        network: a trained :class:`~sgad_med.networks.SliceSequenceNet` (its buffers change).
        volumes: calibration scans (whole), as for :func:`collect_slice_logits`, of anatomies neither trained
            on nor evaluated; include harmonized ones (``harmonized=True``) so the threshold covers them.
        target_fpr: the false-positive rate allowed in each group of clean slices (:func:`clean_slice_groups`,
            and all clean slices of harmonized scans).
        device: where the network runs.
        batch_size: slices encoded per forward pass.

    Returns:
        What was fitted and the calibration scans' rates at the threshold, per group.
    """
    from sgad_med.detector import SliceAnomalyDetector
    from sgad_med.engines.detection import fit_logistic, stored_threshold
    from sgad_med.evaluation.detection import auroc

    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"target_fpr must lie in (0, 1), got {target_fpr}")
    detector = SliceAnomalyDetector(network, device=device, batch_size=batch_size)
    scans = collect_slice_logits(detector, volumes)
    logit = np.concatenate([s["logit"] for s in scans])
    label = np.concatenate([s["label"] for s in scans])
    if label.sum() < 1 or (label < 0.5).sum() < 2:
        raise ValueError("calibration needs damaged and clean slices (at least 1 damaged, 2 clean)")
    inverse_temperature, _ = fit_logistic(logit, label, scale=True, bias=False)
    temperature = 1.0 / max(inverse_temperature, 1e-3)
    probability = [1.0 / (1.0 + np.exp(-s["logit"] / temperature)) for s in scans]
    groups: dict[str, list[np.ndarray]] = {"isolated": [], "adjacent": [], "end": [], "harmonized": []}
    for scan, p in zip(scans, probability):
        if scan["harmonized"]:
            groups["harmonized"].append(p[(scan["label"] < 0.5) & (scan["foreground"] > 0)])
            continue
        for name, mask in clean_slice_groups(scan["label"], scan["foreground"]).items():
            groups[name].append(p[mask])
    pooled = {name: np.concatenate(g) if g else np.zeros(0) for name, g in groups.items()}
    thresholds = {name: stored_threshold(v, target_fpr) for name, v in pooled.items() if v.size}
    threshold = max(thresholds.values())
    network.set_calibration(temperature, threshold)
    all_p = np.concatenate(probability)
    positive = label > 0.5
    return {
        "n_scans": len(scans),
        "n_slices": int(label.size),
        "n_damaged": int(positive.sum()),
        "target_fpr": float(target_fpr),
        "temperature": float(temperature),
        "threshold": float(threshold),
        "group_thresholds": thresholds,
        "fpr_at_threshold": {name: float((v >= threshold).mean()) for name, v in pooled.items() if v.size},
        "n_clean": {name: int(v.size) for name, v in pooled.items()},
        "sensitivity_at_threshold": float((all_p[positive] >= threshold).mean()),
        "auroc": auroc(all_p, positive),
    }


def calibration_items(dataset: Any, harmonized: Sequence[bool] | None = None) -> list[dict[str, Any]]:
    """Every item of a fixed :class:`~sgad_med.data.slice_runs.SliceRunVolumes`, marked harmonized or not."""
    items = []
    for i in range(len(dataset)):
        item = dict(dataset[i])
        item["harmonized"] = bool(dataset.will_harmonize(i)) if harmonized is None else bool(harmonized[i])
        items.append(item)
    return items


def calibrate_sequence_bundle_weights(
    network: nn.Module,
    dataset: Any,
    weights: str | os.PathLike,
    target_fpr: float = 0.01,
    device: str | torch.device = "cpu",
    report: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Load the best weights, calibrate them on a fixed calibration dataset, save weights + calibration back.

    Args:
        network: the bundle's network (its weights are replaced by those in ``weights``).
        dataset: a :class:`~sgad_med.data.slice_runs.SliceRunVolumes` with ``redraw=False`` and whole scans.
        weights: the checkpoint to calibrate and overwrite (``models/model.pt``).
        target_fpr: see :func:`calibrate_sequence_detector`.
        device: where the network runs.
        report: also write the summary as JSON here.

    Returns:
        The summary of :func:`calibrate_sequence_detector`.
    """
    weights = Path(weights)
    module = network.module if hasattr(network, "module") else network  # unwrap DistributedDataParallel
    state = torch.load(weights, map_location=device, weights_only=True)
    module.load_state_dict(state)
    summary = calibrate_sequence_detector(module, calibration_items(dataset), target_fpr=target_fpr, device=device)
    save_calibrated(module, weights, summary, report)
    return summary
