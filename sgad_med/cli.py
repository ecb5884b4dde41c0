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
}
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

    train = commands.add_parser("train", help="train a network with its bundle's train config")
    train.add_argument("network", choices=sorted(BUNDLES), help="which network")
    train.add_argument("--mode", choices=sorted(TRAIN_LAYERS), default="paired",
                       help="harmonizer: paired (synthetic pairs) or unpaired (your own two folders of scans)")
    train.add_argument("--source-dir", type=Path, help="unpaired: scans from the site(s) to harmonize")
    train.add_argument("--reference-dir", type=Path, help="unpaired: scans in the reference style")
    _add_bundle_arguments(train, example="--set max_epochs=2 --set device=cpu")
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser("evaluate", help="evaluate a network against classical baselines on held-out data")
    evaluate.add_argument("network", choices=sorted(BUNDLES), help="which network")
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
