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
        "too few objects on any of 5 crops of the image; running at the model's own scale"]


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
