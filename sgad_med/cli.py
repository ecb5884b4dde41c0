"""The ``sgad-med`` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from sgad_med.errors import SGADError

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


def _scan_rows(inputs: Sequence[str], split_4d: bool, quiet: bool) -> list[dict]:
    """One row per discovered scan: what ``sgad-med info`` prints. Loads each scan to check it reads."""
    from sgad_med.io import discover_scans, load_scan

    sources = []
    rows: list[dict] = []
    for item in inputs:
        try:
            sources.extend(discover_scans(item, split_4d=split_4d))
        except SGADError as err:
            rows.append({"scan_id": "-", "path": item, "status": "failed", "error": str(err)})
    for source in tqdm(sources, desc="reading scans", unit="scan", disable=quiet, file=sys.stderr):
        row = {"scan_id": source.scan_id, "path": str(source.path), "files": len(source.paths)}
        if source.skip_reason is not None:
            rows.append({**row, "status": "skipped", "error": source.skip_reason})
            continue
        try:
            scan = load_scan(source)
        except SGADError as err:
            rows.append({**row, "status": "failed", "error": str(err)})
            continue
        rows.append(
            {
                **row,
                "status": "ok",
                "modality": scan.modality,
                "shape": list(scan.shape),
                "spacing": [round(s, 4) for s in scan.spacing],
                "orientation": scan.orientation,
                "error": "",
            }
        )
    return rows


def _print_table(rows: list[dict]) -> None:
    columns = ["scan_id", "modality", "shape", "spacing", "orientation", "status", "path"]
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row, line in zip(rows, cells):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
        if row.get("error"):
            print(f"    {row['status']}: {row['error']}")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def cmd_info(args: argparse.Namespace) -> int:
    """List the scans found in the inputs with modality, shape, spacing, orientation and whether they read."""
    rows = _scan_rows(args.inputs, args.split_4d, args.quiet)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(rows)
        counts = {status: sum(r["status"] == status for r in rows) for status in ("ok", "failed", "skipped")}
        print(f"\n{len(rows)} scans: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped")
    return EXIT_SOME_FAILED if any(r["status"] == "failed" for r in rows) else EXIT_OK


# Which bundle each network's training and evaluation live in, and the config layered on train.json per mode.
BUNDLES = {
    "harmonizer": "style_harmonization",
    "detector": "slice_anomaly_detection",
    "restorer": "slice_restoration",
    "pipeline": "sgad_pipeline",
}
TRAINABLE = ("detector", "harmonizer", "restorer")  # the pipeline bundle is inference and evaluation only
TRAIN_LAYERS = {"paired": [], "unpaired": ["train_unpaired.json"]}


def _override(text: str) -> tuple[str, object]:
    """``key=value`` -> (key, value), the value read as JSON when it is JSON (numbers, lists, null)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SGADError(None, f"override {text!r} is not key=value", fix="e.g. --set max_epochs=2")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _bundle_dir(args: argparse.Namespace) -> Path:
    root = Path(args.bundle) if args.bundle else Path(args.bundles) / BUNDLES[args.network]
    if not (root / "configs").is_dir():
        raise SGADError(root, "is not a bundle folder (no configs/)", fix="pass --bundle or --bundles")
    return root


def _run_bundle(bundle: Path, names: Sequence[str], overrides: dict) -> None:
    from monai.bundle import run

    configs = bundle / "configs"
    run(config_file=[str(configs / name) for name in names], logging_file=str(configs / "logging.conf"),
        bundle_root=str(bundle), **overrides)


def cmd_train(args: argparse.Namespace) -> int:
    """Run a bundle's train.json (with the mode's layer) through ``monai.bundle.run``."""
    overrides = dict(_override(item) for item in args.set or [])
    if args.source_dir:
        overrides["source_dir"] = str(args.source_dir)
    if args.reference_dir:
        overrides["reference_dir"] = str(args.reference_dir)
    _run_bundle(_bundle_dir(args), ["train.json", *TRAIN_LAYERS[args.mode]], overrides)
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Run a bundle's evaluate.json: prints the table and writes it as JSON under --out."""
    overrides = dict(_override(item) for item in args.set or [])
    if args.out:
        overrides["output_dir"] = str(args.out)
    _run_bundle(_bundle_dir(args), ["evaluate.json"], overrides)
    return EXIT_OK


