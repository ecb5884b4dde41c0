"""Exporting a bundle's trained network to TorchScript (and ONNX where the network allows it), and loading it back.

The three network bundles script as they are (``torch.jit.script``, no tracing): tracing would freeze the
harmonizer's output size and the restorer's data-dependent repairs (spike removal, saturation, re-registration)
into the graph. A TorchScript file written here is the one ``python -m monai.bundle ckpt_export network_def ...``
writes (each bundle's ``docs/README.md``, "Export"): the scripted network with the bundle's ``metadata.json`` and
``inference.json`` stored inside it.

A loaded module is called exactly like the eager network, so it can replace ``component.network`` in the
pipeline's components: the generator and the restorer take ``[N, C, H, W]`` stacks, and the detector keeps the
methods and buffers the :class:`~sgad_med.detector.SliceAnomalyDetector` calls (``encode``, ``sequence_logits``,
``calibrated_probability``, ``threshold``). :func:`runner_from_export` builds such a component with the bundle's
normalizer and inferer, as :meth:`~sgad_med.slice_runner.SliceNetworkRunner.from_bundle` does for the eager one.

TorchScript files are not pickles, but they hold code that the TorchScript interpreter runs: load only files you
exported yourself or trust, as for any model file.

Example::

    from sgad_med.export import export_torchscript, load_torchscript
    path = export_torchscript("bundles/slice_restoration", "restorer.ts")
    network = load_torchscript(path, device="cpu")
    clean = network(torch.rand(4, 5, 128, 128))     # as SliceRestorationNet
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sgad_med.bundles import BundleError, bundle_config, load_bundle_network, resolve_device


@contextlib.contextmanager
def _quiet_jit():
    """Silence torch's deprecation warnings of ``torch.jit`` (2.10+: "switch to torch.export"); TorchScript is what
    ``monai.bundle ckpt_export`` writes and what C++ and Triton deployments load."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=DeprecationWarning)
        yield


#: The config files stored inside an export, as ``ckpt_export`` stores them (file name -> JSON).
STORED_CONFIGS = ("metadata.json", "inference.json")


