"""Sweep the neighbour evidence's gate on *validation* scans (never the evaluation set): how it chose version 0.3.1.

The detector's neighbour evidence ``a · log(1 + z) + b`` counts only where ``log(1 + z)`` reaches a gate, a
quantile of the clean calibration head slices' ``log(1 + z)`` (see ``SliceAnomalyNet.neighbour_gate``). This
script scores every slice once per volume (the network's logit and novelty, the scan shift, the texture
statistics' z), then combines them with ``SliceAnomalyNet.combine`` for each gate, so that several gates cost one
pass over the data. The protocol is
``compare_scan_reference.py``'s: thresholds at 1 % FPR on the head slices of clean calibration scans (anatomies
920-959, training styles), then the detection evaluation's protocol on anatomies 960-975 in training,
*validation* and *low-contrast validation* styles at severity 0.5. The map ``(a, b)`` is the bundle's.

    python bundles/slice_anomaly_detection/scripts/sweep_neighbour_gate.py [--quantiles 0.95 0.99 0.995] \
        [--anatomies 16]

Prints, per variant (network evidence only, no gate, each gate), the lowest AUROC over the artifact kinds, the
Gibbs AUROC and the clean false-positive rate in each split. About 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sgad_med.detector import SliceAnomalyDetector
from sgad_med.evaluation.detection import (
    _artifact_seed,
    auroc,
    corrupted_slices_for,
    threshold_at_fpr,
    validation_volumes,
)
from sgad_med.transforms.artifacts import ARTIFACT_KINDS, apply_slice_artifact

BUNDLE = Path(__file__).resolve().parents[1]
SPLITS = ("train", "validation", "validation_low")


def evidence(detector: SliceAnomalyDetector, volume01: np.ndarray) -> tuple[torch.Tensor, ...]:
    """``(logit, novelty, scan shift, z)`` of every slice: what ``SliceAnomalyNet.combine`` needs, computed once."""
    return tuple(part.cpu() for part in detector.slice_evidence01(volume01))


def scored_split(detector: SliceAnomalyDetector, split: str, anatomies: int, severity: float) -> list[dict]:
    """Per volume: evidence, head slices and the damaged slices (``kind`` ``"clean"`` for the clean volume)."""
    rows = []
    cases = validation_volumes(range(960, 960 + anatomies), seed=3, split=split)
    for c, case in enumerate(tqdm(cases, desc=f"{split} styles", unit="case")):
        volume, head = np.asarray(case["volume"], dtype=np.float32), np.asarray(case["head"], dtype=bool)
        rows.append({"kind": "clean", "head": head, "chosen": None, "evidence": evidence(detector, volume)})
        for k, kind in enumerate(ARTIFACT_KINDS):  # the same draw as evaluate_detection (seed 0, one severity)
            chosen = corrupted_slices_for(head, 4, 3, [0, c, k])
            damaged, _ = apply_slice_artifact(volume[None], kind, chosen, severity, _artifact_seed(0, c, k, 0))
            rows.append({"kind": kind, "head": head, "chosen": chosen,
                         "evidence": evidence(detector, np.asarray(damaged)[0])})
    return rows


def probability(net: torch.nn.Module, row_evidence: tuple[torch.Tensor, ...], gate: float | None) -> np.ndarray:
    """The detector's probabilities, the neighbour evidence gated at ``log(1 + z) >= gate`` (``None``: left out)."""
    logit, novelty, shift, z = row_evidence
    if gate is not None:
        net.neighbour_gate.fill_(gate)
    return net.combine(logit, novelty, shift, None if gate is None else z).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantiles", type=float, nargs="+", default=[0.95, 0.99, 0.995])
    parser.add_argument("--anatomies", type=int, default=16)
    parser.add_argument("--severity", type=float, default=0.5)
    args = parser.parse_args()
    detector = SliceAnomalyDetector.from_bundle(BUNDLE, device="cpu")
    net = detector.network
    if not net.uses_neighbour_evidence:
        parser.error("the bundle's weights carry no neighbour-evidence calibration")
    scale, offset = float(net.neighbour_scale), float(net.neighbour_offset)

    calibration = [(evidence(detector, np.asarray(v["volume"], dtype=np.float32)), v["head"])
                   for v in tqdm(validation_volumes(range(920, 960), seed=2), desc="calibration scans", unit="scan")]
    clean_log_z = np.log1p(np.concatenate([e[3].numpy()[head] for e, head in calibration]))
    variants: dict[str, float | None] = {"network evidence only": None, "no gate": 0.0}
    for q in args.quantiles:
        variants[f"gate q={q:g}"] = float(np.quantile(clean_log_z, q))
    splits = {split: scored_split(detector, split, args.anatomies, args.severity) for split in SPLITS}

    print(f"\nneighbour map {scale:.3f} log(1 + z) {offset:+.3f}; anatomies 960-{959 + args.anatomies}, "
          f"severity {args.severity:g}; thresholds at 1 % FPR on calibration scans 920-959")
    header = "".join(f"{split + ': min (kind) gibbs FPR':>44}" for split in SPLITS)
    print(f"{'variant':<22}{'gate z':>8}{'threshold':>10}" + header)
    for name, gate in variants.items():
        threshold = threshold_at_fpr(
            np.concatenate([probability(net, e, gate)[head] for e, head in calibration]), 0.01)
        cells = []
        for rows in splits.values():
            clean = np.concatenate([probability(net, r["evidence"], gate)[r["head"]]
                                    for r in rows if r["kind"] == "clean"])
            per_kind = {}
            for kind in ARTIFACT_KINDS:
                positive = np.concatenate([probability(net, r["evidence"], gate)[r["chosen"]]
                                           for r in rows if r["kind"] == kind])
                labels = np.r_[np.ones(positive.size, bool), np.zeros(clean.size, bool)]
                per_kind[kind] = auroc(np.r_[positive, clean], labels)
            worst = min(per_kind, key=per_kind.get)
            cells.append(f"{per_kind[worst]:.4f} ({worst[:13]}) {per_kind['gibbs']:.4f} "
                         f"{np.mean(clean >= threshold):.2%}")
        gate_z = "-" if not gate else f"{np.expm1(gate):.2f}"
        print(f"{name:<22}{gate_z:>8}{threshold:>10.4f}" + "".join(f"{c:>44}" for c in cells))


if __name__ == "__main__":
    main()
