"""The Batch and Training forms (issue 16: bound to the parameter node): one definition for the
.ui, Slicer's binding and the tab logics."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from SGPSAMSlicerLib.batch_tab import SEED_MARKUPS
from SGPSAMSlicerLib.forms import (
    BATCH_FORM,
    FORMS,
    TRAINING_FORM,
    SeedSource,
    batch_params,
    form_values,
    path_text,
    training_request,
)

UI_FILE = Path(__file__).resolve().parents[2] / "SGPSAM" / "Resources" / "UI" / "SGPSAM.ui"
# Slicer's GUI connectors (parameterNodeWrapper/guiConnectors.py, 5.4 to 5.10): value type ->
# the widget classes that can show it.
CONNECTORS = {bool: {"QCheckBox"}, int: {"QSpinBox"}, float: {"QDoubleSpinBox"},
              str: {"QComboBox"}, Path: {"ctkPathLineEdit"}, SeedSource: {"QComboBox"}}


def _widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI_FILE).getroot().iter("widget")}


def _property(element: ET.Element, name: str) -> str | None:
    for prop in element.findall("property"):
        if prop.get("name") == name:
            return "".join(prop.itertext()).strip()
    return None


@pytest.mark.parametrize("pack", sorted(FORMS))
def test_each_field_has_a_widget_slicer_can_bind(pack: str) -> None:
    widgets = _widgets()
    for field in FORMS[pack]:
        element = widgets[field.widget]
        assert element.get("class") in CONNECTORS[field.type], field
        assert _property(element, "SlicerParameterName") == f"{pack}.{field.name}"
        if field.type is str:
            assert field.choices, f"{field.name}: a str combo box needs Choice"
        items = ["".join(i.itertext()).strip() for i in element.findall("item")]
        if field.choices is not None:  # the binding refills the combo with these
            assert items == [str(c) for c in field.choices]
            assert field.default in field.choices
        if field.type is SeedSource:
            assert items == [source.label() for source in SeedSource]
        if field.type in (int, float):  # the binding rewrites range, decimals and step
            assert float(_property(element, "minimum")) == field.minimum
            assert float(_property(element, "maximum")) == field.maximum
            assert float(_property(element, "value")) == field.default
            if field.decimals is not None:
                assert int(_property(element, "decimals")) == field.decimals
                assert float(_property(element, "singleStep")) == field.single_step


def test_batch_form_becomes_the_batch_params(tmp_path: Path) -> None:
    form = form_values(BATCH_FORM, inputFolder=tmp_path / "in", outputFolder=tmp_path / "out")
    params = batch_params(form, model="demo", device="cpu", modality="CT")
    assert (params.input_folder, params.output_folder) == (str(tmp_path / "in"),
                                                           str(tmp_path / "out"))
    assert (params.seeds, params.output_format, params.recursive, params.overwrite,
            params.csv_space, params.model, params.device, params.modality) == (
        SEED_MARKUPS, "seg.nrrd", False, False, "RAS", "demo", "cpu", "CT")
    form.seeds, form.seedsCsv, form.csvSpace = SeedSource.CSV, tmp_path / "s.csv", "LPS"
    params = batch_params(form, model="m.pt", device="auto", modality="auto")
    assert (params.seeds, params.csv_space) == (str(tmp_path / "s.csv"), "LPS")
    empty = batch_params(form_values(BATCH_FORM), model="demo", device="auto", modality="auto")
    assert empty.input_folder == "" and empty.output_folder == ""  # Path() is "not chosen"
    with pytest.raises(KeyError, match="unknown form fields"):
        form_values(BATCH_FORM, inputFolderr="x")


def test_training_form_becomes_the_request() -> None:
    form = form_values(TRAINING_FORM, dataFolder=Path("/d"), outputFolder=Path("/o"),
                       epochs=3, learningRate=2e-4, resume=True)
    assert training_request(form, "demo", "cuda", "MR") == {
        "data_folder": "/d", "use_scene": False, "output_folder": "/o", "init_model": "demo",
        "mode": "sgp", "modality": "MR", "epochs": 3, "learning_rate": 2e-4,
        "validation_fraction": 0.2, "resume": True, "device": "cuda"}
    assert [path_text(v) for v in (Path(), ".", None, " /x ", Path("/y"))] == [
        "", "", "", "/x", "/y"]
