"""sgad_med: harmonize CT/MR scan style with a GAN, flag anomalous slices, restore them. A MONAI plugin.

The public names load on first use (PEP 562): ``import sgad_med`` and ``sgad-med --help`` stay instant, and
torch and MONAI (seconds to import) load only when a scan is read or a network is built.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("sgad-med")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

from sgad_med.errors import (  # noqa: E402  (errors.py imports nothing heavy)
    InvalidScanDataError,
    MissingDecoderError,
    NoScansFoundError,
    ScanReadError,
    ScanWriteError,
    SGADError,
    UnsupportedScanError,
)

# public name -> the module that defines it
_LAZY = {
    "Scan": "sgad_med.io",
    "ScanSource": "sgad_med.io",
    "discover_scans": "sgad_med.io",
    "load_scan": "sgad_med.io",
    "save_scan": "sgad_med.io",
    "SGADPipeline": "sgad_med.pipeline",
    "Result": "sgad_med.pipeline",
}

if TYPE_CHECKING:  # for type checkers and IDEs: the names as if imported eagerly
    from sgad_med.io import Scan, ScanSource, discover_scans, load_scan, save_scan
    from sgad_med.pipeline import Result, SGADPipeline


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once loaded, a plain attribute
        return value
    if not name.startswith("_"):  # a subpackage, as `import sgad_med; sgad_med.io.load_scan` expects
        try:
            return importlib.import_module(f"sgad_med.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"sgad_med.{name}":
                raise
    raise AttributeError(f"module 'sgad_med' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    "SGADError",
    "ScanReadError",
    "UnsupportedScanError",
    "MissingDecoderError",
    "InvalidScanDataError",
    "NoScansFoundError",
    "ScanWriteError",
    "Scan",
    "ScanSource",
    "discover_scans",
    "load_scan",
    "save_scan",
    "SGADPipeline",
    "Result",
]
