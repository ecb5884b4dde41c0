"""Would a hand-made estimate of slice k help the restorer? PSNR of candidate inputs per kind, on validation data.

Scores, inside the head mask, at severity 0.5, on the validation protocol's slices (anatomies 960-969, never used
by training or the evaluation), for every artifact kind and for clean slices:

- ``input``: the damaged slice k;
- ``interp``: the mean of its two nearest neighbours (the classical baseline the network must beat by 2 dB);
- ``kspace``: slice k's spectrum where its magnitude is within a factor ``--ratio`` of the neighbours' mean,
  the neighbours' spectrum elsewhere (a k-space spike or truncated frequencies taken from the neighbours);
- ``matched``: slice k mapped by the least-squares line ``a k + b`` that best fits the neighbours' mean (over pixels
  where the neighbours hold signal and slice k is neither 0 nor clipped), with clipped pixels (k >= 0.99) taken
  from the neighbours' mean (an intensity scaling or saturation undone).

A candidate worth giving the network as an input channel would beat ``interp`` where the network falls short
(gibbs, rician, saturation, spike).

    python bundles/slice_restoration/scripts/probe_inputs.py [--ratio 2.0]
"""

from __future__ import annotations

import argparse

import numpy as np

from sgad_med.evaluation.metrics import psnr
from sgad_med.evaluation.restoration import damage_stacks, interpolate_neighbours, restoration_cases
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=2.0, help="k-space: largest magnitude ratio kept from slice k")
    args = parser.parse_args()
    cases = restoration_cases(slices_per_volume=3, anatomy_seeds=range(960, 970), split="validation")
    clean = np.stack([case["stack"] for case in cases])
    masks = [case["mask"] for case in cases]
    print(f"anatomies 960-969 in validation styles, {len(cases)} slices, severity 0.5; PSNR (dB) in the head mask")
    print(f"{'kind':<20} {'input':>7} {'interp':>7} {'kspace':>7} {'matched':>7}")
    for kind in ("clean", *ARTIFACT_KINDS):
        stacks = clean if kind == "clean" else damage_stacks(clean, kind, 0.5, context=CONTEXT)
        scores = {name: [] for name in ("input", "interp", "kspace", "matched")}
        for stack, truth, mask in zip(stacks, clean[:, CONTEXT], masks):
            centre, neighbours = stack[CONTEXT], interpolate_neighbours(stack, CONTEXT)
            candidates = {"input": centre, "interp": neighbours,
                          "kspace": kspace_fusion(centre, neighbours, args.ratio),
                          "matched": intensity_matched(centre, neighbours)}
            for name, image in candidates.items():
                scores[name].append(psnr(np.clip(image, 0.0, 1.0), truth, mask))
        print(f"{kind:<20} " + " ".join(f"{np.mean(values):7.2f}" for values in scores.values()))


if __name__ == "__main__":
    main()
