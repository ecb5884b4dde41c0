"""The restorer's flip ensemble: its passes one after the other, against all of them in one batched call.

Usage: python benchmarks/bench_flip_ensemble.py [--slices 6] [--size 256] [--repeats 5] [--threads 1]

Both run the shipped restorer with its inference.json flips on the same random stacks, alternating; prints the
median time of each and the ratio (separate / batched; above 1: batching wins).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sgad_med.bundles import load_bundle_network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=6)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    network, config = load_bundle_network("bundles/slice_restoration", "cpu")
    flips = [tuple(f) for f in config.get_parsed_content("inferer").flips]
    stacks = torch.rand(args.slices, 5, args.size, args.size, generator=torch.Generator().manual_seed(0))

    def separate() -> torch.Tensor:
        total = network(stacks)
        for dims in flips:
            total = total + torch.flip(network(torch.flip(stacks, dims)), dims)
        return total / (1 + len(flips))

    def batched() -> torch.Tensor:
        outputs = network(torch.cat([stacks, *(torch.flip(stacks, d) for d in flips)])).split(args.slices)
        total = outputs[0]
        for dims, out in zip(flips, outputs[1:]):
            total = total + torch.flip(out, dims)
        return total / (1 + len(flips))

    times: dict[str, list[float]] = {"separate": [], "batched": []}
    with torch.no_grad():
        separate(), batched()  # warm-up
        for _ in range(args.repeats):
            for name, run in (("separate", separate), ("batched", batched)):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.slices} stacks of {args.size}x{args.size}, flips {flips}, {torch.get_num_threads()} threads: "
          f"separate {medians['separate']:.3f} s, batched {medians['batched']:.3f} s, "
          f"ratio {medians['separate'] / medians['batched']:.2f}x")


if __name__ == "__main__":
    main()
