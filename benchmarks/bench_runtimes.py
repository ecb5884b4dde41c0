"""Forward time of each shipped network in eager PyTorch against its TorchScript export (and ONNX Runtime).

Usage: python benchmarks/bench_runtimes.py [--size 256] [--repeats 7] [--threads N] [--json results.json]

Each network is built from its bundle with the shipped weights and scripted as ``sgad_med.export`` exports it
(``torch.jit.script``, what ``python -m monai.bundle ckpt_export`` writes). Inputs are random, at the batch sizes
the pipeline uses and ``--size`` x ``--size`` slices: the harmonizer 16 stacks ``[16, 3, H, W]``, the detector's
slice encoder ``encode`` on 32 slices (and their two neighbours), the restorer 16 stacks ``[16, 5, H, W]`` (one
forward; the pipeline's flip-ensemble inferer makes four). With ``onnx`` and ``onnxruntime`` importable (they are
not dependencies), the detector's encoder also runs in ONNX Runtime (the one network part ONNX exports, see
``sgad_med.export.ONNX_EXPORTABLE``); otherwise that column says why it is missing.

All runtimes of one network run in the same process on the same tensors, alternately (eager, TorchScript,
ONNX, eager, ...), so the machine's load affects them alike. Each gets three warm-up calls first (TorchScript's
profiling executor optimizes the graph over its first calls; that first call is reported apart). Prints the median
seconds per batch, slices/s and the ratio eager / runtime (above 1: the runtime is faster), and checks that the
outputs agree.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from sgad_med.bundles import load_bundle_network
from sgad_med.export import export_onnx, onnx_available, script_network

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
NETWORKS = {  # name: (bundle, batch size the pipeline uses, slices per stack; 0: bare slices for encode)
    "harmonizer": ("style_harmonization", 16, 3),
    "detector.encode": ("slice_anomaly_detection", 32, 0),
    "restorer": ("slice_restoration", 16, 5),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="slice side (default 256)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per runtime and network")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.jit's "switch to torch.export"
    started = time.perf_counter()
    has_onnx = onnx_available()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.size}x{args.size} slices, "
          f"median of {args.repeats}; ONNX Runtime: "
          + ("yes" if has_onnx else "not installed (pip install onnx onnxruntime to add it)"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (bundle, batch, depth) in NETWORKS.items():
            eager, _ = load_bundle_network(BUNDLES / bundle, "cpu")
            generator = torch.Generator().manual_seed(0)
            if depth:
                inputs = (torch.rand(batch, depth, args.size, args.size, generator=generator),)
            else:
                inputs = tuple(torch.rand(batch, args.size, args.size, generator=generator) for _ in range(3))
            scripted = script_network(eager)
            if depth:
                runtimes = {"eager": eager, "TorchScript": scripted}
            else:
                runtimes = {"eager": eager.encode, "TorchScript": scripted.encode}
            if has_onnx and not depth:
                import onnxruntime

                path = export_onnx(BUNDLES / bundle, Path(tmp) / "encoder.onnx", height=args.size, width=args.size)
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = torch.get_num_threads()
                session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                feeds = dict(zip(("slices", "previous", "following"), (x.numpy() for x in inputs)))
                runtimes["ONNX Runtime"] = lambda *_, s=session, f=feeds: torch.from_numpy(s.run(None, f)[0])
            first: dict[str, float] = {}
            outputs: dict[str, torch.Tensor] = {}
            times: dict[str, list[float]] = {key: [] for key in runtimes}
            with torch.inference_mode():
                for key, call in runtimes.items():
                    start = time.perf_counter()
                    outputs[key] = call(*inputs)
                    first[key] = time.perf_counter() - start
                    call(*inputs)
                    call(*inputs)
                for _ in range(args.repeats):
                    for key, call in runtimes.items():
                        start = time.perf_counter()
                        call(*inputs)
                        times[key].append(time.perf_counter() - start)
            medians = {key: statistics.median(values) for key, values in times.items()}
            differences = {key: float((outputs[key] - outputs["eager"]).abs().max()) for key in runtimes}
            rows.append({"network": name, "batch": batch, "input": [list(x.shape) for x in inputs][0],
                         "seconds_per_batch": medians, "first_call": first,
                         "slices_per_second": {key: batch / t for key, t in medians.items()},
                         "ratio_eager_over": {key: medians["eager"] / t for key, t in medians.items()},
                         "max_abs_difference": differences})
    columns = ["eager", "TorchScript", "ONNX Runtime"]
    print(f"{'network':>16}{'batch':>7}" + "".join(f"{c + ' s':>16}{'slices/s':>10}" for c in columns)
          + f"{'eager/TS':>10}{'eager/ORT':>11}")
    for row in rows:
        line = f"{row['network']:>16}{row['batch']:>7}"
        for column in columns:
            if column in row["seconds_per_batch"]:
                line += f"{row['seconds_per_batch'][column]:>16.3f}{row['slices_per_second'][column]:>10.1f}"
            else:
                line += f"{'-':>16}{'-':>10}"
        ratios = row["ratio_eager_over"]
        line += f"{ratios['TorchScript']:>9.2f}x"
        line += f"{ratios['ONNX Runtime']:>10.2f}x" if "ONNX Runtime" in ratios else f"{'-':>11}"
        print(line)
    print("\nfirst call (s; TorchScript optimizes its graph over the first calls) and largest output difference")
    for row in rows:
        print(f"{row['network']:>16}  " + "   ".join(
            f"{key} {row['first_call'][key]:.3f} s, |diff| {row['max_abs_difference'][key]:.1e}"
            for key in row["first_call"]))
    print(f"\nbenchmark wall time {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