def _find_bundles(given: str | None) -> Path:
    """The bundles folder: ``--bundles``, else ``./bundles``, else the one beside the package (a source checkout)."""
    if given is not None:
        root = Path(given)
        if not root.is_dir():
            raise SGADError(root, "bundles folder not found", fix="pass --bundles with the folder holding the bundles")
        return root
    import sgad_med

    candidates = [Path.cwd() / "bundles", Path(sgad_med.__file__).resolve().parents[1] / "bundles"]
    for root in candidates:
        if (root / "style_harmonization").is_dir() or (root / "slice_anomaly_detection").is_dir():
            return root
    raise SGADError(None, f"no bundles folder found (looked in {', '.join(str(c) for c in candidates)})",
                    fix="run from the repository root or pass --bundles PATH (the folder holding style_harmonization,"
                        " slice_anomaly_detection and slice_restoration)")


def cmd_run(args: argparse.Namespace) -> int:
    """Harmonize, detect and restore every scan in the inputs; write the outputs of DESIGN.md's contract."""
    import torch

    from sgad_med.batch import (
        BatchRunner,
        counts_line,
        dist_env,
        failure_lines,
        note_lines,
        rank_device,
        summary_table,
    )
    from sgad_med.pipeline import SGADPipeline

    rank, world_size, _ = dist_env()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        bundles = _find_bundles(args.bundles)
        device = rank_device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SGADError(None, f"--device {args.device}: no CUDA GPU is available here",
                            fix="use --device cpu or auto")
    except (SGADError, RuntimeError) as err:  # nothing ran: a usage problem
        print(f"error: {err}" if isinstance(err, SGADError) else f"error: --device {args.device}: {err}",
              file=sys.stderr)
        return EXIT_USAGE
    options = {"harmonize": not args.no_harmonize, "threshold": args.threshold, "batch_size": args.batch_size,
               "restore_policy": args.restore, "slice_axis": args.slice_axis}
    settings = {"bundles": str(bundles), "device": str(device), "format": args.format, "workers": args.workers,
                "threads": torch.get_num_threads(),
                "world_size": world_size, "on_unsupported": args.on_unsupported, "deidentify": args.deidentify,
                **options}

    def make_pipeline() -> SGADPipeline:
        return SGADPipeline.from_bundles(bundles, device=device, **options)

    runner = BatchRunner(make_pipeline, args.out, format=args.format, overwrite=args.overwrite, workers=args.workers,
                         quiet=args.quiet, debug=args.debug, settings=settings, on_unsupported=args.on_unsupported,
                         deidentify=args.deidentify)
    try:
        entries = runner.run(args.inputs)
    except SGADError as err:
        if args.debug:
            raise
        # The networks could not be loaded (missing bundle or weights): no scan was processed.
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if rank == 0:
        if args.quiet:  # no table, but never silent about a failure
            for line in failure_lines(entries):
                print(line, file=sys.stderr)
            print(counts_line(entries))
        else:
            print(summary_table(entries))
        for line in note_lines(entries):
            print(line, file=sys.stderr)
        print(f"outputs in {args.out} (manifest.json, report.html)")
    return runner.exit_code


