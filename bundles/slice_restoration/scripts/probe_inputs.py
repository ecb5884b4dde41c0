"""Would a hand-made estimate of slice k help the restorer? PSNR of candidate inputs per kind, on validation data.

Scores, inside the head mask, at severity 0.5, on the validation protocol's slices (anatomies 960-969, never used
by training or the evaluation), for every artifact kind and for clean slices:

- ``input``: the damaged slice k;
- ``interp``: the mean of its two nearest neighbours (the classical baseline the network must beat by 2 dB);
- ``kspace``: slice k's spectrum where its magnitude is within a factor ``--ratio`` of the neighbours' mean,
  the neighbours' spectrum elsewhere (a k-space spike or truncated frequencies taken from the neighbours);
- ``matched``: slice k mapped by the least-squares line ``a k + b`` that best fits the neighbours' mean (over pixels
  where the neighbours hold signal and slice k is neither 0 nor clipped), with clipped pixels (k >= 0.99) taken
  from the neighbours' mean (an intensity scaling or saturation undone);
- ``repaired``: slice k after :func:`~sgad_med.networks.slice_repair.despike` and
  :func:`~sgad_med.networks.slice_repair.desaturate` (the restorer's ``repair=True`` channel), with ``fired``, the
  share of slices either repair changed (0 on clean slices, or the restorer would change them).

A candidate worth giving the network as an input channel would beat ``interp`` where the network falls short
(gibbs, rician, saturation, spike).

    python bundles/slice_restoration/scripts/probe_inputs.py [--ratio 2.0] [--split train]

``--split train`` scores training anatomies 0-9 in training styles instead (where the repairs' thresholds were
set) and adds severities 0.2 and 0.75.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from sgad_med.evaluation.metrics import psnr
from sgad_med.evaluation.restoration import damage_stacks, interpolate_neighbours, restoration_cases
from sgad_med.networks.slice_repair import desaturate, despike
from sgad_med.transforms.artifacts import ARTIFACT_KINDS

CONTEXT = 2


def kspace_fusion(centre: np.ndarray, neighbours: np.ndarray, ratio: float) -> np.ndarray:
    """Slice k's spectrum where its magnitude is within ``ratio`` of the neighbours', theirs elsewhere."""
    f_centre, f_neighbours = np.fft.fft2(centre), np.fft.fft2(neighbours)
    relative = np.abs(f_centre) / (np.abs(f_neighbours) + 1e-8)
    keep = (relative <= ratio) & (relative >= 1.0 / ratio)
    return np.real(np.fft.ifft2(np.where(keep, f_centre, f_neighbours)))


def intensity_matched(centre: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Slice k fitted to the neighbours' mean by a line; clipped pixels replaced by the neighbours' mean."""
    fit = (neighbours > 0.05) & (centre > 0.01) & (centre < 0.99)
    if fit.sum() < 50:
        return centre
    a, b = np.linalg.lstsq(np.stack([centre[fit], np.ones(fit.sum())], 1), neighbours[fit], rcond=None)[0]
    return np.where(centre < 0.99, a * centre + b, neighbours)


def repaired(centre: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Slice k despiked, then desaturated, against the neighbours' mean (the restorer's repair channel)."""
    reference = torch.from_numpy(neighbours)[None]
    return desaturate(despike(torch.from_numpy(centre)[None], reference), reference)[0].numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=2.0, help="k-space: largest magnitude ratio kept from slice k")
    parser.add_argument("--split", choices=("validation", "train"), default="validation",
                        help="validation: anatomies 960-969 in validation styles; train: anatomies 0-9 in training "
                             "styles, severities 0.2, 0.5, 0.75")
    args = parser.parse_args()
    anatomies, severities = (range(960, 970), (0.5,)) if args.split == "validation" else (range(10), (0.2, 0.5, 0.75))
    cases = restoration_cases(slices_per_volume=3, anatomy_seeds=anatomies, split=args.split)
    clean = np.stack([case["stack"] for case in cases])
    masks = [case["mask"] for case in cases]
    print(f"anatomies {anatomies.start}-{anatomies.stop - 1} in {args.split} styles, {len(cases)} slices; PSNR (dB) "
          "in the head mask")
    names = ("input", "interp", "kspace", "matched", "repaired")
    print(f"{'kind':<20} {'severity':>8} " + " ".join(f"{name:>8}" for name in names) + f" {'fired':>6}")
    for kind in ("clean", *ARTIFACT_KINDS):
        for severity in (0.5,) if kind == "clean" else severities:
            stacks = clean if kind == "clean" else damage_stacks(clean, kind, severity, context=CONTEXT)
            scores: dict[str, list[float]] = {name: [] for name in names}
            fired = 0
            for stack, truth, mask in zip(stacks, clean[:, CONTEXT], masks):
                centre, neighbours = stack[CONTEXT], interpolate_neighbours(stack, CONTEXT)
                candidates = {"input": centre, "interp": neighbours,
                              "kspace": kspace_fusion(centre, neighbours, args.ratio),
                              "matched": intensity_matched(centre, neighbours),
                              "repaired": repaired(centre, neighbours)}
                fired += int(not np.array_equal(candidates["repaired"], centre))
                for name, image in candidates.items():
                    scores[name].append(psnr(np.clip(image, 0.0, 1.0), truth, mask))
            print(f"{kind:<20} {severity:>8} " + " ".join(f"{np.mean(values):8.2f}" for values in scores.values())
                  + f" {fired / len(stacks):6.2f}")


if __name__ == "__main__":
    main()
