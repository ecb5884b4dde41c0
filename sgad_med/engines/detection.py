"""Detector training pieces: calibration of the trained network (temperature, novelty, threshold).

Training itself is MONAI's :class:`~monai.engines.SupervisedTrainer` with binary cross-entropy on the slice label
(our L_det), configured in the bundle's ``train.json``. After training, :func:`calibrate_detector` turns the
network's two kinds of evidence into one probability and sets the decision threshold, all from *validation*
slices (training anatomies the network never trained on, never the evaluation set):

1. novelty: mean and shrunk inverse covariance of the pooled features of the clean validation slices, so the
   Mahalanobis distance measures how unlike a clean slice a slice looks;
2. temperature scaling of the classifier logit (Guo et al. 2017): the temperature minimising the binary NLL;
3. Platt scaling of the novelty distance on its own (``scale * d + offset``), so it speaks in logits too;
4. threshold: the smallest value above which at most ``target_fpr`` of the clean validation slices fall.

Then :func:`calibrate_scan_reference` scores whole clean validation *scans*, as the detector does at inference:

5. scan reference: the median over those scans of each scan's median (classifier, novelty) evidence; a scan
   above it is judged against its own median (:meth:`~sgad_med.networks.SliceAnomalyNet.scan_shift`);
6. neighbour evidence: a Platt map of the logarithm of the neighbour texture statistics' score
   (:func:`~sgad_med.transforms.slice_statistics.texture_slice_scores`), fitted on those scans' clean head
   slices against damaged copies of them;
7. the threshold again, now for ``target_fpr`` on the head slices of those scans, scored exactly as
   :meth:`~sgad_med.detector.SliceAnomalyDetector.score01` scores them.

The result is stored in the network's buffers (:meth:`~sgad_med.networks.SliceAnomalyNet.set_calibration`) and
saved with its weights by :func:`calibrate_bundle_weights`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sgad_med.evaluation.detection import auroc, harmonized01, threshold_at_fpr
from sgad_med.io.atomic import atomic_file

__all__ = ["collect_evidence", "fit_logistic", "calibrate_detector", "neighbour_scores_for_calibration",
           "calibrate_scan_reference", "calibrate_bundle_weights"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def collect_evidence(
    network: nn.Module, loader: Iterable[dict[str, torch.Tensor]], device: str | torch.device = "cpu"
) -> dict[str, np.ndarray]:
    """Pooled features, logits and labels of every slice a loader yields (network in eval mode).

    Returns:
        ``features [N, F]``, ``logit [N]``, ``label [N]``, ``kind [N]`` (``-1`` when the loader gives no kind).
    """
    network.eval()
    features, logits, labels, kinds = [], [], [], []
    for batch in loader:
        feats = network.embed(batch["image"].to(device))
        features.append(feats.float().cpu())
        logits.append(network.densenet.class_layers.out(feats)[:, 0].float().cpu())
        labels.append(batch["label"].reshape(-1).float())
        kinds.append(batch.get("kind", torch.full((len(feats),), -1)).reshape(-1))
    return {
        "features": torch.cat(features).numpy(),
        "logit": torch.cat(logits).numpy(),
        "label": torch.cat(labels).numpy(),
        "kind": torch.cat(kinds).numpy(),
    }


def fit_logistic(x: np.ndarray, y: np.ndarray, scale: bool = True, bias: bool = True,
                 balanced: bool = False) -> tuple[float, float]:
    """Fit ``p = sigmoid(a * x + b)`` to binary labels by minimising the NLL (L-BFGS on two parameters).

    Args:
        x: scores ``[N]``.
        y: labels ``[N]`` in {0, 1}.
        scale: fit ``a`` (else 1).
        bias: fit ``b`` (else 0).
        balanced: weight the positives by ``n_negative / n_positive``, as if both classes were equally common
            (so that maps fitted on sets of different prevalence speak the same logits).

    Returns:
        ``(a, b)``.
    """
    xt, yt = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    pos_weight = None
    if balanced:
        n_positive = float(yt.sum())
        pos_weight = torch.tensor((yt.numel() - n_positive) / max(n_positive, 1.0), dtype=torch.float64)
    a = torch.tensor(1.0, dtype=torch.float64, requires_grad=scale)
    b = torch.tensor(0.0, dtype=torch.float64, requires_grad=bias)
    params = [p for p in (a, b) if p.requires_grad]
    optimizer = torch.optim.LBFGS(params, lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(a * xt + b, yt, pos_weight=pos_weight)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(a.detach()), float(b.detach())



def stored_threshold(clean_probabilities: np.ndarray, target_fpr: float) -> float:
    """The lowest threshold flagging at most ``target_fpr`` of clean probabilities, as the float32 buffer stores it.

    :func:`~sgad_med.evaluation.detection.threshold_at_fpr`, kept inside (0, 1] and rounded *up* to float32 where
    rounding down would land on a clean score and flag it.
    """
    threshold = np.float32(min(max(threshold_at_fpr(clean_probabilities, target_fpr), 1e-6), 1.0))
    if (np.asarray(clean_probabilities) >= threshold).mean() > target_fpr:
        threshold = np.nextafter(threshold, np.float32(np.inf))
    return float(threshold)


@torch.no_grad()
def calibrate_detector(
    network: nn.Module,
    loader: Iterable[dict[str, torch.Tensor]],
    target_fpr: float = 0.01,
    shrinkage: float = 0.1,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Fit the novelty model, temperature, novelty Platt map and threshold on validation slices; store them.

    Args:
        network: a trained :class:`~sgad_med.networks.SliceAnomalyNet` (changed in place: its buffers).
        loader: validation batches with ``image`` and ``label`` (clean and corrupted slices).
        target_fpr: fraction of clean validation slices allowed above the threshold.
        shrinkage: covariance shrinkage towards a scaled identity (features outnumber clean slices otherwise).
        device: where the network runs.

    Returns:
        What was fitted and how the calibrated score does on the same validation slices.
    """
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"target_fpr must lie in (0, 1), got {target_fpr}")
    evidence = collect_evidence(network, loader, device)
    features, logit, label = evidence["features"], evidence["logit"], evidence["label"]
    clean = label < 0.5
    if clean.sum() < 2 or (~clean).sum() < 1:
        raise ValueError("calibration needs clean and corrupted validation slices (at least 2 clean, 1 corrupted)")

    clean_features = features[clean].astype(np.float64)
    mean = clean_features.mean(axis=0)
    covariance = np.cov(clean_features, rowvar=False).reshape(len(mean), len(mean))
    target = np.trace(covariance) / len(mean) * np.eye(len(mean))
    precision = np.linalg.pinv((1.0 - shrinkage) * covariance + shrinkage * target)

    device = torch.device(device)
    as_buffer = {"device": device, "dtype": network.novelty_mean.dtype}
    network.set_calibration(torch.as_tensor(mean, **as_buffer), torch.as_tensor(precision, **as_buffer),
                            1.0, 0.0, -30.0, 0.5)
    novelty = network.novelty(torch.as_tensor(features, **as_buffer)).cpu().numpy()

    inverse_temperature, _ = fit_logistic(logit, label, scale=True, bias=False)
    temperature = 1.0 / max(inverse_temperature, 1e-3)  # a negative fit would mean a broken classifier
    novelty_scale, novelty_offset = fit_logistic(novelty, label)
    novelty_scale = max(novelty_scale, 0.0)  # a larger distance is never evidence of a clean slice

    network.set_calibration(torch.as_tensor(mean, **as_buffer), torch.as_tensor(precision, **as_buffer),
                            temperature, novelty_scale, novelty_offset, 0.5)
    probability = network.combine(torch.as_tensor(logit, device=device), torch.as_tensor(novelty, device=device))
    probability = probability.cpu().numpy()
    threshold = stored_threshold(probability[clean], target_fpr)
    network.set_calibration(torch.as_tensor(mean, **as_buffer), torch.as_tensor(precision, **as_buffer),
                            temperature, novelty_scale, novelty_offset, threshold)
    flagged = probability >= threshold
    return {
        "n_clean": int(clean.sum()),
        "n_corrupted": int((~clean).sum()),
        "target_fpr": float(target_fpr),
        "temperature": float(temperature),
        "novelty_scale": float(novelty_scale),
        "novelty_offset": float(novelty_offset),
        "threshold": threshold,
        "validation": {
            "auroc_classifier": auroc(logit, label),
            "auroc_novelty": auroc(novelty, label),
            "auroc_calibrated": auroc(probability, label),
            "fpr_at_threshold": float(flagged[clean].mean()),
            "sensitivity_at_threshold": float(flagged[~clean].mean()),
        },
    }


