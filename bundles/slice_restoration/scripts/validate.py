"""Compare restoration weights on validation data; never touches the evaluation set.

Default: train.json's validation set: PSNR and SSIM on every item, MAE on the clean ones (the "do no harm"
figure, a slice that was fine restored anyway, which the PSNR over mixed items hides).

``--protocol bar``: the evaluation's protocol and quality bar (every kind at severity 0.5 against the classical
methods, and the clean-slice check), on training-pool anatomies 960-969 that no training run uses, in
``--split`` styles (``validation``: grey/white-matter contrast just below every training style; ``validation_low``:
below the held-out styles' contrast; ``train``).

    python bundles/slice_restoration/scripts/validate.py bundles/slice_restoration/models/model.pt \\
        other/model.pt:gate_residual=True,align=True [--corrupt_fraction 0.85] [--protocol bar --split validation]

A weights file may name the network options it was trained with after a colon (``gate_residual``, ``align``,
``repair``: off when not named; ``features``, dash-separated: the bundle's when not named).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.metrics import PSNRMetric, SSIMMetric

from sgad_med.data.corrupted import CLEAN

BUNDLE = Path(__file__).resolve().parents[1]
FLIPS = {"width": [-1], "height": [-2], "both": [-2, -1]}  # --flips names: the dimensions each extra pass flips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="+", help="weights file, optionally ':gate_residual=True,align=True'")
    parser.add_argument("--corrupt_fraction", type=float, default=None, help="override train.json's value")
    parser.add_argument("--protocol", choices=("validation_set", "bar"), default="validation_set")
    parser.add_argument("--split", choices=("validation", "validation_low", "train"), default="validation")
    parser.add_argument("--gate_kinds", nargs="*", default=[],
                        help="with --protocol bar: also print the mean gate in the head on these kinds ('clean' too)")
    parser.add_argument("--flip_ensemble", action="store_true",
                        help="with --protocol bar: average each output with the left-right flipped pass's "
                             "(sgad_med.inferers.FlipEnsembleInferer)")
    parser.add_argument("--flips", nargs="+", default=None, choices=sorted(FLIPS),
                        help="with --protocol bar: the flip ensemble's extra passes instead of --flip_ensemble's "
                             "one (e.g. width height both: four passes in all)")
    args = parser.parse_args()
    if args.protocol == "bar":
        flips = ([FLIPS[name] for name in args.flips] if args.flips is not None
                 else [[-1]] if args.flip_ensemble else None)
        return bar_on_validation_anatomies(args.weights, args.split, args.gate_kinds, flips)
    config = ConfigParser()
    config.read_config(str(BUNDLE / "configs" / "train.json"))
    config["bundle_root"] = str(BUNDLE)
    if args.corrupt_fraction is not None:
        config["corrupt_fraction"] = args.corrupt_fraction
    loader = config.get_parsed_content("validate#dataloader")
    batches = list(loader)
    print(f"{'weights':<60} {'PSNR':>7} {'SSIM':>6} {'clean MAE':>9} {'items':>6} {'clean':>6}")
    for spec in args.weights:
        path, options = network_options(spec)
        config.update(options)
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


def network_options(spec: str) -> tuple[str, dict[str, bool | list[int]]]:
    """``path[:gate_residual=True,align=True,features=16-32-64-128-256-16]`` -> the path and its options
    (``gate_residual``/``align``/``repair`` ``False`` where not named; ``features`` only when named)."""
    path, _, named = spec.partition(":")
    options: dict[str, bool | list[int]] = {"gate_residual": False, "align": False, "repair": False}
    for item in filter(None, named.split(",")):
        key, _, value = item.partition("=")
        if key == "features" and all(part.isdigit() for part in value.split("-")):
            options[key] = [int(part) for part in value.split("-")]
        elif key in ("gate_residual", "align", "repair") and value in ("True", "False"):
            options[key] = value == "True"
        else:
            raise SystemExit(f"{spec}: unknown option {item!r}; known: gate_residual=True|False, align=True|False, "
                             "repair=True|False, features=16-32-64-128-256-16")
    return path, options


def load(spec: str) -> torch.nn.Module:
    """The bundle's network with the weights and options of ``spec`` (see :func:`network_options`), in eval mode."""
    from sgad_med.networks import SliceRestorationNet

    path, options = network_options(spec)
    config = ConfigParser()
    config.read_config(str(BUNDLE / "configs" / "inference.json"))
    network = SliceRestorationNet(**{"context": config["context"], "features": config["features"], **options})
    state = torch.load(path, map_location="cpu", weights_only=True)
    network.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    return network.eval()


