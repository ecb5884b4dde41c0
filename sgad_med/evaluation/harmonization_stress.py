"""Harmonization cases the training generator's random styles rarely make, and the cross-style consistency test.

The held-out evaluation draws its styles at random from the held-out region; two kinds of scan users meet often
deserve their own rows, because they are where a pixel-synthesising generator fails:

- ``t2-inverted-sharp``: a T2-like inversion (dark white matter, bright CSF) with a sharp brain edge (bright CSF
  against dark scalp, no blur) and a low grey/white contrast (0.10, in the held-out range);
- ``t1-degraded``: a T1 with a strong bias field, gamma, noise and blur at the top of the training ranges and a
  held-out grey/white contrast.

:func:`three_style_cases` renders one anatomy in three held-out styles (T1-, T2- and FLAIR-like) and
:func:`cross_style_ssim` measures how alike a method's three outputs are: a harmonizer should make them one image.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from itertools import combinations

import numpy as np

from sgad_med.data.synthetic import HELDOUT_ANATOMY_SEEDS, REFERENCE_STYLE, Style
from sgad_med.evaluation.heldout import normalize_mr
from sgad_med.evaluation.metrics import ssim_map

__all__ = ["STRESS_STYLES", "stress_cases", "three_style_cases", "cross_style_ssim"]

#: The stress styles, by name (both have a grey/white contrast of 0.10: the held-out split).
STRESS_STYLES: dict[str, Style] = {
    "t2-inverted-sharp": Style(name="t2-inverted-sharp", background=0.0, csf=0.95, gm=0.50, wm=0.40, other=0.12,
                               gamma=1.0, bias_strength=0.05, noise_sigma=0.01, family="t2"),
    "t1-degraded": Style(name="t1-degraded", background=0.02, csf=0.12, gm=0.45, wm=0.55, other=0.70,
                         gamma=1.0, bias_strength=0.28, noise_sigma=0.045, blur_sigma_inplane=0.8,
                         slice_thickness=0.8, family="t1"),
}


def _generator(spacing: float, seed: int, mni_dir: str | os.PathLike | None):
    from sgad_med.data.mni import load_mni_template
    from sgad_med.data.synthetic import SyntheticStyleGenerator

    return SyntheticStyleGenerator(template=load_mni_template(mni_dir, spacing=spacing), seed=seed, anatomy_cache=1)


def _case(generator, anatomy_seed: int, style: Style, noise_seed: int) -> dict:
    from sgad_med.evaluation.harmonization import head_mask

    target_raw = generator.volume(anatomy_seed, REFERENCE_STYLE)
    target = normalize_mr(target_raw)
    return {
        "source": normalize_mr(generator.volume(anatomy_seed, style, noise_seed=noise_seed)),
        "target": target,
        "reference_input": target,
        "mask": head_mask(target_raw),
        "labels": generator.anatomy(anatomy_seed).labels(),
        "anatomy_seed": int(anatomy_seed),
        "style_seed": noise_seed,
        "style": style.name,
        "style_params": style.asdict(),
    }


def stress_cases(n_anatomies: int = 4, spacing: float = 2.0, seed: int = 0,
                 mni_dir: str | os.PathLike | None = None, styles: Sequence[str] = tuple(STRESS_STYLES)) -> list[dict]:
    """The :data:`STRESS_STYLES` on held-out anatomies, as cases of
    :func:`~sgad_med.evaluation.harmonization.evaluate_harmonization` (with ``labels`` for the oracle).

    Args:
        n_anatomies: how many held-out anatomies (the first of ``HELDOUT_ANATOMY_SEEDS``).
        spacing: voxel size in mm.
        seed: the generator's global seed.
        mni_dir: folder of the MNI template.
        styles: which stress styles.
    """
    generator = _generator(spacing, seed, mni_dir)
    return [_case(generator, a, STRESS_STYLES[name], noise_seed=i)
            for a in HELDOUT_ANATOMY_SEEDS[:n_anatomies] for i, name in enumerate(styles)]


def three_style_cases(n_anatomies: int = 4, spacing: float = 2.0, seed: int = 0,
                      mni_dir: str | os.PathLike | None = None,
                      families: Sequence[str] = ("t1", "t2", "flair")) -> list[list[dict]]:
    """Each held-out anatomy rendered in one held-out style of each family: a list of cases per anatomy.

    The style of anatomy ``a`` and family ``f`` has style seed ``1000 + 10 * a + index of f`` in the held-out
    split (seeds the main held-out cases do not use).
    """
    generator = _generator(spacing, seed, mni_dir)
    groups = []
    for a, anatomy_seed in enumerate(HELDOUT_ANATOMY_SEEDS[:n_anatomies]):
        styles = [generator.style(1000 + 10 * a + i, split="heldout", family=f) for i, f in enumerate(families)]
        groups.append([_case(generator, anatomy_seed, style, noise_seed=i) for i, style in enumerate(styles)])
    return groups


def cross_style_ssim(method: Callable[[dict], np.ndarray], groups: Sequence[Sequence[dict]],
                     min_foreground: float = 0.05) -> float:
    """Mean SSIM in the head between a method's outputs for the same anatomy in different styles.

    Args:
        method: case dict -> harmonized volume (as the methods of ``evaluate_harmonization`` marked ``uses_case``).
        groups: from :func:`three_style_cases`.
        min_foreground: smallest head fraction of a slice that is scored.

    Returns:
        The mean over anatomies, style pairs and head slices of the masked 2D SSIM (1: identical outputs).
    """
    values = []
    for group in groups:
        outputs = [np.clip(np.asarray(method(case), dtype=np.float64), 0.0, 1.0) for case in group]
        mask = np.asarray(group[0]["mask"], dtype=bool)
        for a, b in combinations(outputs, 2):
            for k in range(mask.shape[-1]):
                m = mask[..., k]
                if m.any() and m.mean() >= min_foreground:
                    values.append(float(ssim_map(a[..., k], b[..., k])[m].mean()))
    return float(np.mean(values)) if values else float("nan")