def _slice_axis(text: str) -> str:
    from sgad_med.io.slice_axis import parse_slice_axis

    try:
        parse_slice_axis(text)
    except SGADError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _add_bundle_arguments(command: argparse.ArgumentParser, example: str) -> None:
    """Where the bundle is and config overrides: shared by the commands that run a bundle config."""
    command.add_argument("--bundles", default="bundles", help="folder holding the bundles (default: bundles)")
    command.add_argument("--bundle", help="the bundle folder itself (overrides --bundles)")
    command.add_argument("--set", action="append", metavar="KEY=VALUE",
                         help=f"override a config value, e.g. {example} (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sgad-med`` and its subcommands."""
    from sgad_med import __version__

    parser = argparse.ArgumentParser(prog="sgad-med", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sgad-med {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="list the scans in files and folders (NIfTI, DICOM) and check they read")
    info.add_argument("inputs", nargs="+", help="NIfTI files, DICOM files, or folders (searched recursively)")
    info.add_argument("--split-4d", action="store_true", help="list each volume of a 4D NIfTI as its own scan")
    info.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    info.add_argument("--quiet", action="store_true", help="no progress bar")
    info.set_defaults(handler=cmd_info)

    run = commands.add_parser(
        "run", help="harmonize, flag and restore the slices of every scan in the inputs",
        description="Harmonize, detect anomalous slices and restore them, for every scan in the inputs. Writes "
                    "OUT/<scan_id>/ (harmonized.nii.gz, corrected.nii.gz, slices.csv, report.json, figures), "
                    "OUT/manifest.json and OUT/report.html. Resumable: finished scans are skipped on a re-run.")
    run.add_argument("inputs", nargs="+", metavar="INPUT",
                     help="NIfTI files, DICOM files, DICOM series folders, or folders of many scans (recursive)")
    run.add_argument("--out", required=True, type=Path, help="output folder (created)")
    run.add_argument("--format", choices=["nifti", "dicom", "both"], default="nifti",
                     help="nifti (default): NIfTI outputs; dicom/both: also, for DICOM input, a derived series of the "
                          "corrected volume and a Key Object Selection of the flagged slices in dicom/")
    run.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    run.add_argument("--batch-size", type=_positive, default=None, help="slices per forward pass (default: bundles')")
    run.add_argument("--threads", type=_positive, default=None,
                     help="CPU threads per process for the networks (default: torch's, one per core; on a machine "
                          "shared with other jobs 1 can be faster)")
    run.add_argument("--workers", type=_non_negative, default=1,
                     help="threads loading and writing scans while the networks run (0: none; default 1)")
    run.add_argument("--threshold", type=_probability, default=None,
                     help="anomaly threshold in [0, 1] (default: the detector's calibrated one)")
    run.add_argument("--no-harmonize", action="store_true", help="skip harmonization: detect and restore the input")
    run.add_argument("--restore", choices=["flagged", "none"], default="flagged",
                     help="restore the flagged slices (default) or none (detection only)")
    run.add_argument("--bundles", default=None,
                     help="folder holding the bundles (default: ./bundles, else the one beside the package)")
    run.add_argument("--deidentify", action="store_true",
                     help="DICOM outputs without the patient's identity (PS3.15 Annex E basic profile: names, IDs, "
                          "dates, institution removed or replaced, UIDs replaced consistently, private tags removed)")
    run.add_argument("--slice-axis", default="auto", type=_slice_axis,
                     help="auto (default: the acquisition plane: the largest spacing, else the source's slice axis), "
                          "axial, coronal or sagittal")
    run.add_argument("--on-unsupported", choices=["skip", "warn"], default="skip",
                     help="scans outside the networks' domain (parametric maps, tiny images): skip (default, listed "
                          "in manifest.json with the reason) or warn (process them with a warning)")
    run.add_argument("--overwrite", action="store_true", help="redo scans already finished in --out")
    run.add_argument("--quiet", action="store_true",
                     help="no progress bars and no table: only the counts and each failure's reason")
    # SUPPRESS: `sgad-med --debug run` and `sgad-med run --debug` both work (a False default would hide the first).
    run.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    run.set_defaults(handler=cmd_run)

    train = commands.add_parser("train", help="train a network with its bundle's train config")
    train.add_argument("network", choices=TRAINABLE, help="which network")
    train.add_argument("--mode", choices=sorted(TRAIN_LAYERS), default="paired",
                       help="harmonizer: paired (synthetic pairs) or unpaired (your own two folders of scans)")
    train.add_argument("--source-dir", type=Path, help="unpaired: scans from the site(s) to harmonize")
    train.add_argument("--reference-dir", type=Path, help="unpaired: scans in the reference style")
    _add_bundle_arguments(train, example="--set max_epochs=2 --set device=cpu")
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser("evaluate", help="evaluate a network against classical baselines on held-out data")
    evaluate.add_argument("network", choices=sorted(BUNDLES),
                          help="which network, or the whole pipeline (corrupted held-out scans: detection and repair)")
    evaluate.add_argument("--out", type=Path, help="where the JSON results go (default: <bundle>/eval_output)")
    _add_bundle_arguments(evaluate, example="--set n_anatomies=2")
    evaluate.set_defaults(handler=cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sgad-med`` console script; returns the exit code (0 ok, 1 some failed, 2 usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits 2 on bad usage and 0 for --help/--version
        return int(exit_.code or 0)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return int(args.handler(args))
    except Exception as err:
        cause = _user_error(err)
        if cause is None or args.debug:
            raise
        print(f"error: {cause}", file=sys.stderr)
        return EXIT_SOME_FAILED


def _user_error(err: BaseException) -> SGADError | None:
    """The SGADError behind ``err``: MONAI's config parser wraps errors raised inside bundle configs."""
    while err is not None:
        if isinstance(err, SGADError):
            return err
        err = err.__cause__ or err.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