def neighbour_scores_for_calibration(
    volumes: list[tuple[np.ndarray, np.ndarray]],
    corrupted_per_volume: int = 4,
    seed: int = 0,
    clean_scores: Sequence[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour texture scores of clean head slices and of damaged ones, to fit the neighbour Platt map.

    The damaged slices come from copies of the volumes with ``corrupted_per_volume`` head slices (3 or more
    apart) corrupted, one artifact kind per volume in turn over every kind, at a severity drawn in [0.25, 0.75].

    Args:
        volumes: ``(volume01 [H, W, D], head [D])`` pairs, clean.
        corrupted_per_volume: damaged slices per copy.
        seed: seed of the slices, severities and artifacts.
        clean_scores: the volumes' scores ``[D]`` if the caller has them already (else computed here).

    Returns:
        ``(scores [N], labels [N])``: every clean head slice (label 0) and every damaged slice (label 1).
    """
    from sgad_med.evaluation.detection import corrupted_slices_for
    from sgad_med.transforms.artifacts import ARTIFACT_KINDS, apply_slice_artifact
    from sgad_med.transforms.slice_statistics import texture_slice_scores

    scores, labels = [], []
    for i, (volume, head) in enumerate(volumes):
        clean = (texture_slice_scores(volume) if clean_scores is None else clean_scores[i])[head]
        rng = np.random.default_rng([seed, i])
        chosen = corrupted_slices_for(head, corrupted_per_volume, 3, [seed, i])
        kind = ARTIFACT_KINDS[i % len(ARTIFACT_KINDS)]
        corrupted, _ = apply_slice_artifact(volume[None], kind, chosen, float(rng.uniform(0.25, 0.75)),
                                            int(rng.integers(2**31)))
        damaged = texture_slice_scores(np.asarray(corrupted)[0])[chosen]
        scores += [clean, damaged]
        labels += [np.zeros(clean.size), np.ones(damaged.size)]
    return np.concatenate(scores), np.concatenate(labels)


@torch.no_grad()
def calibrate_scan_reference(
    network: nn.Module,
    volumes: Iterable[Mapping[str, np.ndarray]],
    target_fpr: float = 0.01,
    device: str | torch.device = "cpu",
    harmonizer: Any = None,
    neighbour_evidence: bool = False,
    neighbour_share: float = 0.25,
    neighbour_gate_quantile: float = 0.99,
) -> dict[str, Any]:
    """Fit the scan reference, the neighbour evidence and the threshold on whole clean validation scans.

    Each scan's shift comes from its slices with anatomy (:func:`~sgad_med.transforms.slices.foreground_slices`),
    as at inference. The neighbour evidence's slope is a Platt fit of the neighbour statistics of the scans' clean
    head slices against damaged copies of the scans (:func:`neighbour_scores_for_calibration`), weighted as if
    both were equally common; its offset gives it ``neighbour_share`` of the false-positive budget on the scans as
    given (harmonized volumes are scored without it, as by the detector); it counts only from the
    ``neighbour_gate_quantile`` of the clean head slices' ``log(1 + z)`` on. The
    threshold is set last, on the head slices (the truth; the slices the evaluation counts too) of all scans,
    scored exactly as :meth:`~sgad_med.detector.SliceAnomalyDetector.score01` scores them. Slices outside the
    head are left out of the threshold: there the harmonizer may have painted haze into the air, which the
    detector rightly flags.

    Args:
        network: a :class:`~sgad_med.networks.SliceAnomalyNet` already through :func:`calibrate_detector`
            (changed in place: ``scan_reference``, the neighbour map and ``threshold``).
        volumes: clean validation volumes as dicts with ``volume`` (normalized ``[H, W, D]`` in [0, 1]) and
            ``head`` (bool ``[D]``), e.g. :func:`sgad_med.evaluation.detection.validation_volumes` (training
            styles, anatomies the network never trained on).
        target_fpr: fraction of their head slices allowed at or above the threshold.
        device: where the network runs.
        harmonizer: when given (an object with ``harmonize01``), every volume is also scored after harmonization,
            as the pipeline scores harmonized slices with the same threshold.
        neighbour_evidence: fit the neighbour evidence (else it stays off). The bundle's ``train.json`` turns it
            on: on validation scans it lifted Gibbs AUROC in training styles from 0.978 to 1.000 at about the same
            false-positive rate (see the detection bundle's docs).
        neighbour_share: fraction of ``target_fpr`` of clean head slices whose neighbour statistics alone would
            reach the threshold set without them (0.25 in the bundle, chosen over 0.5 on validation scans).
        neighbour_gate_quantile: quantile of the clean head slices' neighbour statistics below which they never
            count (0.99 in the bundle, chosen over 0.95 and 0.995 on validation scans; 0: no gate).

    Returns:
        The reference, the neighbour map, the threshold and the false-positive rate on the head slices with
        everything, without the shift and without the neighbour evidence.
    """
    from sgad_med.detector import SliceAnomalyDetector
    from sgad_med.networks.detector import NEIGHBOUR_MAP_OFF
    from sgad_med.transforms.slice_statistics import texture_slice_scores
    from sgad_med.transforms.slices import foreground_slices

    if not bool(network.calibrated):
        raise ValueError("calibrate_scan_reference needs a network calibrated by calibrate_detector first")
    detector = SliceAnomalyDetector(network, device=device)
    inputs = []  # the clean volumes as given: (volume, head), the source of the neighbour map's damaged copies
    input_scores = []  # their neighbour statistics' scores, when the neighbour evidence is fitted
    scans = []  # per scored volume: (logit, novelty, neighbour scores) of every slice, slices with anatomy, head
    for item in volumes:
        versions = [np.asarray(item["volume"], dtype=np.float32)]
        head = np.asarray(item["head"], dtype=bool)
        inputs.append((versions[0], head))
        if harmonizer is not None:
            versions.append(harmonized01(harmonizer, versions[0]))
        for v, version in enumerate(versions):
            logit, novelty = (e.to(detector.device) for e in detector.evidence01(version))
            neighbour = None  # as SliceAnomalyDetector.score01: never on harmonized volumes
            if neighbour_evidence and v == 0:
                input_scores.append(texture_slice_scores(version))
                neighbour = torch.as_tensor(input_scores[-1], dtype=logit.dtype, device=detector.device)
            scans.append((logit, novelty, neighbour, torch.as_tensor(foreground_slices(version)),
                          torch.as_tensor(head)))
    if len(scans) < 2:
        raise ValueError("calibrate_scan_reference needs at least two clean validation volumes")
    medians = torch.stack([
        network.calibrated_evidence(logit[anatomy], novelty[anatomy]).median(dim=0).values
        for logit, novelty, _, anatomy, _ in scans
    ])
    reference = medians.median(dim=0).values
    network.scan_reference.copy_(reference.to(network.scan_reference))

    def head_probabilities(relative: bool = True, with_neighbour: bool = True) -> np.ndarray:
        out = []
        for logit, novelty, neighbour, anatomy, head in scans:
            shift = network.scan_shift(logit[anatomy], novelty[anatomy]) if relative else None
            out.append(network.combine(logit[head], novelty[head], shift,
                                       neighbour[head] if with_neighbour and neighbour is not None else None))
        return torch.cat(out).cpu().numpy()

    neighbour_map, gate = NEIGHBOUR_MAP_OFF, 0.0
    if neighbour_evidence:
        # The Platt slope says how fast the evidence grows with log(1 + z); the offset puts the point where it
        # meets the threshold set without it at the clean head slices' (1 - neighbour_share * target_fpr)
        # quantile: the statistics add what the network misses, within a share of the false-positive budget
        # (their clean tail is heavier than the network's: a Platt offset alone raised the FPR on validation).
        # Only scans as they arrive count: harmonized volumes are scored without it.
        scores, labels = neighbour_scores_for_calibration(inputs, clean_scores=input_scores)
        scale, _ = fit_logistic(np.log1p(scores), labels, balanced=True)  # as neighbour_evidence maps them
        if scale > 0.0:  # a larger |z| is never evidence of a clean slice
            network.neighbour_scale.fill_(0.0)
            without = stored_threshold(head_probabilities(), target_fpr)
            clean_log_z = np.log1p(torch.cat([z[head] for _, _, z, _, head in scans if z is not None]).cpu().numpy())
            meeting = float(np.quantile(clean_log_z, 1.0 - neighbour_share * target_fpr))
            neighbour_map = (scale, float(np.log(without / (1.0 - without))) - scale * meeting)
            # below the gate, ordinary texture variation would lift the bulk of clean slices above the damaged
            # slices the network scores weakly (the ranking, not the threshold, suffers)
            gate = float(np.quantile(clean_log_z, neighbour_gate_quantile)) if neighbour_gate_quantile else 0.0
    network.neighbour_scale.fill_(neighbour_map[0])
    network.neighbour_offset.fill_(neighbour_map[1])
    network.neighbour_gate.fill_(gate)

    clean = head_probabilities()
    threshold = stored_threshold(clean, target_fpr)
    network.threshold.fill_(threshold)
    return {
        "n_scans": len(scans),
        "n_head_slices": int(clean.size),
        "scan_reference": {"classifier": float(reference[0]), "novelty": float(reference[1])},
        "neighbour_map": {"scale": neighbour_map[0], "offset": neighbour_map[1], "gate": gate},
        "threshold": threshold,
        "fpr_at_threshold": float((clean >= threshold).mean()),
        "fpr_at_threshold_without_shift": float((head_probabilities(relative=False) >= threshold).mean()),
        "fpr_at_threshold_without_neighbour": float((head_probabilities(with_neighbour=False) >= threshold).mean()),
    }


def save_calibrated(module: nn.Module, weights: str | os.PathLike, summary: dict, report: str | os.PathLike | None
                    ) -> None:
    """Write calibrated weights over ``weights`` and the calibration summary to ``report``, each atomically."""
    with atomic_file(Path(weights), overwrite=True) as tmp:
        torch.save(module.state_dict(), tmp)
    if report is not None:
        with atomic_file(Path(report), overwrite=True) as tmp:
            Path(tmp).write_text(json.dumps(summary, indent=2) + "\n")
    logger.info("calibrated %s: %s", weights, json.dumps(summary))


def calibrate_bundle_weights(
    network: nn.Module,
    loader: Iterable[dict[str, torch.Tensor]],
    weights: str | os.PathLike,
    target_fpr: float = 0.01,
    device: str | torch.device = "cpu",
    report: str | os.PathLike | None = None,
    volumes: Iterable[Mapping[str, np.ndarray]] | None = None,
    harmonizer: Any = None,
    neighbour_evidence: bool = False,
    neighbour_share: float = 0.25,
    neighbour_gate_quantile: float = 0.99,
) -> dict[str, Any]:
    """Load the validation-best weights, calibrate them, and save weights + calibration back (atomically).

    The bundle's ``train.json`` runs this after training: the saved ``models/model.pt`` then holds everything
    :class:`~sgad_med.detector.SliceAnomalyDetector` needs.

    Args:
        network: the bundle's network (its weights are replaced by those in ``weights``).
        loader: validation batches.
        weights: the checkpoint to calibrate and overwrite (``models/model.pt``).
        target_fpr: false-positive rate on clean validation slices at the stored threshold.
        device: where the network runs.
        report: also write the calibration summary as JSON here.
        volumes: clean validation volumes for :func:`calibrate_scan_reference` (``None``: no scan reference, and
            the threshold stays the one set on the loader's slices).
        harmonizer: passed on to :func:`calibrate_scan_reference`.
        neighbour_evidence: passed on to :func:`calibrate_scan_reference`.
        neighbour_share: passed on to :func:`calibrate_scan_reference`.
        neighbour_gate_quantile: passed on to :func:`calibrate_scan_reference`.

    Returns:
        The summary of :func:`calibrate_detector`, with :func:`calibrate_scan_reference`'s under ``"scans"`` (its
        threshold replaces the top-level one).
    """
    weights = Path(weights)
    module = network.module if hasattr(network, "module") else network  # unwrap DistributedDataParallel
    state = torch.load(weights, map_location=device, weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    module.load_state_dict(state)
    summary = calibrate_detector(module, loader, target_fpr=target_fpr, device=device)
    if volumes is not None:
        summary["scans"] = calibrate_scan_reference(module, volumes, target_fpr=target_fpr, device=device,
                                                    harmonizer=harmonizer, neighbour_evidence=neighbour_evidence,
                                                    neighbour_share=neighbour_share,
                                                    neighbour_gate_quantile=neighbour_gate_quantile)
        summary["threshold"] = summary["scans"]["threshold"]
    save_calibrated(module, weights, summary, report)
    return summary
