"""Compare harmonization weights on validation data, with the evaluation's protocol; never the evaluation set.

The protocol of ``sgad-med evaluate harmonizer`` (metrics in the head mask, and the MAE on scans already in the
reference style) on training-pool anatomies that no training run uses (960 onwards) in ``--split`` styles
(``validation``: grey/white-matter contrast just below every training style; ``validation_low``: below every
held-out one; ``train``). Histogram matching and Nyúl-Udupa are scored alongside, as in the evaluation, and
SSIM in the head is broken down by style family.

``--oracles`` adds two methods no network can beat without deblurring or denoising, to show what the SSIM bar asks
for: the truth anatomy rendered in the reference contrast with the case's own blur ("oracle: blur"), and with its
bias field and Rician noise too ("oracle: blur, bias, noise"). Weights are optional with it.

    python bundles/style_harmonization/scripts/validate.py bundles/style_harmonization/models/model.pt \\
        other/model.pt [--split validation] [--anatomies 8] [--oracles]
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser

from sgad_med.data.mni import load_mni_template
from sgad_med.data.synthetic import REFERENCE_STYLE, Style, SyntheticStyleGenerator
from sgad_med.evaluation.harmonization import (
    baseline_methods,
    evaluate_harmonization,
    format_table,
    harmonization_cases,
    reference_volumes,
    uses_case,
)
from sgad_med.evaluation.heldout import normalize_mr
from sgad_med.harmonizer import Harmonizer

BUNDLE = Path(__file__).resolve().parents[1]
FIRST_ANATOMY = 960  # training pool, used by no training, validation or calibration step


def oracle_methods(spacing: float, seed: int, mni_dir: str | None) -> dict:
    """The case's true anatomy in the reference contrast, degraded as the case's style degrades it."""
    generator = SyntheticStyleGenerator(template=load_mni_template(mni_dir, spacing=spacing), seed=seed,
                                        anatomy_cache=1)

    def oracle(keep: tuple[str, ...]):
        def render(case: dict) -> np.ndarray:
            style = Style(**case["style_params"])
            degraded = dataclasses.replace(REFERENCE_STYLE, **{name: getattr(style, name) for name in keep})
            return normalize_mr(generator.volume(case["anatomy_seed"], degraded, noise_seed=case["style_seed"]))
        return uses_case(render)

    blur = ("blur_sigma_inplane", "slice_thickness")
    return {"oracle: blur": oracle(blur), "oracle: blur, bias, noise": oracle((*blur, "bias_strength", "noise_sigma"))}


def ssim_by_family(results: dict) -> str:
    """SSIM in the head mask, mean over the volumes of each style family (t1, t2, flair, pd, random)."""
    methods = list(results["methods"])
    by_family: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for case in results["cases"]:
        for name in methods:
            by_family[str(case["style"]).split("-")[0]][name].append(case[name]["ssim_mask"])
    families = sorted(by_family)
    width = max(len(name) for name in methods) + 2
    lines = ["SSIM(mask) by style family (volumes)".ljust(width) + "".join(
        f"{f} ({len(next(iter(by_family[f].values())))})".rjust(12) for f in families)]
    lines += [name.ljust(width) + "".join(f"{np.mean(by_family[f][name]):12.3f}" for f in families)
              for name in methods]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="*", type=Path, help="generator weights files (models/model.pt)")
    parser.add_argument("--split", choices=("validation", "validation_low", "train"), default="validation")
    parser.add_argument("--anatomies", type=int, default=8)
    parser.add_argument("--oracles", action="store_true", help="add the blur and blur+noise oracles")
    args = parser.parse_args()
    if not args.weights and not args.oracles:
        parser.error("give generator weights, --oracles, or both")

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
    if args.oracles:
        methods.update(oracle_methods(spacing, seed, mni_dir))
    for weights in args.weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        # evaluate.json defines both generators: the edge-preserving one (network_def) and the U-Net (unet_def)
        definition = "unet_def" if any(key.startswith("unet.") for key in state) else "network_def"
        network = config.get_parsed_content(definition, lazy=False).eval()
        network.load_state_dict(state)
        harmonizer = Harmonizer(network, device="cpu", batch_size=config["batch_size"])
        methods[str(weights)] = lambda v, h=harmonizer: h.harmonize01(torch.as_tensor(v, dtype=torch.float32)).numpy()
    results = evaluate_harmonization(methods, cases, progress=True)

    print(f"\nanatomies {FIRST_ANATOMY}-{FIRST_ANATOMY + args.anatomies - 1} in {args.split} styles, "
          f"{len(cases)} volumes")
    print(format_table(results))
    print()
    print(ssim_by_family(results))


if __name__ == "__main__":
    main()
