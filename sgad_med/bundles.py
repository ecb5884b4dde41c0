"""Loading a trained network from a MONAI bundle folder: the config's ``network_def`` plus ``models/model.pt``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from torch import nn

from sgad_med.errors import SGADError


class BundleError(SGADError):
    """A bundle folder lacks its config or weights, or they do not fit together."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is CUDA when present, else CPU; anything else is passed to :class:`torch.device`."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def bundle_config(bundle: str | os.PathLike, config: str = "inference.json",
                  overlays: Sequence[str] = ()) -> ConfigParser:
    """Parse ``configs/<config>`` of a bundle folder, then each of ``overlays`` (``configs/<name>`` files whose keys
    replace the config's, as ``monai.bundle run --config_file "[a, b]"`` layers them), with ``bundle_root`` set to
    that folder."""
    root = Path(bundle)
    paths = [root / "configs" / name for name in (config, *overlays)]
    for path in paths:
        if not path.is_file():
            raise BundleError(root, f"has no configs/{path.name}",
                              fix="point at a bundle folder such as bundles/<name>")
    parser = ConfigParser()
    parser.read_config([str(path) for path in paths])
    parser["bundle_root"] = str(root)
    return parser


SHARED_TRANSFORMS = "transforms"
"""The folder beside ``bundles/`` holding the transform chains every bundle shares (DESIGN.md, layout)."""


def shared_fragment_path(bundle_root: str | os.PathLike, fragment: str) -> Path:
    """Where ``transforms/<fragment>.json`` is for a bundle: beside the bundles folder holding it
    (``<bundle_root>/../../transforms``, the repository layout), else beside the package (a source checkout, for
    bundle folders copied elsewhere).

    Raises:
        BundleError: it is in neither place.
    """
    name = f"{fragment}.json"
    candidates = [Path(bundle_root).resolve().parents[1] / SHARED_TRANSFORMS / name,
                  Path(__file__).resolve().parents[1] / SHARED_TRANSFORMS / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise BundleError(candidates[0], f"shared transform fragment not found (looked in "
                      f"{', '.join(str(c.parent) for c in candidates)})",
                      fix=f"keep the bundle in the repository's bundles/ folder, beside {SHARED_TRANSFORMS}/{name}")


def shared_transform(bundle_root: str | os.PathLike, fragment: str, key: str) -> Any:
    """Instantiate ``key`` of the shared config fragment ``transforms/<fragment>.json``.

    Bundle configs take their preprocessing from here, so that one file defines it for every bundle (training,
    inference and evaluation alike), e.g. ``"normalizer": "$sgad_med.bundles.shared_transform(@bundle_root,
    'scan_normalization', 'normalizer')"``.

    Args:
        bundle_root: the bundle folder (see :func:`shared_fragment_path`).
        fragment: the fragment's file name without ``.json``.
        key: the id inside the fragment to instantiate.

    Raises:
        BundleError: the fragment or the key is missing.
    """
    path = shared_fragment_path(bundle_root, fragment)
    parser = ConfigParser()
    parser.read_config(str(path))
    if key not in parser:
        raise BundleError(path, f"has no {key!r}", fix=f"define {key!r} in it")
    return parser.get_parsed_content(key)


def load_bundle_network(
    bundle: str | os.PathLike, device: str | torch.device = "auto", weights: str | os.PathLike | None = None,
    overlays: Sequence[str] = (),
) -> tuple[nn.Module, ConfigParser]:
    """Build a bundle's ``network_def`` and load its trained weights (``models/model.pt``), in eval mode.

    Checkpoints load with ``weights_only=True`` (no pickled code runs) and ``map_location`` set, so weights
    trained on a GPU load on a CPU.

    Args:
        bundle: the bundle folder.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        weights: another weights file instead of ``models/model.pt``.
        overlays: config files layered over ``inference.json`` (e.g. the harmonization bundle's
            ``unet_generator.json``, which selects the previous generator); their ``checkpoint`` key, when they set
            one, names the weights.

    Returns:
        The network on ``device`` and the parsed inference config.
    """
    parser = bundle_config(bundle, overlays=overlays)
    target = resolve_device(device)
    network: nn.Module = parser.get_parsed_content("network_def", instantiate=True)
    if weights is None and overlays and "checkpoint" in parser:
        weights = parser.get_parsed_content("checkpoint")
    path = Path(weights) if weights is not None else Path(bundle) / "models" / "model.pt"
    if not path.is_file():
        raise BundleError(path, "weights file not found", fix="train the bundle or pass weights=")
    try:
        state: Any = torch.load(path, map_location=target, weights_only=True)
    except Exception as err:  # a damaged or foreign file: say which
        raise BundleError(path, f"cannot be loaded as weights ({type(err).__name__}: {err})") from err
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        raise BundleError(path, f"does not fit the bundle's network_def ({err})") from err
    return network.to(target).eval(), parser
