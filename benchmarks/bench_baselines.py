"""Quality of the classical harmonization baselines on the held-out synthetic cases (sgad_med.evaluation).

Usage: python benchmarks/bench_baselines.py [--spacing 2.0] [--anatomies 8] [--styles 2] [--references 8]
    [--json results.json]

Builds the held-out cases (held-out anatomies in held-out styles, sources normalized as real MR scans are), fits
the baselines on reference-style volumes of *training* anatomies, and prints the metrics table: no
harmonization, histogram matching and Nyúl–Udupa, with the true head mask as their foreground, plus an oracle
(the truth itself: the ceiling of every column). Then the ratio of each baseline's masked MAE and W1 to doing
nothing. The GAN is scored against these by ``sgad-med evaluate harmonizer``.
"""

from __future__ import annotations

import argparse
import json
import time

from sgad_med.evaluation import (
    baseline_methods,
    evaluate_harmonization,
    format_table,
    heldout_cases,
    reference_volumes,
    uses_case,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spacing", type=float, default=2.0, help="isotropic voxel size in mm")
    parser.add_argument("--anatomies", type=int, default=8, help="held-out anatomies")
    parser.add_argument("--styles", type=int, default=2, help="held-out styles per anatomy")
    parser.add_argument("--references", type=int, default=8, help="training anatomies the baselines are fitted on")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    start = time.perf_counter()
    cases = heldout_cases(n_anatomies=args.anatomies, styles_per_anatomy=args.styles, spacing=args.spacing)
    references = reference_volumes(range(args.references), spacing=args.spacing)
    print(f"{len(cases)} cases, {len(references)} references at {args.spacing} mm: {time.perf_counter() - start:.1f} s")

    methods = {**baseline_methods(references), "oracle (truth)": uses_case(lambda case: case["target"])}
    start = time.perf_counter()
    results = evaluate_harmonization(methods, cases, progress=True)
    print(f"evaluated in {time.perf_counter() - start:.1f} s\n")
    print(format_table(results))
    none = results["methods"]["none"]
    print()
    for name, metrics in results["methods"].items():
        if name == "none":
            continue
        ratios = ", ".join(
            f"{key} x{metrics[key]['mean'] / none[key]['mean']:.2f}" for key in ("mae_mask", "wasserstein")
        )
        print(f"{name:<22} vs none: {ratios}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
