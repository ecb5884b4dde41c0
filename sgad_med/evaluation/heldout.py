"""The held-out synthetic split every evaluation draws from: anatomies and styles never used in training."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

__all__ = ["check_protocol_normalization", "heldout_pairs", "normalize_mr", "synthetic_pairs"]


def normalize_mr(volume: np.ndarray) -> np.ndarray:
    """Robust-percentile normalization, exactly as a real MR scan gets at inference with the shipped settings
    (``transforms/scan_normalization.json``, equal to :class:`~sgad_med.transforms.ScanNormalize`'s defaults)."""
    from sgad_med.transforms.intensity import normalize

    return np.asarray(normalize(np.asarray(volume)[None], modality="MR")[0])[0].astype(np.float32)


def check_protocol_normalization(*runners: Any) -> None:
    """Refuse to score networks that normalize scans otherwise than the evaluation protocols do.

    The protocols hand the networks cases normalized as :func:`normalize_mr` does (the package defaults). A bundle
    retrained under an edited ``transforms/scan_normalization.json`` would be scored on intensities it never saw,
    and its table would say nothing; this says so instead.

    Args:
        runners: harmonizers, detectors, restorers (objects without a ``normalizer`` are not checked).

    Raises:
        SGADError: a runner's normalizer settings differ from the package defaults.
    """
    from sgad_med.errors import SGADError
    from sgad_med.transforms.intensity import ScanNormalize

    expected = ScanNormalize().settings
    for runner in runners:
        normalizer = getattr(runner, "normalizer", None)
        if normalizer is not None and normalizer.settings != expected:
            raise SGADError(None, f"{type(runner).__name__} normalizes scans with {normalizer.settings}, the "
                            f"evaluation protocol with {expected}",
                            fix="evaluate with the shipped transforms/scan_normalization.json, or extend "
                                "sgad_med.evaluation.heldout.normalize_mr to the new settings")


def heldout_pairs(
    n_anatomies: int,
    styles_per_anatomy: int = 1,
    spacing: float = 2.0,
    seed: int = 0,
    mni_dir: str | os.PathLike | None = None,
) -> Iterator[dict]:
    """Synthetic pairs of held-out anatomies in held-out styles, in a fixed order.

    Anatomy ``a`` is ``HELDOUT_ANATOMY_SEEDS[a]``; its styles have seeds ``a * styles_per_anatomy + s`` in the
    ``"heldout"`` split. Each item is :meth:`SyntheticStyleGenerator.pair`'s dict (``source``, ``target``,
    ``anatomy_seed``, ``style_seed``, ``style``, ``style_params``, ``affine``, ...) plus ``labels``, the
    anatomy's hard tissue labels (for oracles).

    Raises:
        ValueError: ``n_anatomies`` outside the held-out seeds, or ``styles_per_anatomy`` below 1.
    """
    from sgad_med.data.synthetic import HELDOUT_ANATOMY_SEEDS

    if not 1 <= n_anatomies <= len(HELDOUT_ANATOMY_SEEDS):
        raise ValueError(f"n_anatomies must be in [1, {len(HELDOUT_ANATOMY_SEEDS)}], got {n_anatomies}")
    yield from synthetic_pairs(HELDOUT_ANATOMY_SEEDS[:n_anatomies], "heldout", styles_per_anatomy, spacing, seed,
                               mni_dir)


def synthetic_pairs(
    anatomy_seeds: Sequence[int],
    split: str,
    styles_per_anatomy: int = 1,
    spacing: float = 2.0,
    seed: int = 0,
    mni_dir: str | os.PathLike | None = None,
) -> Iterator[dict]:
    """Pairs of the given anatomies in ``split`` styles; the ``a``-th anatomy gets style seeds
    ``a * styles_per_anatomy + s``. :func:`heldout_pairs` is this on the held-out anatomies and styles; with
    training-pool anatomies no training run uses and ``split="validation"`` it makes a validation set built the
    same way (the generator refuses anatomy seeds of the wrong split)."""
    from sgad_med.data.mni import load_mni_template
    from sgad_med.data.synthetic import SyntheticStyleGenerator

    if styles_per_anatomy < 1:
        raise ValueError(f"styles_per_anatomy must be >= 1, got {styles_per_anatomy}")
    generator = SyntheticStyleGenerator(template=load_mni_template(mni_dir, spacing=spacing), seed=seed,
                                        anatomy_cache=1)
    for a, anatomy_seed in enumerate(anatomy_seeds):
        for s in range(styles_per_anatomy):
            pair = generator.pair(int(anatomy_seed), style_seed=a * styles_per_anatomy + s, split=split)
            # the true tissue labels, for oracles that may know them (the anatomy is cached: no re-warp)
            pair["labels"] = generator.anatomy(int(anatomy_seed)).labels()
            yield pair
