"""Compare ways of turning the detector's evidence into scores, on *validation* scans (never the evaluation set).

Variants: ``absolute`` (every slice against clean calibration slices), ``relative`` (the scan reference shifts
both kinds of evidence) and ``relative_classifier`` (it shifts the classifier's only); with ``--neighbour-weights``
(the same weights calibrated with the neighbour evidence, e.g. by ``calibrate#run`` into another ``--ckpt_dir``)
also ``relative_neighbour`` (``relative`` plus the neighbour evidence, with that file's calibration).
Each gets its own threshold for a 1 % false-positive rate on the head slices of clean calibration scans
(anatomies 920-959, training styles, not harmonized); then the detection evaluation's protocol runs on scans
of anatomies 960-967 (used by no training, validation or calibration step) in training styles and in
*validation* styles (grey/white-matter contrast just below every training style, above every held-out one) and,
with ``--splits``, in *low-contrast validation* styles (contrast below every held-out one).

    python bundles/slice_anomaly_detection/scripts/compare_scan_reference.py [--anatomies 8] [--severity 0.5] \
        [--splits train validation validation_low] [--neighbour-weights MODEL.pt] [--weights MODEL.pt]

``--weights`` scores another network of the bundle's architecture (e.g. a new training run's calibrated
``model.pt``) instead of the bundle's; with the neighbour evidence in its calibration, pass the same file as
``--neighbour-weights`` too.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
from pathlib import Path

import numpy as np
import torch

from sgad_med.detector import SliceAnomalyDetector
from sgad_med.evaluation.detection import evaluate_detection, threshold_at_fpr, validation_volumes
from sgad_med.transforms.artifacts import ARTIFACT_KINDS
from sgad_med.transforms.slice_statistics import texture_slice_scores
from sgad_med.transforms.slices import foreground_slices

BUNDLE = Path(__file__).resolve().parents[1]
VARIANTS = ("absolute", "relative", "relative_classifier")


class Variant:
    """``score01`` of one variant; the network's evidence per volume is computed once and shared."""

    cache: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def __init__(self, detector: SliceAnomalyDetector, name: str, network: torch.nn.Module | None = None) -> None:
        self.detector, self.name = detector, name
        self.network = detector.network if network is None else network  # whose calibration combines

    def score01(self, volume01: np.ndarray) -> np.ndarray:
        volume01 = np.ascontiguousarray(volume01, dtype=np.float32)
        key = hashlib.sha1(volume01.tobytes()).hexdigest()
        if key not in self.cache:
            logit, novelty = self.detector.evidence01(volume01)
            self.cache.clear()  # one volume at a time: evaluate_detection scores each with every variant in turn
            self.cache[key] = (logit, novelty, torch.as_tensor(foreground_slices(volume01)), None)
        logit, novelty, anatomy, neighbour = self.cache[key]
        if self.name == "relative_neighbour" and neighbour is None:  # only this variant needs the statistics
            neighbour = torch.as_tensor(texture_slice_scores(volume01), dtype=torch.float32)
            self.cache[key] = (logit, novelty, anatomy, neighbour)
        net = self.network
        shift = None
        if self.name != "absolute":
            shift = net.scan_shift(logit[anatomy], novelty[anatomy])
            if self.name == "relative_classifier":
                shift = shift * torch.tensor([1.0, 0.0])
        return net.combine(logit, novelty, shift, neighbour if self.name == "relative_neighbour" else None).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anatomies", type=int, default=8)
    parser.add_argument("--severity", type=float, default=0.5)
    parser.add_argument("--splits", nargs="+", default=["train", "validation"],
                        choices=["train", "validation", "validation_low"], help="style splits to evaluate on")
    parser.add_argument("--neighbour-weights", type=Path, default=None,
                        help="the same weights calibrated with the neighbour evidence")
    parser.add_argument("--weights", type=Path, default=None,
                        help="the detector's weights (default: the bundle's models/model.pt)")
    args = parser.parse_args()
    detector = SliceAnomalyDetector.from_bundle(BUNDLE, device="cpu")
    if args.weights is not None:
        detector.network.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    variants = {name: Variant(detector, name) for name in VARIANTS}
    if args.neighbour_weights is not None:
        network = copy.deepcopy(detector.network)
        network.load_state_dict(torch.load(args.neighbour_weights, map_location="cpu", weights_only=True))
        if not network.uses_neighbour_evidence:
            parser.error(f"{args.neighbour_weights} carries no neighbour-evidence calibration")
        if any(not torch.equal(a, b) for a, b in zip(network.parameters(), detector.network.parameters())):
            parser.error(f"{args.neighbour_weights} holds other network weights than the detector's")
        variants["relative_neighbour"] = Variant(detector, "relative_neighbour", network)
    thresholds = {}
    calibration = validation_volumes(range(920, 960), seed=2)
    for name, variant in variants.items():
        clean = np.concatenate([variant.score01(v["volume"])[v["head"]] for v in calibration])
        thresholds[name] = threshold_at_fpr(clean, 0.01)
    for split in args.splits:
        cases = validation_volumes(range(960, 960 + args.anatomies), seed=3, split=split)
        results = evaluate_detection(variants, thresholds, cases, list(ARTIFACT_KINDS), severities=[args.severity],
                                     progress=True)
        print_table(results, f"anatomies 960-{959 + args.anatomies} in {split} styles", thresholds, list(variants))


def print_table(results: dict, title: str, thresholds: dict[str, float], names: list[str]) -> None:
    key = results["severities"][0]
    print(f"\n{title}, severity {key}")
    print(f"{'artifact kind':<20}" + "".join(f"{name:>22}" for name in names))
    for kind in ARTIFACT_KINDS:
        row = results["per_kind"][kind][key]
        print(f"{kind:<20}" + "".join(f"{row[name]['auroc']:>22.3f}" for name in names))
    print(f"{'mean AUROC':<20}" + "".join(f"{results['mean'][key][name]['auroc']:>22.3f}" for name in names))
    print(f"{'min AUROC':<20}" + "".join(
        f"{min(results['per_kind'][k][key][name]['auroc'] for k in ARTIFACT_KINDS):>22.3f}" for name in names))
    print(f"{'FPR clean':<20}" + "".join(f"{results['clean'][name]['fpr']:>22.2%}" for name in names))
    print(f"{'clean head slices':<20}{results['clean']['n_slices']:>22}")
    print(f"{'threshold':<20}" + "".join(f"{thresholds[name]:>22.4f}" for name in names))


if __name__ == "__main__":
    main()
