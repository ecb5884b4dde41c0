"""Compare harmonization weights on validation data, with the evaluation's protocol; never the evaluation set.

The protocol of ``sgad-med evaluate harmonizer`` (metrics in the head mask, and the MAE on scans already in the
reference style) on training-pool anatomies that no training run uses (960 onwards) in ``--split`` styles
(``validation``: grey/white-matter contrast just below every training style; ``validation_low``: below every
held-out one; ``train``). Histogram matching and Nyúl-Udupa are scored alongside, as in the evaluation.

    python bundles/style_harmonization/scripts/validate.py bundles/style_harmonization/models/model.pt \\
        other/model.pt [--split validation] [--anatomies 8]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from sgad_med.evaluation.harmonization import (
    baseline_methods,
    evaluate_harmonization,
    format_table,
    harmonization_cases,
    reference_volumes,
)
from sgad_med.harmonizer import Harmonizer

BUNDLE = Path(__file__).resolve().parents[1]
FIRST_ANATOMY = 960  # training pool, used by no training, validation or calibration step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="+", type=Path, help="generator weights files (models/model.pt)")
    parser.add_argument("--split", choices=("validation", "validation_low", "train"), default="validation")
    parser.add_argument("--anatomies", type=int, default=8)
    args = parser.parse_args()

    config = ConfigParser()
    config.read_config(str(BUNDLE / "configs" / "evaluate.json"))
    config["bundle_root"] = str(BUNDLE)
    spacing, seed, mni_dir = config.get_parsed_content("spacing"), config["seed"], config.get_parsed_content(
        "dataset_dir")
    cases = harmonization_cases(range(FIRST_ANATOMY, FIRST_ANATOMY + args.anatomies), args.split,
                                styles_per_anatomy=config["styles_per_anatomy"], spacing=spacing, seed=seed,
                                mni_dir=mni_dir)
    references = reference_volumes(config.get_parsed_content("reference_anatomies"), spacing=spacing, seed=seed,
                                   mni_dir=mni_dir)
    methods = dict(baseline_methods(references))
    for weights in args.weights:
        network = config.get_parsed_content("network_def", lazy=False).eval()
        network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        harmonizer = Harmonizer(network, device="cpu", batch_size=config["batch_size"])
        methods[str(weights)] = lambda v, h=harmonizer: h.harmonize01(torch.as_tensor(v, dtype=torch.float32)).numpy()
    results = evaluate_harmonization(methods, cases, progress=True)

    print(f"\nanatomies {FIRST_ANATOMY}-{FIRST_ANATOMY + args.anatomies - 1} in {args.split} styles, "
          f"{len(cases)} volumes")
    print(format_table(results))


if __name__ == "__main__":
    main()
