"""The pipeline with the detector's slice encoder in PyTorch and in ONNX Runtime, alternating, on one scan.

Usage: python benchmarks/bench_onnx_pipeline.py [SCAN] [--rounds 2] [--threads 1]

SCAN defaults to the MNI T1 of sample_data. Prints, per run, the runtime, the total time and the detection stage's
time, then the largest score difference between the two runtimes and whether the flags agree.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import sgad_med

MNI_T1 = "sample_data/mni/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scan", nargs="?", default=MNI_T1)
    parser.add_argument("--rounds", type=int, default=2, help="runs per runtime, alternating")
    parser.add_argument("--threads", type=int, default=1, help="torch (and ONNX Runtime) threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scan = sgad_med.load_scan(args.scan)
    results = {}
    for _ in range(args.rounds):
        for runtime in ("torch", "auto"):
            pipeline = sgad_med.SGADPipeline.from_bundles("bundles", device="cpu", runtime=runtime)
            start = time.perf_counter()
            result = pipeline(scan)
            total = time.perf_counter() - start
            print(f"{pipeline.detector.runtime:<12} total {total:6.2f} s   detect {result.timings['detect']:5.2f} s")
            results[runtime] = result
    a, b = results["torch"], results["auto"]
    print(f"largest score difference {float(np.abs(a.scores - b.scores).max()):.2e}, "
          f"flags equal: {bool((a.flagged == b.flagged).all())}")


if __name__ == "__main__":
    main()
