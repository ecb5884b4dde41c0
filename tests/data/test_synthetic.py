"""The synthetic anatomy/style generator: determinism, ranges, contrasts, splits, deformations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from sgad_med.data import (
    FAMILIES,
    HELDOUT_ANATOMY_SEEDS,
    HELDOUT_GM_WM_CONTRAST,
    REFERENCE_STYLE,
    SPLITS,
    TISSUES,
    TRAIN_ANATOMY_SEEDS,
    TRAIN_MIN_GM_WM_CONTRAST,
    VALIDATION_GM_WM_CONTRAST,
    VALIDATION_LOW_GM_WM_CONTRAST,
    Anatomy,
    Style,
    SyntheticPairDataset,
    SyntheticStyleGenerator,
    load_mni_template,
    render,
    sample_anatomy,
    sample_style,
    style_split,
)
from sgad_med.data.synthetic import _warp

SPACING = 4.0


@pytest.fixture(scope="module")
def template():
    return load_mni_template(spacing=SPACING)


@pytest.fixture(scope="module")
def gen(template) -> SyntheticStyleGenerator:
    return SyntheticStyleGenerator(template, seed=0, anatomy_cache=8)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_pairs_are_deterministic(template) -> None:
    one = SyntheticStyleGenerator(template, seed=0, anatomy_cache=0)
    two = SyntheticStyleGenerator(template, seed=0, anatomy_cache=0)
    a, b = one.pair(3, 7), two.pair(3, 7)
    assert np.array_equal(a["source"], b["source"]) and np.array_equal(a["target"], b["target"])
    assert a["style"] == b["style"] and a["style_params"] == b["style"].asdict()
    assert a["style_params"]["name"] == a["style"].name
    # a different style seed changes the source only; a different anatomy seed changes both
    c = one.pair(3, 8)
    assert not np.array_equal(a["source"], c["source"]) and np.array_equal(a["target"], c["target"])
    d = one.pair(4, 7)
    assert not np.array_equal(a["target"], d["target"]) and a["style"] == d["style"]
    # the generator's own seed changes everything
    other = SyntheticStyleGenerator(template, seed=1).pair(3, 7)
    assert not np.array_equal(a["target"], other["target"]) and a["style"] != other["style"]
    # volume(): same seeds, same volume
    assert np.array_equal(one.volume(3, a["style"], noise_seed=2), two.volume(3, a["style"], noise_seed=2))
    assert not np.array_equal(one.volume(3, a["style"], noise_seed=2), one.volume(3, a["style"], noise_seed=3))


def test_global_rng_untouched(gen) -> None:
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    gen.pair(11, 5)
    assert np.random.random() == expected


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_outputs_shape_dtype_range(gen, template, split: str) -> None:
    anatomy_seed = 0 if split == "train" else HELDOUT_ANATOMY_SEEDS[0]
    for style_seed in range(6):
        pair = gen.pair(anatomy_seed, style_seed, split=split)
        assert pair["split"] == split and style_split(pair["style"]) == split
        for key in ("source", "target"):
            volume = pair[key]
            assert volume.shape == template.shape and volume.dtype == np.float32
            assert np.isfinite(volume).all() and volume.min() >= 0.0 and volume.max() <= 1.0
            assert volume.std() > 0.05  # an image, not a constant
        np.testing.assert_array_equal(pair["affine"], template.affine)


def test_target_is_reference_rendering(gen) -> None:
    pair = gen.pair(5, 2)
    assert np.array_equal(pair["target"], render(gen.anatomy(5), REFERENCE_STYLE))
    assert np.array_equal(pair["target"], render(gen.anatomy(5), REFERENCE_STYLE, np.random.default_rng(99)))


def test_reference_style_looks_like_the_template_t1(template) -> None:
    clean = render(Anatomy.from_template(template), REFERENCE_STYLE)
    brain = (template.gm + template.wm) > 0.5
    corr = np.corrcoef(clean[brain], template.t1[brain])[0, 1]
    assert corr > 0.9
    assert abs(clean[brain].mean() - template.t1[brain].mean()) < 0.05


def tissue_means(volume: np.ndarray, anatomy: Anatomy) -> dict[str, float]:
    return {t: float(volume[getattr(anatomy, t) > 0.8].mean()) for t in ("csf", "gm", "wm")}


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_rendered_contrast_orderings(gen, split: str) -> None:
    anatomy = gen.anatomy(1 if split == "train" else HELDOUT_ANATOMY_SEEDS[1])
    for seed in range(4):
        rng = np.random.default_rng(seed)
        t2 = sample_style(rng, family="t2", split=split)
        m = tissue_means(render(anatomy, t2, rng), anatomy)
        assert m["csf"] > m["wm"] + 0.1 and m["csf"] > m["gm"], (t2, m)  # T2: CSF bright
        t1 = sample_style(rng, family="t1", split=split)
        m = tissue_means(render(anatomy, t1, rng), anatomy)
        assert m["csf"] + 0.1 < m["wm"] and m["csf"] < m["gm"], (t1, m)  # T1: CSF dark
        flair = sample_style(rng, family="flair", split=split)
        m = tissue_means(render(anatomy, flair, rng), anatomy)
        assert m["csf"] < m["wm"] and m["csf"] < m["gm"], (flair, m)  # FLAIR: fluid suppressed
        if split == "train":  # GM/WM contrast >= 0.15 survives blur, bias and noise
            assert m["wm"] < m["gm"], (flair, m)
            m = tissue_means(render(anatomy, t2, rng), anatomy)
            assert m["wm"] < m["gm"], (t2, m)
            m = tissue_means(render(anatomy, t1, rng), anatomy)
            assert m["gm"] < m["wm"], (t1, m)


def test_style_splits_are_disjoint() -> None:
    rng = np.random.default_rng(0)
    regions = {"heldout": HELDOUT_GM_WM_CONTRAST, "validation": VALIDATION_GM_WM_CONTRAST,
               "validation_low": VALIDATION_LOW_GM_WM_CONTRAST}
    seen = {split: set() for split in SPLITS}
    for split in SPLITS:
        for _ in range(3000):
            style = sample_style(rng, split=split)
            contrast = style.gm_wm_contrast()
            if split == "train":
                assert contrast >= TRAIN_MIN_GM_WM_CONTRAST - 1e-9
            else:
                assert regions[split][0] - 1e-9 <= contrast <= regions[split][1] + 1e-9
            assert style_split(style) == split and style.name == f"{style.family}-{split}"
            assert 0.6 <= style.gamma <= 1.6 and 0 <= style.bias_strength <= 0.3
            assert 0 <= style.noise_sigma <= 0.05 and 0 <= style.blur_sigma_inplane <= 1.5
            assert 0 <= style.slice_thickness <= 1.5
            assert all(0.0 <= v <= 1.0 for v in style.means)
            seen[split].add(style.family)
    assert all(families == set(FAMILIES) for families in seen.values())  # every family in every split
    assert HELDOUT_GM_WM_CONTRAST[1] < VALIDATION_GM_WM_CONTRAST[0] < VALIDATION_GM_WM_CONTRAST[1]
    assert VALIDATION_GM_WM_CONTRAST[1] < TRAIN_MIN_GM_WM_CONTRAST
    assert VALIDATION_LOW_GM_WM_CONTRAST[0] < VALIDATION_LOW_GM_WM_CONTRAST[1] < HELDOUT_GM_WM_CONTRAST[0]
    assert style_split(REFERENCE_STYLE) == "train"
    gap = Style("gap", 0.0, 0.2, 0.5, 0.648, 0.4)
    assert style_split(gap) is None


@pytest.mark.parametrize("split", ["validation", "validation_low"])
def test_validation_styles_take_training_pool_anatomies_only(gen, split) -> None:
    pair = gen.pair(960, style_seed=0, split=split)
    assert style_split(pair["style"]) == split
    with pytest.raises(ValueError, match="other split"):
        gen.pair(HELDOUT_ANATOMY_SEEDS[0], style_seed=0, split=split)


def test_random_family_produces_every_ordering() -> None:
    rng = np.random.default_rng(1)
    orderings = set()
    for _ in range(300):
        eff = sample_style(rng, family="random").effective_means()
        orderings.add(tuple(sorted(("csf", "gm", "wm"), key=eff.get)))
    assert len(orderings) == 6


def test_bad_style_arguments() -> None:
    with pytest.raises(ValueError, match="gm intensity"):
        Style("bad", 0.0, 0.2, 1.5, 0.8, 0.4)
    with pytest.raises(ValueError, match="split"):
        sample_style(np.random.default_rng(0), split="test")
    with pytest.raises(ValueError, match="family"):
        sample_style(np.random.default_rng(0), family="ct")


def test_anatomy_seed_of_the_other_split_is_refused(gen) -> None:
    with pytest.raises(ValueError, match="other split"):
        gen.pair(HELDOUT_ANATOMY_SEEDS[0], 0, split="train")
    with pytest.raises(ValueError, match="other split"):
        gen.pair(TRAIN_ANATOMY_SEEDS[0], 0, split="heldout")
    with pytest.raises(ValueError, match="non-negative"):
        gen.pair(-1, 0)


def test_anatomies_differ_but_keep_the_brain(gen, template) -> None:
    ref_brain = (template.gm + template.wm) > 0.5
    ref_wm = template.wm > 0.5
    ref_volume = float((template.gm + template.wm).sum())
    wms = []
    for seed in range(3):
        anatomy = gen.anatomy(seed)
        np.testing.assert_allclose(anatomy.stack().sum(axis=0), 1.0, atol=1e-5)
        assert 0.7 < dice((anatomy.gm + anatomy.wm) > 0.5, ref_brain) < 0.99
        # brain volume changes only by the drawn scaling (+-10 % per axis), the brain stays in the field of view
        scale = float(np.prod(anatomy.params["scale"]))
        volume = float((anatomy.gm + anatomy.wm).sum())
        assert abs(volume / (ref_volume * scale) - 1) < 0.03
        assert all(abs(r) <= 10 for r in anatomy.params["rotation_deg"])
        labels = anatomy.labels()
        assert set(np.unique(labels)) == set(range(len(TISSUES)))
        wms.append(anatomy.wm > 0.5)
    assert dice(wms[0], wms[1]) < 0.9 and dice(wms[1], wms[2]) < 0.9
    # elastic deformation alone keeps white matter largely in place but not identical
    rng = np.random.default_rng(0)
    elastic = sample_anatomy(template, rng, max_rotation_deg=0, max_scale=0, max_translation_mm=0)
    assert 0.8 < dice(elastic.wm > 0.5, ref_wm) < 0.99
    still = sample_anatomy(template, rng, max_rotation_deg=0, max_scale=0, max_translation_mm=0, elastic_mm=0)
    np.testing.assert_allclose(still.wm, template.wm, atol=1e-5)


def test_same_anatomy_seed_same_deformation_at_every_spacing(template) -> None:
    fine = SyntheticStyleGenerator(load_mni_template(spacing=2.0), seed=0).anatomy(7)
    coarse = SyntheticStyleGenerator(template, seed=0).anatomy(7)
    h, w, d = coarse.shape
    pooled = fine.wm[: 2 * h, : 2 * w, : 2 * d].reshape(h, 2, w, 2, d, 2).mean(axis=(1, 3, 5))
    other = SyntheticStyleGenerator(template, seed=0).anatomy(8)
    same, different = dice(pooled > 0.5, coarse.wm > 0.5), dice(pooled > 0.5, other.wm > 0.5)
    assert same > 0.8 and same > different + 0.2
    assert fine.params == coarse.params


def test_warp_matches_map_coordinates() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((2, 9, 11, 7)).astype(np.float32)
    grid = np.indices(maps.shape[1:]).astype(np.float32)
    coords = grid + rng.uniform(-1.5, 1.5, size=grid.shape).astype(np.float32)
    expected = np.stack([ndi.map_coordinates(m, coords, order=1, mode="constant", cval=0.0) for m in maps])
    inside = np.all((coords >= 0) & (coords <= np.array(maps.shape[1:])[:, None, None, None] - 1), axis=0)
    np.testing.assert_allclose(_warp(maps, list(coords))[:, inside], expected[:, inside], atol=1e-5)


def test_degradations_do_what_they_say(gen) -> None:
    anatomy = gen.anatomy(2)
    base = dict(name="t", background=0.0, csf=0.2, gm=0.5, wm=0.8, other=0.4)
    clean = render(anatomy, Style(**base))
    assert clean[anatomy.background > 0.999].max() < 1e-3
    rng = np.random.default_rng(0)
    # Rician noise: positive bias in the air (Rayleigh mean sigma * sqrt(pi / 2))
    noisy = render(anatomy, Style(**base, noise_sigma=0.04), rng)
    air = noisy[anatomy.background > 0.999]
    assert air.mean() == pytest.approx(0.04 * np.sqrt(np.pi / 2), rel=0.1)
    # bias field: multiplicative, within +-strength, and not flat
    biased = render(anatomy, Style(**base, bias_strength=0.25), rng)
    wm = anatomy.wm > 0.99
    ratio = biased[wm] / clean[wm]
    assert ratio.min() >= 0.75 - 1e-4 and ratio.max() <= 1.25 + 1e-4 and ratio.max() - ratio.min() > 0.1
    # slice thickness blurs along the last axis only
    thick = render(anatomy, Style(**base, slice_thickness=1.5))
    assert np.abs(np.diff(thick, axis=2)).mean() < 0.8 * np.abs(np.diff(clean, axis=2)).mean()
    assert np.abs(np.diff(thick, axis=0)).mean() > 0.9 * np.abs(np.diff(clean, axis=0)).mean()
    gamma = render(anatomy, Style(**base, gamma=2.0))
    np.testing.assert_allclose(gamma, clean**2, atol=1e-6)
    assert np.median(gamma[wm]) == pytest.approx(0.8**2, abs=0.01)


def test_dataset_yields_generator_pairs(gen) -> None:
    dataset = SyntheticPairDataset([0, 1], styles_per_anatomy=2, spacing=SPACING, seed=0)
    items = list(dataset)
    assert len(items) == len(dataset) == 4
    assert [i["style_seed"] for i in items] == [0, 1, 2, 3]
    assert [i["anatomy_seed"] for i in items] == [0, 0, 1, 1]
    for item in items:
        assert isinstance(item["source"], torch.Tensor) and item["source"].shape == (1, *gen.template.shape)
        expected = gen.pair(item["anatomy_seed"], item["style_seed"])
        assert np.array_equal(item["source"][0].numpy(), expected["source"])
        assert np.array_equal(item["target"][0].numpy(), expected["target"])
    dataset.set_epoch(1)
    assert [i["style_seed"] for i in dataset] == [4, 5, 6, 7]