def script_network(network: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script`` of a network in eval mode (the network itself is put in eval mode too)."""
    network = network.eval()
    with torch.no_grad(), _quiet_jit():
        return torch.jit.script(network)


def export_torchscript(bundle: str | os.PathLike, out_path: str | os.PathLike, weights: str | os.PathLike | None = None,
                       overlays: Sequence[str] = ()) -> Path:
    """Script a bundle's ``network_def`` with its trained weights and save it with the bundle's configs inside.

    Args:
        bundle: the bundle folder (``configs/inference.json``, ``models/model.pt``).
        out_path: the TorchScript file to write (``.ts`` by convention; its folder is created).
        weights: another weights file instead of ``models/model.pt``.
        overlays: config files layered over ``inference.json`` (see :func:`~sgad_med.bundles.load_bundle_network`).

    Returns:
        The path written.

    Raises:
        BundleError: the bundle's config or weights are missing or do not fit.
    """
    network, _ = load_bundle_network(bundle, "cpu", weights=weights, overlays=overlays)
    scripted = script_network(network)
    extra_files = {}
    for name in STORED_CONFIGS:
        path = Path(bundle) / "configs" / name
        if path.is_file():  # stored as ckpt_export stores them: JSON text
            extra_files[name] = json.dumps(json.loads(path.read_text())).encode()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_jit():
        torch.jit.save(scripted, str(out), _extra_files=extra_files)
    return out


def load_torchscript(path: str | os.PathLike, device: str | torch.device = "auto") -> torch.jit.ScriptModule:
    """Load an exported network onto ``device`` (``"auto"``: CUDA when present), in eval mode.

    Raises:
        BundleError: the file is missing or is not a TorchScript file.
    """
    path = Path(path)
    if not path.is_file():
        raise BundleError(path, "exported network not found", fix="export it first (see the bundle's docs/README.md)")
    target = resolve_device(device)
    try:
        with _quiet_jit():
            module = torch.jit.load(str(path), map_location=target)
    except Exception as err:  # a damaged or foreign file: say which
        raise BundleError(path, f"cannot be loaded as TorchScript ({type(err).__name__}: {err})") from err
    return module.eval()


def export_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The configs stored in an export: ``{"metadata": {...}, "inference": {...}}`` (those present)."""
    extra = dict.fromkeys(STORED_CONFIGS, "")
    with _quiet_jit():
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return {Path(name).stem: json.loads(text) for name, text in extra.items() if text}


def runner_from_export(runner_class: type, bundle: str | os.PathLike, path: str | os.PathLike,
                       device: str | torch.device = "auto", **kwargs: Any) -> Any:
    """A pipeline component (``Harmonizer``, ``SliceAnomalyDetector``, ``SliceRestorer``) around an exported
    network, with the ``inferer`` and ``normalizer`` of the bundle's ``inference.json`` unless given, as
    :meth:`~sgad_med.slice_runner.SliceNetworkRunner.from_bundle` builds it around the eager network.

    Example::

        from sgad_med.restorer import SliceRestorer
        restorer = runner_from_export(SliceRestorer, "bundles/slice_restoration", "restorer.ts", device="cpu")
    """
    network = load_torchscript(path, device)
    parser = bundle_config(bundle)
    for name in ("inferer", "normalizer"):
        if name not in kwargs and name in parser:
            kwargs[name] = parser.get_parsed_content(name)
    return runner_class(network, device=device, **kwargs)


def onnx_available() -> bool:
    """Whether ``onnx`` and ``onnxruntime`` can be imported (neither is a dependency of sgad_med)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _DetectorEncoder(nn.Module):
    """The detector's per-slice encoder as a module of its own (what ONNX can export of the detector)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, slices: torch.Tensor, previous: torch.Tensor, following: torch.Tensor) -> torch.Tensor:
        return self.network.encode(slices, previous, following)


#: The bundles whose network ONNX can export (with the TorchScript-based exporter; onnx and onnxruntime measured
#: 1.23.2 and 1.32.0): only the detector's per-slice encoder (``encode``, batch and slice size dynamic); its
#: ``sequence_logits`` (a median over the scan's slices, small) stays in PyTorch. Left out: the harmonizer (the
#: exporter cannot translate ``adaptive_avg_pool2d`` after replication padding, even at a fixed input size) and the
#: restorer (its repairs use FFTs, ``nanmedian``, ``linalg.solve`` and loops over data-dependent shifts). The
#: ``torch.export``-based exporter (``dynamo=True``, needs ``onnxscript``) was not tried.
ONNX_EXPORTABLE = ("slice_anomaly_detection",)


def export_onnx(bundle: str | os.PathLike, out_path: str | os.PathLike, height: int = 128, width: int = 128,
                batch: int = 2, opset_version: int = 18) -> Path:
    """Export the detector bundle's slice encoder to ONNX (see :data:`ONNX_EXPORTABLE`): inputs ``slices``,
    ``previous``, ``following`` ``[N, H, W]`` (batch and slice size dynamic), output ``features`` ``[N, F]``, as
    :meth:`SliceSequenceNet.encode <sgad_med.networks.SliceSequenceNet.encode>`.

    Args:
        bundle: the ``slice_anomaly_detection`` bundle folder.
        out_path: the ``.onnx`` file to write.
        height: slice height of the example input.
        width: slice width of the example input.
        batch: batch size of the example input.
        opset_version: ONNX opset.

    Returns:
        The path written.

    Raises:
        BundleError: the bundle is not one ONNX can export.
    """
    name = Path(bundle).resolve().name
    if name not in ONNX_EXPORTABLE:
        raise BundleError(bundle, "has no ONNX export", fix=f"use TorchScript; ONNX covers {ONNX_EXPORTABLE}")
    network, _ = load_bundle_network(bundle, "cpu")
    generator = torch.Generator().manual_seed(0)
    inputs = tuple(torch.rand(batch, height, width, generator=generator) for _ in range(3))
    names = ["slices", "previous", "following"]
    axes = {**{n: {0: "batch", 1: "height", 2: "width"} for n in names}, "features": {0: "batch"}}
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(_DetectorEncoder(network).eval(), inputs, str(out), input_names=names,
                          output_names=["features"], dynamic_axes=axes, opset_version=opset_version, dynamo=False)
    import onnx

    model = onnx.load(str(out))  # record which weights it was made from: a stale export is never used
    entry = model.metadata_props.add()
    entry.key, entry.value = WEIGHTS_KEY, file_sha256(Path(bundle) / "models" / "model.pt")
    onnx.save(model, str(out))
    return out


#: The ONNX metadata key holding the SHA-256 of the ``model.pt`` an export was made from.
WEIGHTS_KEY = "sgad_med_weights_sha256"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OnnxEncoder:
    """The detector's slice encoder run by ONNX Runtime: callable as ``SliceSequenceNet.encode`` is.

    On the CPU it encodes slices 2.7-3.2x faster than PyTorch (``benchmarks/bench_runtimes.py``), and the encoder
    is the largest share of the detector's time, which runs twice per scan (input and harmonized).

    Args:
        path: the ``.onnx`` file written by :func:`export_onnx`.
        threads: ONNX Runtime's intra-op threads (``None``: torch's current number, so both runtimes use alike).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        self.path = Path(path)
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, slices: torch.Tensor, previous: torch.Tensor | None = None,
                 following: torch.Tensor | None = None) -> torch.Tensor:
        feeds = {"slices": slices, "previous": slices if previous is None else previous,
                 "following": slices if following is None else following}
        feeds = {name: value.detach().cpu().float().numpy() for name, value in feeds.items()}
        return torch.from_numpy(self.session.run(["features"], feeds)[0])


def matching_onnx_encoder(bundle: str | os.PathLike, weights: str | os.PathLike | None = None) -> OnnxEncoder | None:
    """An :class:`OnnxEncoder` of the bundle's ``models/encoder.onnx`` when ONNX Runtime is installed and the file
    was exported from the weights in use (``weights``, else ``models/model.pt``); ``None`` otherwise."""
    path = Path(bundle) / "models" / "encoder.onnx"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    if not path.is_file():
        return None
    encoder = OnnxEncoder(path)  # one session: read its metadata, then run it
    recorded = encoder.session.get_modelmeta().custom_metadata_map
    source = Path(weights) if weights is not None else Path(bundle) / "models" / "model.pt"
    return encoder if recorded.get(WEIGHTS_KEY) == file_sha256(source) else None
