"""Speed of the synthetic training-data generator (sgad_med.data.synthetic).

Usage: python benchmarks/bench_synthetic.py [--spacing 2.0] [--n 20] [--threads N]

Prints volumes per second for: anatomy sampling (random affine + elastic deformation, one resampling of the
tissue maps), rendering (mix, gamma, bias, blur, Rician noise) in random train styles, full pairs with a new
anatomy each time (worst case), and pairs reusing a cached anatomy (several styles per anatomy).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from sgad_med.data import SyntheticStyleGenerator, load_mni_template, render, sample_anatomy, sample_style


def _rate(label: str, n: int, seconds: float) -> None:
    print(f"{label:<44s} {n / seconds:8.2f} volumes/s   ({1000 * seconds / n:7.1f} ms each, n={n})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spacing", type=float, default=2.0, help="isotropic voxel size in mm")
    parser.add_argument("--n", type=int, default=20, help="volumes per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    template = load_mni_template(spacing=args.spacing)
    load_s = time.perf_counter() - start
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    )
    print(f"spacing {args.spacing} mm, volume {template.shape}, template load (first, uncached) {load_s:.2f} s")

    anatomies = []
    start = time.perf_counter()
    for seed in range(args.n):
        anatomies.append(sample_anatomy(template, np.random.default_rng(seed), seed=seed))
    _rate("anatomy sampling", args.n, time.perf_counter() - start)

    rng = np.random.default_rng(0)
    styles = [sample_style(rng) for _ in range(args.n)]
    start = time.perf_counter()
    for anatomy, style in zip(anatomies, styles):
        render(anatomy, style, rng)
    _rate("render (random train style)", args.n, time.perf_counter() - start)

    gen = SyntheticStyleGenerator(template, anatomy_cache=0)
    start = time.perf_counter()
    for i in range(args.n):
        gen.pair(anatomy_seed=i, style_seed=i)
    _rate("pair, new anatomy each time (source+target)", args.n, time.perf_counter() - start)

    cached = SyntheticStyleGenerator(template, anatomy_cache=4)
    cached.anatomy(0)
    start = time.perf_counter()
    for i in range(args.n):
        cached.pair(anatomy_seed=0, style_seed=i)
    _rate("pair, cached anatomy (source+target)", args.n, time.perf_counter() - start)


if __name__ == "__main__":
    main()
