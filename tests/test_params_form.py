"""The params form of the engine widgets: optional numbers read back as None or numbers."""

import pytest

pytestmark = pytest.mark.gui


def test_optional_floats_round_trip(qtbot):
    from napari_kaizen.engines.fcn import Params as FCNParams
    from napari_kaizen.engines.kaizen import Params as KaizenParams
    from napari_kaizen.widgets._params_form import ParamsForm

    form = ParamsForm(FCNParams)
    assert form.value() == FCNParams()  # empty fields: the model's calibrated values
    form._fields["foreground"].value = "0.7"
    form._fields["threshold"].value = " 0.4 "
    got = form.value()
    assert got.foreground == pytest.approx(0.7) and got.threshold == pytest.approx(0.4) and got.min_size is None
    form._fields["foreground"].value = "high"
    with pytest.raises(ValueError, match="foreground 'high' is not a number"):
        form.value()
    k = ParamsForm(KaizenParams)
    k._fields["mask_fraction"].value = "0.3"
    assert k.value().mask_fraction == pytest.approx(0.3)


def test_which_way_round_the_objects_are_is_a_choice(qtbot):
    # The nucleus engines' ``objects`` (a Literal) is a drop-down of its three values,
    # not free text a person could misspell.
    from magicgui import widgets as mw

    from napari_kaizen.engines.classical import Params as ClassicalParams
    from napari_kaizen.widgets._params_form import ParamsForm

    form = ParamsForm(ClassicalParams)
    box = form._fields["objects"]
    assert isinstance(box, mw.ComboBox) and list(box.choices) == ["auto", "bright", "dark"]
    assert form.value().objects == "auto"
    box.value = "dark"
    assert form.value() == ClassicalParams(objects="dark")
