"""Batch runs of :class:`~sgad_med.pipeline.SGADPipeline` over many scans: the engine of ``sgad-med run``.

The output contract (DESIGN.md) this module keeps, for ``out_dir``:

- ``<scan_id>/`` per scan: ``harmonized.nii.gz``, ``corrected.nii.gz``, ``slices.csv``, ``report.json``, PNG
  figures of the flagged slices, and for DICOM input with ``format`` ``"dicom"``/``"both"`` a derived series of
  the corrected volume plus a Key Object Selection document in ``dicom/``;
- ``manifest.json``: one entry per scan (status ``ok``/``failed``/``skipped`` and the error message);
- ``report.html``: the run's report.

Each scan is written into ``out_dir/.tmp-<scan_id>-<pid>/`` and renamed to ``out_dir/<scan_id>/`` only when
complete, ``report.json`` last: a folder ``<scan_id>/`` holding ``report.json`` is a finished scan, and a run
killed at any moment leaves only hidden temporary folders, which the next run removes before redoing those
scans. Under ``torchrun`` the scans are dealt out over the ranks (sorted by scan id, round robin) and rank 0
merges the ranks' partial manifests after a barrier (across nodes, ``out_dir`` must be on a shared filesystem).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from sgad_med.errors import SGADError, UnsupportedScanError
from sgad_med.io import Scan, ScanSource, discover_scans, load_scan, save_scan
from sgad_med.io.atomic import atomic_file, disk_full_error, is_disk_full
from sgad_med.io.domain import ON_UNSUPPORTED, unsupported_reason
from sgad_med.io.slice_axis import choose_slice_axis
from sgad_med.pipeline import Result, SGADPipeline

FORMATS = ("nifti", "dicom", "both")
FINISHED_MARKER = "report.json"  # written last inside the temporary folder: its presence means "complete"
MANIFEST = "manifest.json"
RUN_REPORT = "report.html"
DISK_FULL_FIX = "free some space or choose another --out, then run again: finished scans are kept"
SLICE_PROGRESS_MAX_SCANS = 20  # above this many scans to process, only the bar over scans is shown
# A rank that finishes early waits at the final barrier for the slowest; gloo's default (30 min) is too short.
BARRIER_TIMEOUT = timedelta(days=7)


def dist_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment; ``(0, 1, 0)`` outside torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def rank_device(device: str | torch.device = "auto") -> torch.device:
    """The device of this process: CUDA (``"auto"`` when present, or ``"cuda"``) becomes ``cuda:LOCAL_RANK``.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...; an explicit index is kept as given.
    """
    if isinstance(device, str) and device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", dist_env()[2] % max(torch.cuda.device_count(), 1))
    return device


def shard(items: Sequence[Any], rank: int, world_size: int, key: Callable[[Any], str]) -> list[Any]:
    """This rank's share of ``items``: sorted by ``key``, every ``world_size``-th from ``rank`` on.

    Deterministic, so every rank computes the same split and no scan is processed twice.
    """
    ordered = sorted(items, key=key)
    return ordered[rank::world_size]


class BatchRunner:
    """Runs a pipeline over every scan in a set of files and folders and writes the contract's outputs.

    Loading (``workers`` threads, a few scans ahead) and writing (``workers`` threads) overlap the networks,
    which run in the calling thread, one scan at a time. At most ``workers`` scans wait to be written, so
    memory stays bounded whatever the number of scans. One scan failing (unreadable, a network error) is
    recorded in the manifest with its error; the others go on.

    Args:
        pipeline: the pipeline, or a function making it (called only when some scan needs processing, so that a
            resumed run with nothing left to do does not load networks).
        out_dir: the output folder (created).
        format: ``"nifti"``, ``"dicom"`` or ``"both"``: the NIfTI files are always written (the contract
            promises them); ``"dicom"``/``"both"`` add ``dicom/`` for DICOM input.
        overwrite: redo scans already finished in ``out_dir`` (default: skip them).
        workers: loader and writer threads; 0 does everything in the calling thread.
        quiet: no progress bars.
        debug: log tracebacks of failed scans.
        settings: recorded in every ``report.json`` and in the manifest (the command's options).
        rank: this process's rank (default: torchrun's ``RANK``).
        world_size: number of processes (default: torchrun's ``WORLD_SIZE``).

    Example::

        runner = BatchRunner(lambda: SGADPipeline.from_bundles("bundles"), "results")
        entries = runner.run(["sample_data"])
        sys.exit(runner.exit_code)
    """

    def __init__(
        self,
        pipeline: SGADPipeline | Callable[[], SGADPipeline],
        out_dir: str | os.PathLike,
        format: str = "nifti",
        overwrite: bool = False,
        workers: int = 1,
        quiet: bool = False,
        debug: bool = False,
        settings: dict[str, Any] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        on_unsupported: str = "skip",
        deidentify: bool = False,
    ) -> None:
        if format not in FORMATS:
            raise SGADError(None, f"unknown output format {format!r}", fix=f"use one of {', '.join(FORMATS)}")
        if on_unsupported not in ON_UNSUPPORTED:
            raise SGADError(None, f"unknown --on-unsupported {on_unsupported!r}",
                            fix=f"use one of {', '.join(ON_UNSUPPORTED)}")
        self.on_unsupported = on_unsupported
        self.deidentify = bool(deidentify)
        env_rank, env_world, _ = dist_env()
        self.rank = env_rank if rank is None else int(rank)
        self.world_size = env_world if world_size is None else int(world_size)
        self._pipeline = pipeline
        self.out_dir = Path(out_dir)
        self.format, self.overwrite, self.workers = format, bool(overwrite), max(int(workers), 0)
        self.quiet, self.debug = quiet, debug
        self.settings = dict(settings or {})
        self.entries: list[dict[str, Any]] = []
        # matplotlib (the report's figures) is not thread-safe: one report is drawn at a time.
        self._report_lock = threading.Lock()

    # --- the pipeline, made when first needed -------------------------------------------------------------

    @property
    def pipeline(self) -> SGADPipeline:
        """The pipeline (made on first use when a factory was given)."""
        if not isinstance(self._pipeline, SGADPipeline) and callable(self._pipeline):
            self._pipeline = self._pipeline()
        return self._pipeline

    @property
    def exit_code(self) -> int:
        """0 when no scan failed (on any rank), 1 otherwise (the rest are still written)."""
        return getattr(self, "_exit_code", _exit_code(self.entries))

    # --- the run ------------------------------------------------------------------------------------------

    def run(self, inputs: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
        """Process every scan found in ``inputs``; write manifest.json and report.html (rank 0).

        Args:
            inputs: NIfTI files, DICOM files, DICOM series folders, folders of many scans.

        Returns:
            The manifest entries of all ranks (on rank 0; a rank's own entries elsewhere).
        """
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SGADError(self.out_dir, f"cannot create the output folder ({err.strerror})",
                            fix="choose a folder you can write to") from err
        sources, input_failures = self.discover(inputs)
        mine = shard(sources, self.rank, self.world_size, key=lambda s: s.scan_id)
        entries = (input_failures if self.rank == 0 else []) + self._process(mine)
        for entry in entries:
            entry["rank"] = self.rank
        if self.world_size > 1:
            entries, self._exit_code = self._merge_ranks(entries)
        else:
            written = self._finish(entries)
            self._exit_code = max(_exit_code(entries), 0 if written else 1)
        self.entries = entries
        return entries

    def _finish(self, entries: list[dict[str, Any]]) -> bool:
        """Write manifest.json and report.html; ``False`` when the disk was too full for them.

        A full disk at the very end must not turn the scans already written into a traceback: each file is
        written atomically (an older complete one stays, or none), the problem is said on stderr, and the run
        exits 1.
        """
        written = True
        for name, write in ((MANIFEST, self.write_manifest), (RUN_REPORT, self.write_run_report)):
            try:
                write(entries)
            except Exception as err:
                if not is_disk_full(err):
                    raise
                written = False
                print(f"error: {name} not written: {disk_full_error(self.out_dir, fix=DISK_FULL_FIX)}",
                      file=sys.stderr)
        return written

    def discover(self, inputs: Sequence[str | os.PathLike]) -> tuple[list[ScanSource], list[dict[str, Any]]]:
        """Every scan in the inputs, once, with ids unique across inputs; failed entries for missing inputs."""
        sources: list[ScanSource] = []
        failures: list[dict[str, Any]] = []
        seen_files: set[tuple[tuple[str, ...], int | None]] = set()
        ids: dict[str, int] = {}
        out_dir = self.out_dir.resolve()
        for item in inputs:
            try:
                found = discover_scans(item)
            except SGADError as err:
                failures.append(_entry(None, [str(item)], "failed", str(err)))
                continue
            for source in found:
                files = tuple(str(Path(p).resolve()) for p in source.paths)
                # The same scan named twice (a folder and a file in it), or our own outputs inside an input folder.
                if (files, source.volume) in seen_files or all(Path(f).is_relative_to(out_dir) for f in files):
                    continue
                seen_files.add((files, source.volume))
                count = ids.get(source.scan_id, 0)
                ids[source.scan_id] = count + 1
                if count:
                    source = ScanSource(source.kind, source.paths, f"{source.scan_id}-{count + 1}", source.series_uid,
                                        source.volume, source.problem, source.skip_reason)
                sources.append(source)
        return sources, failures

    def _process(self, sources: list[ScanSource]) -> list[dict[str, Any]]:
        entries: dict[str, dict[str, Any]] = {}
        todo: list[ScanSource] = []
        for source in sources:
            if source.skip_reason is not None:
                entries[source.scan_id] = _entry(source, None, "skipped", source.skip_reason)
            elif not self.overwrite and self.is_finished(source.scan_id):
                entries[source.scan_id] = self._resumed_entry(source)
            else:
                todo.append(source)
        self._remove_stale({source.scan_id for source in sources})
        if todo:
            # Bars over slices help for a few big scans; over thousands of scans the bar over scans says enough.
            self.pipeline.progress = not self.quiet and len(todo) <= SLICE_PROGRESS_MAX_SCANS
        position = self.rank if self.world_size > 1 else None
        bar = tqdm(total=len(todo), desc="scans" if self.world_size == 1 else f"rank {self.rank} scans", unit="scan",
                   disable=self.quiet, file=sys.stderr, position=position)
        with _pool(self.workers, "sgad-load") as loader, _pool(self.workers, "sgad-write") as writer:
            loads: deque[tuple[ScanSource, Future | None]] = deque()
            writes: deque[tuple[ScanSource, Future]] = deque()
            queue = iter(todo)

            def refill() -> None:
                # Keep `workers` scans loading ahead of the networks (bounded memory).
                while len(loads) < max(self.workers, 1):
                    source = next(queue, None)
                    if source is None:
                        return
                    loads.append((source, loader.submit(_load, source) if loader is not None else None))

            def collect(block: bool) -> None:
                while writes and (block or writes[0][1].done() or len(writes) > max(self.workers, 1)):
                    source, future = writes.popleft()
                    entries[source.scan_id] = self._outcome(source, future)
                    bar.update()

            refill()
            while loads:
                source, loading = loads.popleft()
                refill()
                started = time.perf_counter()
                try:
                    scan, load_seconds = loading.result() if loading is not None else _load(source)
                    unsupported = unsupported_reason(scan, choose_slice_axis(scan, self.pipeline.slice_axis).index)
                    if unsupported is not None and self.on_unsupported == "skip":
                        entries[source.scan_id] = _unsupported_entry(source, unsupported)
                        bar.update()
                        continue
                    result = self.pipeline(scan)
                    result.timings["load"] = load_seconds
                    if unsupported is not None:  # --on-unsupported warn: processed, and said so everywhere
                        tqdm.write(f"warning: {source.scan_id}: {unsupported}; processed anyway "
                                   "(--on-unsupported warn)", file=sys.stderr)
                        result.settings["unsupported"] = unsupported
                except UnsupportedScanError as err:  # readable, but not a scan the networks handle
                    entries[source.scan_id] = _unsupported_entry(source, err.problem, str(err))
                    bar.update()
                    continue
                except Exception as err:  # one scan failing never stops the batch
                    entries[source.scan_id] = self._failed(source, err, time.perf_counter() - started)
                    bar.update()
                    continue
                if writer is None:
                    entries[source.scan_id] = self._outcome(source, _done(self._write, source, result))
                    bar.update()
                else:
                    writes.append((source, writer.submit(self._write, source, result)))
                    del result  # the writer holds it; drop ours so memory is freed once written
                    collect(block=False)
            collect(block=True)
        bar.close()
        return [entries[s.scan_id] for s in sources if s.scan_id in entries]

    def _outcome(self, source: ScanSource, future: Future) -> dict[str, Any]:
        try:
            return future.result()
        except Exception as err:
            return self._failed(source, err, None)

    def _failed(self, source: ScanSource, err: BaseException, seconds: float | None) -> dict[str, Any]:
        message = str(err) if isinstance(err, SGADError) else f"{type(err).__name__}: {err}"
        if self.debug:  # --debug: the traceback, written between the progress bars
            trace = "".join(traceback.format_exception(type(err), err, err.__traceback__))
            tqdm.write(f"scan {source.scan_id} failed:\n{trace}", file=sys.stderr)
        entry = _entry(source, None, "failed", message)
        if seconds is not None:
            entry["seconds"] = round(seconds, 3)
        return entry

    # --- one scan's outputs -------------------------------------------------------------------------------

    def scan_dir(self, scan_id: str) -> Path:
        """Where a finished scan's outputs are."""
        return self.out_dir / scan_id

    def is_finished(self, scan_id: str) -> bool:
        """Whether ``<scan_id>/`` is complete: it appeared by rename with its report.json inside."""
        return (self.scan_dir(scan_id) / FINISHED_MARKER).is_file()

    def _temp_dir(self, scan_id: str) -> Path:
        return self.out_dir / f".tmp-{scan_id}-{os.getpid()}"

    def _remove_stale(self, scan_ids: set[str]) -> None:
        """Remove the temporary folders a killed run left for these scans.

        Only this process handles these scans (ranks share none), so any such folder is a leftover. Two separate
        runs writing into one output folder at the same time are not supported.
        """
        for path in list(self.out_dir.glob(".tmp-*")) + list(self.out_dir.glob(".old-*")):
            stem, _, pid = path.name[len(".tmp-"):].rpartition("-")
            if stem in scan_ids and pid.isdigit() and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
        if self.rank == 0:
            # A run killed while writing manifest.json or report.html (atomic_file's ".tmp-<name>.*") leaves that
            # file; only rank 0 writes them, after every rank has passed this point, so any such file is stale.
            for name in (MANIFEST, RUN_REPORT):
                for path in self.out_dir.glob(f".tmp-{name}.*"):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()

    def _write(self, source: ScanSource, result: Result) -> dict[str, Any]:
        """Write one scan's outputs into a temporary folder, then rename it to ``<scan_id>/``."""
        from sgad_med.report import write_scan_outputs

        started = time.perf_counter()
        scan_id = source.scan_id
        tmp = self._temp_dir(scan_id)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            scan = result.scan
            # Without harmonization the "harmonized" volume is the input itself: the contract promises the file.
            save_scan(result.harmonized if result.harmonized is not None else scan, tmp / "harmonized.nii.gz")
            save_scan(result.corrected, tmp / "corrected.nii.gz")
            dicom = None
            if self.format in ("dicom", "both"):
                dicom = self._write_dicom(scan, result, tmp / "dicom") if scan.dicom_headers else {
                    "derived_series": None, "key_object": None,
                    "note": "no DICOM written: the input is not DICOM, so there is no DICOM study to derive a series "
                            "from (the NIfTI outputs are written)"}
            result.timings["write"] = time.perf_counter() - started
            inputs = [str(p) for p in source.paths]
            with self._report_lock:
                write_scan_outputs(tmp, result, inputs, {**self.settings, **result.settings, "format": self.format},
                                   dicom=dicom)
            if not (tmp / FINISHED_MARKER).is_file():
                raise SGADError(tmp, f"the report writer did not write {FINISHED_MARKER}")
            self._publish(tmp, self.scan_dir(scan_id))
        except Exception as err:
            if is_disk_full(err):  # the manifest gets one clear line, not "[Errno 28]" naming a temporary file
                raise disk_full_error(self.out_dir, fix=f"{scan_id} was not written; {DISK_FULL_FIX}") from err
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # nothing half written stays, whatever failed
        entry = _entry(source, [str(source.path)], "ok", "")
        entry["dir"] = scan_id
        entry.update(_counts(result), seconds=round(sum(v for k, v in result.timings.items() if k != "total"), 3))
        entry["timings"] = {k: round(v, 3) for k, v in result.timings.items()}
        if dicom is not None and dicom.get("note"):
            entry["dicom_note"] = dicom["note"]
        if result.settings.get("unsupported"):
            entry["warning"] = f"outside the networks' domain, processed anyway: {result.settings['unsupported']}"
        entry["slice_axis"] = result.slice_axis.name
        return entry

    def _write_dicom(self, scan: Scan, result: Result, folder: Path) -> dict[str, Any]:
        """Write the derived series and the Key Object Selection; say what was written and, if not, why."""
        from sgad_med.io.key_object import write_key_object

        salt = self._deidentify_salt() if self.deidentify else None
        files = save_scan(result.corrected, folder, format="dicom", description="corrected", deidentify_salt=salt)
        key_object = write_key_object(scan, result, folder / "KO00001.dcm", derived_files=files,
                                      deidentified=self.deidentify)
        written = {"derived_series": f"{folder.name}/", "files": len(files), "key_object": None, "note": None,
                   "deidentified": self.deidentify}
        if key_object is None:  # a Key Object Selection must reference at least one image
            written["note"] = ("no Key Object Selection written: no slice was flagged, and a Key Object Selection "
                               "must reference at least one image")
        else:
            written["key_object"] = f"{folder.name}/{key_object.name}"
        return written

    def _deidentify_salt(self) -> str:
        """The secret that makes this output folder's pseudonyms and replacement UIDs: made once, kept in
        ``DIR/.deidentify-key`` (0600) so that re-runs and resumed runs into ``DIR`` stay consistent, and runs into
        other folders cannot be linked to them. Delete it to make the pseudonyms irreversible for good."""
        import secrets

        with self._report_lock:
            key = self.out_dir / ".deidentify-key"
            if not key.is_file():
                with atomic_file(key) as tmp:
                    tmp.write_text(secrets.token_hex(16))
                    os.chmod(tmp, 0o600)
            return key.read_text().strip()

    def _publish(self, tmp: Path, target: Path) -> None:
        """Rename the finished temporary folder to ``target``, replacing an old one (``--overwrite``)."""
        old: Path | None = None
        if target.exists():
            old = self.out_dir / f".old-{target.name}-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def _resumed_entry(self, source: ScanSource) -> dict[str, Any]:
        entry = _entry(source, [str(source.path)], "skipped",
                       f"already processed in {self.scan_dir(source.scan_id)} (pass --overwrite to redo it)")
        entry["resumed"], entry["dir"] = True, source.scan_id
        with contextlib.suppress(OSError, ValueError):
            report = json.loads((self.scan_dir(source.scan_id) / FINISHED_MARKER).read_text())
            counts = report.get("counts", {}) if isinstance(report, dict) else {}
            for key in ("n_slices", "n_flagged", "n_restored"):
                value = counts.get(key, counts.get(key.removeprefix("n_")))
                if isinstance(value, int):
                    entry[key] = value
        return entry

    # --- the run's files ----------------------------------------------------------------------------------

    def _merge_ranks(self, entries: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        """Every rank writes its partial manifest; after a barrier rank 0 merges them and writes the run's files.

        Returns:
            The merged entries (rank 0; the rank's own elsewhere) and the run's exit code, the same on every rank
            (so torchrun does not stop rank 0 while it writes because another rank exited 1 first).
        """
        import torch.distributed as dist

        created = not dist.is_initialized()
        if created:
            # gloo works with or without GPUs; barriers and one integer are all that is exchanged.
            dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
        try:
            partial = self.out_dir / f".manifest-rank{self.rank}.json"
            with atomic_file(partial, overwrite=True) as tmp:
                tmp.write_text(json.dumps(entries, indent=1))
            dist.barrier()
            code = [0]
            if self.rank == 0:
                merged: list[dict[str, Any]] = []
                for rank in range(self.world_size):
                    path = self.out_dir / f".manifest-rank{rank}.json"
                    merged += json.loads(path.read_text())
                    path.unlink()
                entries = merged
                written = self._finish(entries)
                code = [max(_exit_code(entries), 0 if written else 1)]
            dist.broadcast_object_list(code, src=0)
        finally:
            if created:
                dist.destroy_process_group()
        return entries, int(code[0])

    def manifest(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        """The content of manifest.json."""
        from sgad_med import __version__

        counts = {status: sum(e["status"] == status for e in entries) for status in ("ok", "failed", "skipped")}
        return {
            "sgad_med_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "out_dir": str(self.out_dir),
            "world_size": self.world_size,
            "settings": self.settings,
            "counts": counts,
            "scans": sorted(entries, key=lambda e: (e["scan_id"] is None, e["scan_id"] or "", e["inputs"])),
        }

    def write_manifest(self, entries: list[dict[str, Any]]) -> Path:
        """Write ``manifest.json`` atomically."""
        path = self.out_dir / MANIFEST
        with atomic_file(path, overwrite=True) as tmp:
            tmp.write_text(json.dumps(self.manifest(entries), indent=2))
        return path

    def write_run_report(self, entries: list[dict[str, Any]]) -> Path:
        """Write ``report.html`` (the report module draws it)."""
        from sgad_med.report import write_run_report

        return write_run_report(self.out_dir, self.manifest(entries)["scans"])


def _entry(source: ScanSource | None, inputs: list[str] | None, status: str, error: str) -> dict[str, Any]:
    """A manifest entry; counts are filled in for scans that were processed."""
    if inputs is None:
        inputs = [] if source is None else [str(source.path)]
    return {
        "scan_id": None if source is None else source.scan_id,
        "inputs": inputs,
        "status": status,
        "error": error,
        "n_slices": 0,
        "n_flagged": 0,
        "n_restored": 0,
        "dir": None,  # set for scans whose folder exists (written now or by an earlier run)
    }


def _unsupported_entry(source: ScanSource, reason: str, message: str | None = None) -> dict[str, Any]:
    """A skipped entry for a scan outside the networks' domain (``--on-unsupported skip``)."""
    entry = _entry(source, None, "skipped", f"not processed: {message or f'{source.path}: {reason}'}"
                   " (sgad-med run --on-unsupported warn processes such scans anyway, where they can be read)")
    entry["unsupported"] = reason
    return entry


def _exit_code(entries: Sequence[dict[str, Any]]) -> int:
    return 1 if any(entry["status"] == "failed" for entry in entries) else 0


def _counts(result: Result) -> dict[str, Any]:
    return {
        "n_slices": int(len(result.scores)),
        "n_flagged": int(result.flagged.sum()),
        "n_restored": int(result.restored.sum()),
        "n_flagged_by_harmonization": sum(c == "harmonization" for c in result.cause),
        "modality": result.scan.modality,
        "shape": list(result.scan.shape),
    }


def _load(source: ScanSource) -> tuple[Scan, float]:
    started = time.perf_counter()
    scan = load_scan(source)
    return scan, time.perf_counter() - started


def _done(function: Callable[..., Any], *args: Any) -> Future:
    """Run ``function`` now and wrap its outcome in a finished Future (the ``workers=0`` path)."""
    future: Future = Future()
    try:
        future.set_result(function(*args))
    except Exception as err:
        future.set_exception(err)
    return future


@contextlib.contextmanager
def _pool(workers: int, name: str) -> Iterator[ThreadPoolExecutor | None]:
    if workers <= 0:
        yield None
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        yield pool


def summary_table(entries: Sequence[dict[str, Any]]) -> str:
    """The table ``sgad-med run`` prints at the end: one row per scan, then the counts."""
    columns = ["scan_id", "status", "slices", "flagged", "restored", "seconds"]
    rows = [[str(e["scan_id"] or "-"), e["status"], str(e.get("n_slices", 0)), str(e.get("n_flagged", 0)),
             str(e.get("n_restored", 0)), f"{e['seconds']:.1f}" if "seconds" in e else "-"] for e in entries]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    for entry, row in zip(entries, rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if entry["error"] and entry["status"] == "failed":
            lines.append(f"    failed: {entry['error']}")
    lines.append("\n" + counts_line(entries))
    return "\n".join(lines)


def counts_line(entries: Sequence[dict[str, Any]]) -> str:
    """``N scans: a ok, b failed, c skipped``: the last line of the summary, and all ``--quiet`` prints."""
    counts = {status: sum(e["status"] == status for e in entries) for status in ("ok", "failed", "skipped")}
    return f"{len(entries)} scans: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped"


def failure_lines(entries: Sequence[dict[str, Any]]) -> list[str]:
    """One line per failed scan with its error: printed even with ``--quiet``, which hides only the table."""
    return [f"failed: {e['scan_id'] or '-'}: {e['error']}" for e in entries if e["status"] == "failed"]


def note_lines(entries: Sequence[dict[str, Any]]) -> list[str]:
    """What was asked for but not written, grouped by reason (``--format dicom`` on NIfTI, no Key Object)."""
    by_note: dict[str, list[str]] = {}
    for entry in entries:
        if entry.get("dicom_note"):
            by_note.setdefault(entry["dicom_note"], []).append(str(entry["scan_id"]))
    lines = []
    for note, ids in by_note.items():
        named = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
        lines.append(f"note: {len(ids)} scan{'s' if len(ids) > 1 else ''} ({named}): {note}")
    return lines
