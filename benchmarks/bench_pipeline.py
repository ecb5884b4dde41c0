"""Speed and memory of the whole pipeline with the shipped weights: SGADPipeline and `sgad-med run`, end to end.

Usage: python benchmarks/bench_pipeline.py [--sizes 128x128x32 256x256x128] [--ct-512 [--ct-size HxWxD]]
    [--scans 10] [--repeats 1] [--device cpu|cuda|auto] [--threads N] [--json results.json]

What is measured (every figure in one run of this script, on synthetic heads written as NIfTI: the MNI anatomy
of ``sgad_med.data.synthetic`` under a random deformation, rendered in a random train style at 2 mm and resized
to each size, float32; ``--ct-512`` adds a 512x512x600 int16 volume in HU, -1000 outside the head):

1. **SGADPipeline end to end**, per size, in a fresh Python process of its own: ``load_scan`` of the file, the
   pipeline, and ``save_scan`` of ``harmonized.nii.gz`` and ``corrected.nii.gz`` into a temporary folder. The
   first (cold) run is reported apart; then ``--repeats`` warm runs (median). Per stage, the seconds the
   pipeline records in ``Result.timings`` (``load``, ``normalize``, ``harmonize``, ``detect``, ``fallback``,
   ``restore``, ``denormalize``) plus ``write``.
2. **Pure forward time of each network** in the same warm runs: the network calls themselves (the harmonizer's
   and the restorer's ``forward``, the detector's ``encode`` and ``sequence_logits``) are wrapped with a clock,
   so they are timed on exactly the tensors and batch sizes the pipeline gives them (with CUDA, synchronized
   before and after each call). The restorer's count includes the flip-ensemble inferer's four passes per
   batch; it runs only on the slices the detector flagged. **Overhead ratio** = end-to-end seconds / the sum of
   the pure forward seconds: what the pipeline costs around its networks (reading, normalizing, building
   stacks, padding, copies, the lookup-table fallback, writing).
3. **`sgad-med run FILE --out DIR --quiet`** as a subprocess per size, process start included (interpreter,
   imports, bundle loading, the run, ``report.json``, figures, ``manifest.json``, ``report.html``); slices/s over
   the wall time, and the stage times its ``report.json`` records.
4. **A batch of N scans** (``--scans``, default 10, of 256x256x128, each its own anatomy and style) through one
   ``sgad-med run`` of their folder: slices/s over the whole run.
5. **Start-up**: the wall time of ``sgad-med --help`` and of ``python -c "import sgad_med.cli"`` (median of
   3), and, for the pipeline process of the smallest size, the wall time from just before the process is
   spawned until the harmonizer's first ``forward`` starts, with its milestones (interpreter up, ``import
   torch``, ``import sgad_med.pipeline``, ``from_bundles``, ``load_scan``). The spawn time is taken in this
   process and passed to the child, so interpreter start and every import are included; nothing is cached
   between processes but what the OS caches (the files were read before, as in any second run). The largest
   cumulative imports (``python -X importtime``) are listed.
6. **Peak resident memory**: each measured process's ``ru_maxrss`` (``os.wait4`` of that child alone), against
   the volume's float32 size.
7. **CUDA only** (whenever torch sees a GPU, whatever ``--device``): per network, the forward time at the
   pipeline's batch sizes on 256x256 slices with AMP, channels_last and ``torch.compile`` each on and off (one
   at a time against plain fp32). Without a GPU a note says it was skipped. (``--device cuda`` runs items 1-4 on
   the GPU too.)

The defaults run in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
DEFAULT_SIZES = ["128x128x32", "256x256x128"]
CT_SIZE = "512x512x600"


# --------------------------------------------------------------------------------------------- the volumes


def parse_size(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not HxWxD")
    return parts  # type: ignore[return-value]


def synthetic_head(shape: tuple[int, int, int], seed: int):
    """A synthetic head (MNI anatomy, random deformation and train style, 2 mm) resized to ``shape``, in [0, 1]."""
    import numpy as np
    from scipy import ndimage

    from sgad_med.data import load_mni_template, render, sample_anatomy, sample_style

    rng = np.random.default_rng(seed)
    template = load_mni_template(spacing=2.0)
    volume = render(sample_anatomy(template, rng), sample_style(rng), rng)
    zoom = [n / m for n, m in zip(shape, volume.shape)]
    return np.clip(ndimage.zoom(volume, zoom, order=1), 0.0, 1.0).astype(np.float32)


def write_volume(path: Path, shape: tuple[int, int, int], seed: int, ct: bool = False) -> None:
    import nibabel as nib
    import numpy as np

    volume = synthetic_head(shape, seed)
    spacing = [240.0 / shape[0], 240.0 / shape[1], 180.0 / shape[2]]
    affine = np.diag([*spacing, 1.0])
    if ct:  # HU: air -1000, the head's intensities spread over soft tissue to bone
        data = np.where(volume > 0.02, -100.0 + 1400.0 * volume, -1000.0).astype(np.int16)
    else:
        data = volume
    nib.save(nib.Nifti1Image(data, affine), str(path))


# --------------------------------------------------------------------------------------------- child processes


def run_child(argv: list[str], env: dict | None = None) -> tuple[float, int, int, str]:
    """Run a command; returns (wall seconds, exit code, peak RSS of that child in bytes, stdout)."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO, text=True)
    # read pipes in threads so that a chatty child never blocks, then reap it with wait4 (its own rusage)
    import threading

    chunks: dict[str, str] = {}

    def drain(name: str, stream) -> None:
        chunks[name] = stream.read()

    streams = (("out", process.stdout), ("err", process.stderr))
    readers = [threading.Thread(target=drain, args=stream) for stream in streams]
    for reader in readers:
        reader.start()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    for reader in readers:
        reader.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode not in (0,):
        sys.stderr.write(chunks.get("err", "")[-3000:])
    return wall, process.returncode, usage.ru_maxrss * 1024, chunks.get("out", "")


