"""Compare restoration weights on train.json's validation set: PSNR and SSIM on every item, MAE on the clean ones.

The clean-item MAE is the "do no harm" figure (a slice that was fine, restored anyway), which the PSNR over mixed
items hides. Used to choose between weights before the evaluation is run; never touches the evaluation set.

    python bundles/slice_restoration/scripts/validate.py bundles/slice_restoration/models/model.pt \\
        other/model.pt:gate_residual=True [--corrupt_fraction 0.85]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.metrics import PSNRMetric, SSIMMetric

from sgad_med.data.corrupted import CLEAN

BUNDLE = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="+", help="weights file, optionally ':gate_residual=True'")
    parser.add_argument("--corrupt_fraction", type=float, default=None, help="override train.json's value")
    args = parser.parse_args()
    config = ConfigParser()
    config.read_config(str(BUNDLE / "configs" / "train.json"))
    config["bundle_root"] = str(BUNDLE)
    if args.corrupt_fraction is not None:
        config["corrupt_fraction"] = args.corrupt_fraction
    loader = config.get_parsed_content("validate#dataloader")
    batches = list(loader)
    print(f"{'weights':<60} {'PSNR':>7} {'SSIM':>6} {'clean MAE':>9} {'items':>6} {'clean':>6}")
    for spec in args.weights:
        path, _, option = spec.partition(":")
        config["gate_residual"] = option == "gate_residual=True"
        network = config.get_parsed_content("network_def", instantiate=True, lazy=False)
        state = torch.load(path, map_location="cpu", weights_only=True)
        network.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
        network.eval()
        psnr, ssim = PSNRMetric(max_val=1.0), SSIMMetric(spatial_dims=2, data_range=1.0)
        clean_error, clean_items, items = 0.0, 0, 0
        with torch.no_grad():
            for batch in batches:
                pred = network(batch["image"]).clamp(0.0, 1.0)
                truth = batch["clean"]
                psnr(pred, truth)
                ssim(pred, truth)
                clean = batch["kind"] == CLEAN
                clean_error += float((pred[clean] - truth[clean]).abs().mean(dim=(1, 2, 3)).sum())
                clean_items += int(clean.sum())
                items += len(pred)
        print(f"{spec:<60} {float(psnr.aggregate()):7.2f} {float(ssim.aggregate()):6.3f} "
              f"{clean_error / max(clean_items, 1):9.4f} {items:>6} {clean_items:>6}")


if __name__ == "__main__":
    main()
