"""Inference speed of the two harmonization generators side by side: the edge-preserving one and the old U-Net.

Usage: python benchmarks/bench_harmonizer.py [--sizes 128 256] [--slices 32] [--repeats 5] [--threads N]
    [--json results.json]

Both networks are built from the bundle's configs (``inference.json`` and the ``unet_generator.json`` overlay)
with their shipped weights, and run on the same random 2.5D stacks, in the same process, alternately, so that the
machine's load affects both alike. Prints, per slice size, the median time of one batch and the slices per
second of each, and the speed ratio (U-Net time / edge-preserving time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from sgad_med.bundles import load_bundle_network

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "style_harmonization"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="slice sides to time")
    parser.add_argument("--slices", type=int, default=32, help="slices per batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per network and size")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    networks = {
        "edge-preserving": load_bundle_network(BUNDLE, "cpu")[0],
        "U-Net (0.3.x)": load_bundle_network(BUNDLE, "cpu", overlays=["unet_generator.json"])[0],
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.slices} slices per batch")
    rows = []
    for size in args.sizes:
        stack = torch.rand(args.slices, 3, size, size, generator=torch.Generator().manual_seed(0))
        times: dict[str, list[float]] = {name: [] for name in networks}
        with torch.inference_mode():
            for network in networks.values():
                network(stack)  # warm-up
            for _ in range(args.repeats):
                for name, network in networks.items():
                    start = time.perf_counter()
                    network(stack)
                    times[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(values) for name, values in times.items()}
        row = {"size": size, "seconds_per_batch": medians,
               "slices_per_second": {name: args.slices / t for name, t in medians.items()},
               "ratio_unet_over_edge": medians["U-Net (0.3.x)"] / medians["edge-preserving"]}
        rows.append(row)
    print(f"{'slice':>8}" + "".join(f"{name + ' s/batch':>26}{'slices/s':>10}" for name in networks)
          + f"{'speed ratio':>13}")
    for row in rows:
        line = f"{row['size']:>5}²  "
        for name in networks:
            line += f"{row['seconds_per_batch'][name]:>26.3f}{row['slices_per_second'][name]:>10.1f}"
        print(line + f"{row['ratio_unet_over_edge']:>12.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