def gate_in_head(network: torch.nn.Module, cases: list[dict], kinds: list[str]) -> str:
    """Mean gate (share of each pixel kept from the slice) in the head, per kind at severity 0.5, damaged with the
    evaluation's seeds; for an ``align`` network also on how many ``shift`` slices re-registration was exact."""
    import numpy as np

    from sgad_med.evaluation.restoration import damage_stacks

    c = network.context
    clean = np.stack([case["stack"] for case in cases])
    masks = torch.from_numpy(np.stack([case["mask"] for case in cases]))[:, None]
    parts = []
    for kind in kinds:
        stacks = torch.from_numpy(clean if kind == "clean" else damage_stacks(clean, kind, 0.5, context=c))
        with torch.no_grad():
            gate, kept = network.gate_map(stacks)
        parts.append(f"{kind} {float(gate[masks].mean()):.2f}")
        if kind == "shift" and getattr(network, "align", False):
            truth = torch.from_numpy(clean[:, c])
            exact = [bool(torch.equal(a[m], t[m])) for a, t, m in zip(kept[:, 0], truth, masks[:, 0])]
            parts.append(f"(shift re-registered exactly in the head: {sum(exact)}/{len(exact)})")
    return "    mean gate in the head: " + ", ".join(parts)


def bar_on_validation_anatomies(weights: list[str], split: str, gate_kinds: list[str] = (),
                                flips: list[list[int]] | None = None) -> None:
    from sgad_med.evaluation.restoration import (
        evaluate_restoration,
        network_method,
        quality_bar,
        restoration_cases,
    )
    from sgad_med.inferers import FlipEnsembleInferer
    from sgad_med.restorer import SliceRestorer

    cases = restoration_cases(slices_per_volume=3, anatomy_seeds=range(960, 970), split=split)
    print(f"anatomies 960-969 in {split} styles, {len(cases)} slices, severity 0.5"
          + (f", flip ensemble {flips}" if flips else ""))
    print(f"{'weights':<60} {'PSNR':>6} {'gain':>6} {'kinds +2 dB':>11} {'kinds SSIM':>10} {'clean MAE':>9}")
    for spec in weights:
        network = load(spec)
        restorer = SliceRestorer(network, device="cpu", inferer=FlipEnsembleInferer(flips) if flips else None)
        results = evaluate_restoration(cases, network_method(restorer), severities=[0.5])
        bar = quality_bar(results)
        n_kinds = len(bar["psnr_margin_over_best_classical_db"]["per_kind"])
        psnr_ok = n_kinds - len(bar["psnr_margin_over_best_classical_db"]["failing"])
        ssim_ok = n_kinds - len(bar["ssim_margin_over_best_classical"]["failing"])
        print(f"{spec:<60} {results['severities']['0.5']['mean']['network']['psnr_mask']:6.2f} "
              f"{bar['psnr_gain_over_corrupted_db']['value']:6.2f} {psnr_ok:>8}/{n_kinds} {ssim_ok:>7}/{n_kinds} "
              f"{bar['clean_slice_mae']['value']:9.4f}")
        # the kinds that miss, with the network's margin over the best classical method
        for criterion, label, digits in (("psnr_margin_over_best_classical_db", "short of +2 dB", 2),
                                         ("ssim_margin_over_best_classical", "short on SSIM", 3)):
            margins = bar[criterion]["per_kind"]
            short = ", ".join(f"{kind} {margins[kind]:+.{digits}f}" for kind in bar[criterion]["failing"])
            print(f"    {label}: {short or 'none'}")
        if gate_kinds:
            print(gate_in_head(network, cases, list(gate_kinds)))


if __name__ == "__main__":
    main()
