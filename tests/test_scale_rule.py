"""Each engine owns one scale rule (``scale_for``), and the plain, tiled and stack runs all use it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_kaizen import run_to_end
from napari_kaizen.data import synthesize
from napari_kaizen.engines import ENGINE_MODULES, InputWarning, Scale, get_engine, segment_planes
from napari_kaizen.engines._common import scale_rule
from napari_kaizen.tiled import plan_tiles, read_region, segment_tiled

#: Smaller than the 256 px image: a tiled run has four tiles (plus halos).
TILE = 128


@pytest.fixture(scope="module")
def field():
    return synthesize(seed=10_001, shape=(256, 256))


@pytest.fixture(scope="module")
def models():
    return {name: get_engine(name).load_model(None, device="cpu") for name in ENGINE_MODULES
            if get_engine(name).learned}


def _image(field, name):
    return field.label_free if get_engine(name).input_kind == "label-free" else field.nuclei


@pytest.fixture()
def used_scales(monkeypatch):
    """Every scale an engine's segment run resolved: the learned engines rescale by it,
    the classical engine reads its ``diameter``."""
    import importlib

    classical_segment = importlib.import_module("napari_kaizen.engines.classical.segment")

    seen: list[float | None] = []
    rescale, classical_rule = Scale.rescale, classical_segment.scale_for

    def spy(self, shape, model_diameter, **options):
        seen.append(self.diameter)
        return rescale(self, shape, model_diameter, **options)

    def classical_spy(*args, **kwargs):
        scale = classical_rule(*args, **kwargs)
        seen.append(scale.diameter)
        return scale

    monkeypatch.setattr(scale_rule.Scale, "rescale", spy)
    monkeypatch.setattr(classical_segment, "scale_for", classical_spy)
    return seen


@pytest.mark.parametrize("name", list(ENGINE_MODULES))
def test_plain_and_tiled_runs_resolve_auto_to_the_same_diameter(name, field, models, used_scales):
    """The U-Net once measured 'auto' with its network untiled and with a blob estimate tiled."""
    engine = get_engine(name)
    model = models.get(name)
    image = _image(field, name)
    params = engine.Params(diameter="auto")
    plain = engine.scale_for(image, params, model=model)
    assert plain.failure is None and plain.estimated and 5 < plain.diameter < 60

    plan = plan_tiles(engine, image, params, model=model, tile=TILE, device="cpu")
    assert len(plan.tiles) == 4
    assert plan.diameter == pytest.approx(plain.diameter, rel=1e-9)
    # Every tile reads the plan's diameter back as the same scale, still an estimate.
    for tile in plan.tiles:
        window = read_region(image, tile.window)
        again = engine.scale_for(window, plan.params, model=model)
        assert again.diameter == pytest.approx(plain.diameter, rel=1e-9) and again.estimated

    if name == "kaizen":
        return  # a decomposition per tile is too slow for this test; its rule is checked above
    # And the runs use it: the plain segment and every tile of the tiled one.
    plain_run = list(engine.segment(image, params, model=model, device="cpu"))
    tiled_run = list(segment_tiled(engine, image, params, model=model, tile=TILE, device="cpu"))
    assert tiled_run[-1].done and plain_run[-1].done
    used = list(used_scales)
    assert len(used) >= 1 + len(plan.tiles)  # the plain run, every tile (and calibration crops)
    assert all(d == pytest.approx(plain.diameter, rel=1e-9) for d in used)


def test_a_number_and_none_are_read_the_same_by_every_rule(field, models):
    for name in ENGINE_MODULES:
        engine = get_engine(name)
        image = _image(field, name)
        given = engine.scale_for(image, engine.Params(diameter=21.0), model=models.get(name))
        assert (given.diameter, given.estimated, given.failure) == (21.0, False, None)
        if name != "classical":  # None is the model's own scale; the classical engine has none and estimates
            assert engine.scale_for(image, engine.Params(diameter=None), model=models.get(name)).diameter is None
    classical = get_engine("classical")
    assert classical.scale_for(field.nuclei, classical.Params(diameter=None)).estimated


def test_the_unet_measures_auto_with_its_network_and_reuses_that_pass(field, models):
    """'auto' for the U-Net is the size of what the network finds, not a blob estimate."""
    from napari_kaizen.engines._common.normalize import prepare_image
    from napari_kaizen.engines._common.scale import estimate_diameter

    engine, model = get_engine("unet"), models["unet"]
    measured = engine.scale_for(field.label_free, engine.Params(diameter="auto"), model=model)
    blob = estimate_diameter(prepare_image(field.label_free, percentiles=model.percentiles))
    assert measured.diameter != pytest.approx(blob, rel=1e-3)
    assert measured.probe is None  # the public rule keeps no maps


def test_an_estimate_that_fails_everywhere_runs_a_learned_engine_at_its_own_scale(field, monkeypatch):
    """No crop measurable: the tiles run at the model's own scale (not 'auto' again, tile by tile), one warning."""
    import napari_kaizen.engines.kaizen as kaizen_package

    calls = []

    def unmeasurable(image, params, *, model=None, prepared=None):
        calls.append(image.shape)
        warnings.warn("too few objects; running at the model's own scale", InputWarning, stacklevel=2)
        return Scale(None, failure="too few objects")

    monkeypatch.setattr(kaizen_package, "scale_for", unmeasurable)
    image = np.pad(field.nuclei, 512, mode="reflect")  # 1280 px: five different crops of 1024 px
    engine = get_engine("kaizen")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = plan_tiles(engine, image, engine.Params(diameter="auto"), model=models_or_none(engine), tile=512)
    assert len(calls) == 5
    assert plan.diameter is None and plan.params.diameter is None
    assert [str(w.message) for w in caught if "own scale" in str(w.message)] == [
        "too few objects (on every one of the 5 crops read to measure the size); running at the model's own scale"]