def child_env(threads: int | None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def worker(path: str, out_dir: str, device: str, repeats: int, spawned_at: float) -> None:
    """One size, in its own process: SGADPipeline end to end, cold then warm, with the networks' calls timed."""
    milestones = {"interpreter": time.time() - spawned_at}
    import torch

    milestones["import torch"] = time.time() - spawned_at
    from sgad_med.io import save_scan
    from sgad_med.pipeline import SGADPipeline

    milestones["import sgad_med.pipeline"] = time.time() - spawned_at
    pipeline = SGADPipeline.from_bundles(BUNDLES, device=device)
    milestones["from_bundles"] = time.time() - spawned_at
    cuda = pipeline.device.type == "cuda"
    clocks: dict[str, float] = {}
    calls: dict[str, int] = {}
    first_forward: list[float] = []

    def timed(name: str, function):
        def call(*args, **kwargs):
            if not first_forward:
                first_forward.append(time.time() - spawned_at)
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = function(*args, **kwargs)
            if cuda:
                torch.cuda.synchronize()
            clocks[name] = clocks.get(name, 0.0) + time.perf_counter() - start
            calls[name] = calls.get(name, 0) + 1
            return out

        return call

    harmonizer, detector, restorer = pipeline.harmonizer.network, pipeline.detector.network, pipeline.restorer.network
    harmonizer.forward = timed("harmonizer", harmonizer.forward)
    detector.encode = timed("detector", detector.encode)
    if pipeline.detector.onnx_encoder is not None:  # the encoder runs in ONNX Runtime: time that call instead
        pipeline.detector.onnx_encoder = timed("detector", pipeline.detector.onnx_encoder)
    detector.sequence_logits = timed("detector", detector.sequence_logits)
    restorer.forward = timed("restorer", restorer.forward)

    runs = []
    for run in range(1 + repeats):
        clocks.clear()
        calls.clear()
        start = time.perf_counter()
        result = pipeline(path)
        if run == 0:
            milestones["load_scan"] = result.timings["load"] + milestones["from_bundles"]
        clock = time.perf_counter()
        target = Path(out_dir) / f"run{run}"
        save_scan(result.harmonized, target / "harmonized.nii.gz", overwrite=True)
        save_scan(result.corrected, target / "corrected.nii.gz", overwrite=True)
        timings = {k: v for k, v in result.timings.items() if k != "total"}
        timings["write"] = time.perf_counter() - clock
        runs.append({"seconds": time.perf_counter() - start, "stages": timings, "forward": dict(clocks),
                     "calls": dict(calls), "n_slices": int(len(result.scores)),
                     "n_restored": int(result.restored.sum()), "n_fallback": int(result.fallback.sum())})
        shutil.rmtree(target, ignore_errors=True)
    milestones["first forward"] = first_forward[0]
    batch = pipeline.settings["batch_size"]
    print(json.dumps({"runs": runs, "milestones": milestones, "device": str(pipeline.device), "batch_size": batch,
                      "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "detector_runtime": pipeline.detector.runtime}))


# --------------------------------------------------------------------------------------------- CUDA options


def cuda_options(repeats: int) -> list[dict]:
    """Per network at the pipeline's batch sizes on 256x256: plain fp32 vs AMP, channels_last, torch.compile."""
    import torch

    from sgad_med.bundles import load_bundle_network

    shapes = {"harmonizer": ("style_harmonization", (16, 3, 256, 256)),
              "detector": ("slice_anomaly_detection", (32, 256, 256)),
              "restorer": ("slice_restoration", (16, 5, 256, 256))}
    rows = []
    for name, (bundle, shape) in shapes.items():
        network, _ = load_bundle_network(BUNDLES / bundle, "cuda")
        x = torch.rand(shape, device="cuda")
        if name == "detector":
            def call(net, x=x, amp=False):
                with torch.autocast("cuda", enabled=amp):
                    return net.encode(x, x, x)
        else:
            def call(net, x=x, amp=False):
                with torch.autocast("cuda", enabled=amp):
                    return net(x)

        def median_time(net, amp=False, inputs_cl=False) -> float:
            with torch.inference_mode():
                for _ in range(3):
                    call(net, amp=amp)
                torch.cuda.synchronize()
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    call(net, amp=amp)
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - start)
            return statistics.median(times)

        row = {"network": name, "shape": list(shape), "fp32": median_time(network)}
        row["amp"] = median_time(network, amp=True)
        if name != "detector":  # channels_last applies to 4D inputs
            cl = network.to(memory_format=torch.channels_last)
            x_cl = x.contiguous(memory_format=torch.channels_last)
            saved = x.data
            x.data = x_cl
            row["channels_last"] = median_time(cl)
            x.data = saved
            network = network.to(memory_format=torch.contiguous_format)
        else:
            row["channels_last"] = None
        try:
            compiled = torch.compile(network)
            start = time.perf_counter()
            with torch.inference_mode():
                call(compiled)
            torch.cuda.synchronize()
            row["compile_first_call"] = time.perf_counter() - start
            row["compile"] = median_time(compiled)
        except Exception as err:  # report, do not stop the benchmark
            row["compile"] = None
            row["compile_error"] = f"{type(err).__name__}: {err}"[:200]
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------- main


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=[parse_size(s) for s in DEFAULT_SIZES],
                        help="volume sizes HxWxD (default: 128x128x32 256x256x128)")
    parser.add_argument("--ct-512", action="store_true", help=f"add a {CT_SIZE} int16 CT volume (many minutes)")
    parser.add_argument("--ct-size", type=parse_size, default=parse_size(CT_SIZE),
                        help=f"the size of that CT volume (default {CT_SIZE})")
    parser.add_argument("--scans", type=int, default=10, help="scans of 256x256x128 in the batch run (0: skip)")
    parser.add_argument("--repeats", type=int, default=1, help="warm pipeline runs per size after the cold one")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in every process (default: torch's)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--_worker", nargs=3, metavar=("PATH", "OUT", "SPAWNED_AT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._worker:
        worker(args._worker[0], args._worker[1], args.device, args.repeats, float(args._worker[2]))
        return

    import torch

    env = child_env(args.threads)
    sizes = [(s, False) for s in args.sizes] + ([(args.ct_size, True)] if args.ct_512 else [])
    results: dict = {"torch": torch.__version__, "cpu_count": os.cpu_count(), "device": args.device,
                     "threads": args.threads, "sizes": [], "startup": {}, "cuda": None}
    benchmark_start = time.perf_counter()
    sgad_med_cli = [sys.executable, "-m", "sgad_med.cli"]
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp_text:
        tmp = Path(tmp_text)
        # --- per size: the pipeline in its own process, then sgad-med run
        for index, (shape, ct) in enumerate(sizes):
            name = "x".join(map(str, shape)) + (" CT int16" if ct else "")
            path = tmp / f"scan{index}.nii.gz"
            write_volume(path, shape, seed=index, ct=ct)
            spawned = time.time()
            argv = [sys.executable, __file__, "--device", args.device, "--repeats", str(args.repeats),
                    "--_worker", str(path), str(tmp / "pipeline-out"), repr(spawned)]
            wall, code, rss, out = run_child(argv, env)
            if code != 0:
                raise SystemExit(f"the pipeline process failed on {name} (exit {code})")
            measured = json.loads(out.strip().splitlines()[-1])
            out_dir = tmp / f"cli-{index}"
            cli_wall, cli_code, cli_rss, _ = run_child(
                [*sgad_med_cli, "run", str(path), "--out", str(out_dir), "--quiet", "--device", args.device], env)
            report = json.loads(next(out_dir.glob("*/report.json")).read_text()) if cli_code == 0 else {}
            shutil.rmtree(out_dir, ignore_errors=True)
            results["sizes"].append({
                "size": name, "shape": list(shape), "float32_bytes": 4 * shape[0] * shape[1] * shape[2],
                "file_bytes": path.stat().st_size, "pipeline": measured, "pipeline_process_seconds": wall,
                "pipeline_peak_rss": rss, "cli_seconds": cli_wall, "cli_exit": cli_code, "cli_peak_rss": cli_rss,
                "cli_timings": report.get("timings", {}),
            })
            path.unlink()
        # --- N scans through one sgad-med run
        if args.scans > 0:
            folder = tmp / "scans"
            folder.mkdir()
            for k in range(args.scans):
                write_volume(folder / f"head{k:03d}.nii.gz", (256, 256, 128), seed=100 + k)
            wall, code, rss, _ = run_child([*sgad_med_cli, "run", str(folder), "--out", str(tmp / "scans-out"),
                                            "--quiet", "--device", args.device], env)
            results["batch"] = {"scans": args.scans, "shape": [256, 256, 128], "seconds": wall, "exit": code,
                                "peak_rss": rss, "slices_per_second": args.scans * 128 / wall}
        # --- start-up
        startup = results["startup"]
        startup["sgad-med --help"] = statistics.median(
            run_child([*sgad_med_cli, "--help"], env)[0] for _ in range(3))
        startup["import sgad_med.cli"] = statistics.median(
            run_child([sys.executable, "-c", "import sgad_med.cli"], env)[0] for _ in range(3))
        startup["import sgad_med.pipeline"] = statistics.median(
            run_child([sys.executable, "-c", "import sgad_med.pipeline"], env)[0] for _ in range(3))
        importtime = subprocess.run([sys.executable, "-X", "importtime", "-c", "import sgad_med.pipeline"],
                                    capture_output=True, text=True, env=env, cwd=REPO).stderr
        roots: dict[str, float] = {}
        ours: dict[str, float] = {}
        for line in importtime.splitlines():
            fields = line.split("|")
            if len(fields) == 3 and fields[1].strip().isdigit():
                module, seconds = fields[2].strip(), int(fields[1]) / 1e6
                if module.startswith("sgad_med."):
                    ours[module] = max(ours.get(module, 0.0), seconds)
                elif "." not in module and module != "sgad_med":
                    roots[module] = max(roots.get(module, 0.0), seconds)
        startup["largest imports"] = sorted(((v, k) for k, v in roots.items()), reverse=True)[:8]
        startup["largest sgad_med imports"] = sorted(((v, k) for k, v in ours.items()), reverse=True)[:6]
        startup["pipeline process milestones"] = results["sizes"][0]["pipeline"]["milestones"]
        # --- CUDA options
        if torch.cuda.is_available():
            results["cuda"] = cuda_options(repeats=10)
    results["benchmark_seconds"] = time.perf_counter() - benchmark_start
    print_tables(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def print_tables(results: dict) -> None:
    first = results["sizes"][0]["pipeline"]
    print(f"torch {results['torch']}, {first['threads']} threads, {results['cpu_count']} CPUs, device "
          f"{first['device']}, batch sizes {first['batch_size']}, detector encoder in "
          f"{first.get('detector_runtime', 'torch')}")
    print("\nThroughput (slices/s; pipeline: load + run + write NIfTI, warm median; sgad-med run: one process, "
          "start-up and report included)")
    print(f"{'size':>22}{'pipeline cold s':>17}{'warm s':>9}{'slices/s':>10}{'sgad-med run s':>16}{'slices/s':>10}"
          f"{'restored':>10}")
    for row in results["sizes"]:
        runs = row["pipeline"]["runs"]
        warm = statistics.median(r["seconds"] for r in runs[1:]) if len(runs) > 1 else runs[0]["seconds"]
        depth = row["shape"][2]
        print(f"{row['size']:>22}{runs[0]['seconds']:>17.2f}{warm:>9.2f}{depth / warm:>10.1f}"
              f"{row['cli_seconds']:>16.2f}{depth / row['cli_seconds']:>10.1f}{runs[-1]['n_restored']:>10d}")
    if "batch" in results:
        b = results["batch"]
        shape = "x".join(map(str, b["shape"]))
        print(f"\n{b['scans']} scans of {shape} through one `sgad-med run`: {b['seconds']:.1f} s, "
              f"{b['slices_per_second']:.1f} slices/s, peak RSS {gib(b['peak_rss'])} GiB (exit {b['exit']})")

    stages = ["load", "normalize", "harmonize", "detect", "fallback", "restore", "denormalize", "write"]
    print("\nStages of the last warm pipeline run (s), pure forward time of each network in that run (s), overhead")
    print(f"{'size':>22}" + "".join(f"{s:>12}" for s in stages) + f"{'total':>9}")
    for row in results["sizes"]:
        run = row["pipeline"]["runs"][-1]
        print(f"{row['size']:>22}" + "".join(f"{run['stages'].get(s, 0.0):>12.3f}" for s in stages)
              + f"{run['seconds']:>9.2f}")
    print(f"\n{'size':>22}{'harmonizer fwd':>16}{'detector fwd':>14}{'restorer fwd':>14}{'sum fwd':>9}"
          f"{'end-to-end':>12}{'overhead':>10}")
    for row in results["sizes"]:
        run = row["pipeline"]["runs"][-1]
        forward = run["forward"]
        total = sum(forward.values())
        calls = run["calls"]
        cells = "".join(f"{forward.get(n, 0.0):>9.3f} ({calls.get(n, 0):>2d})" for n in ("harmonizer",))
        cells += "".join(f"{forward.get(n, 0.0):>7.3f} ({calls.get(n, 0):>2d})".rjust(14) for n in ("detector",
                                                                                                  "restorer"))
        ratio = run["seconds"] / total if total else float("nan")
        print(f"{row['size']:>22}{cells:>44}{total:>9.3f}{run['seconds']:>12.2f}{ratio:>9.2f}x")
    print("  (calls in brackets: forward passes per network; the detector's are encode + sequence_logits over "
          "the input and the harmonized volume)")

    print("\nsgad-med run: stages from its report.json (s) and the rest of the process")
    print(f"{'size':>22}" + "".join(f"{s:>12}" for s in stages) + f"{'process':>9}{'rest':>8}")
    for row in results["sizes"]:
        t = row["cli_timings"]
        inside = sum(t.get(s, 0.0) for s in stages)
        print(f"{row['size']:>22}" + "".join(f"{t.get(s, 0.0):>12.3f}" for s in stages)
              + f"{row['cli_seconds']:>9.2f}{row['cli_seconds'] - inside:>8.2f}")

    print("\nPeak resident memory (GiB) against the volume's float32 size")
    print(f"{'size':>22}{'float32 GiB':>13}{'pipeline':>10}{'ratio':>7}{'sgad-med run':>14}{'ratio':>7}")
    for row in results["sizes"]:
        size = row["float32_bytes"]
        pipeline_rss, cli_rss = row["pipeline_peak_rss"], row["cli_peak_rss"]
        print(f"{row['size']:>22}{gib(size):>13}{gib(pipeline_rss):>10}{pipeline_rss / size:>7.1f}"
              f"{gib(cli_rss):>14}{cli_rss / size:>7.1f}")

    s = results["startup"]
    print("\nStart-up (s, median of 3 processes)")
    for key in ("sgad-med --help", "import sgad_med.cli", "import sgad_med.pipeline"):
        print(f"  {key:<40}{s[key]:>7.2f}")
    print(f"  pipeline process ({results['sizes'][0]['size']}), from spawn:")
    for key, value in s["pipeline process milestones"].items():
        print(f"    {key:<38}{value:>7.2f}")
    print("  largest imports of `import sgad_med.pipeline` (python -X importtime, cumulative s; a package is")
    print("  counted where it is first imported, so what it pulls in is inside its figure):")
    for seconds, module in s["largest imports"] + s["largest sgad_med imports"]:
        print(f"    {module:<38}{seconds:>7.2f}")

    if results["cuda"] is None:
        print("\nCUDA options (AMP, channels_last, torch.compile): skipped, "
              "no CUDA device here (they run whenever torch sees one)")
    else:
        print("\nCUDA options: forward seconds per batch on 256x256 slices (median of 10)")
        print(f"{'network':>12}{'shape':>22}{'fp32':>9}{'AMP':>9}{'chan_last':>11}{'compile':>9}{'compile 1st':>13}")
        for row in results["cuda"]:
            def cell(value, width=9):
                return f"{value:>{width}.4f}" if isinstance(value, float) else f"{'-':>{width}}"
            print(f"{row['network']:>12}{str(row['shape']):>22}{cell(row['fp32'])}{cell(row['amp'])}"
                  f"{cell(row['channels_last'], 11)}{cell(row.get('compile'))}"
                  f"{cell(row.get('compile_first_call'), 13)}")
            if row.get("compile_error"):
                print(f"    torch.compile failed: {row['compile_error']}")
    print(f"\nbenchmark wall time {results['benchmark_seconds']:.0f} s")


if __name__ == "__main__":
    main()