def _two_nuclei_on_a_glowing_corner() -> np.ndarray:
    """Like a stained DSB2018 frame (``af576e8e``): two nuclei on a glow in one corner.

    Two objects stand apart, too few to measure (three are needed), and the field is
    not sparse; before, the classical engine refused the image."""
    from scipy import ndimage as ndi

    yy, xx = np.mgrid[:256, :320]
    signal = 80.0 * np.exp(-np.hypot(yy - 300, xx - 360) / 60.0)
    for cy, cx in ((240, 250), (230, 290)):
        signal[np.hypot(yy - cy, xx - cx) < 9] += 60.0
    noise = np.random.default_rng(0).normal(0, 2, signal.shape)
    return np.clip(np.round(10 + ndi.gaussian_filter(signal, 1.5) + noise), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("tiled", [False, True])
def test_the_classical_engine_runs_an_image_it_cannot_measure_at_a_typical_size(tiled):
    from napari_kaizen.engines.classical.scale_rule import UNMEASURED_DIAMETER

    engine = get_engine("classical")
    image = _two_nuclei_on_a_glowing_corner()
    rule = engine.scale_for(image, engine.Params()) if not tiled else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if tiled:
            plan = plan_tiles(engine, image, engine.Params(), tile=TILE)
            assert plan.diameter == UNMEASURED_DIAMETER
            labels = np.asarray(run_to_end(segment_tiled(engine, image, engine.Params(), tile=TILE)).labels)
        else:
            assert (rule.diameter, rule.estimated) == (UNMEASURED_DIAMETER, True)
            assert rule.failure.startswith("could not estimate the object diameter (found 2 separate objects")
            labels = run_to_end(engine.segment(image, engine.Params())).labels
    said = [str(w.message) for w in caught if issubclass(w.category, InputWarning)]
    assert said and all("could not estimate the object diameter" in m and m.endswith("running at 18 px (a typical "
                                                                                    "nucleus)") for m in said)
    found = {int(labels[y, x]) for y, x in ((240, 250), (230, 290))}
    assert 0 not in found and len(found) == 2  # both nuclei, apart


def models_or_none(engine):
    return engine.load_model(None, "cpu") if engine.learned else None


def test_a_stack_reads_auto_once_by_the_engines_rule(field, models):
    engine = get_engine("classical")
    stack = np.stack([field.nuclei, field.nuclei[::-1]])
    seen: list[object] = []

    def segment(plane, params, **kwargs):
        seen.append(params.diameter)
        return engine.segment(plane, params, **kwargs)

    last = run_to_end(segment_planes(segment, stack, engine.Params(diameter="auto"), scale_for=engine.scale_for))
    rule = engine.scale_for(field.nuclei, engine.Params(diameter="auto"))
    assert last.done and seen == [pytest.approx(rule.diameter)] * 2
