"""options.py: the one vocabulary of choices, look_up_option's messages, and no copies of it."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from SGPSAMLib import options
from SGPSAMLib.errors import SGPSAMError, VolumeError
from SGPSAMLib.options import OptionError, look_up_option, nearest_option

REPO = Path(__file__).resolve().parents[2]



def test_valid_values_come_back_as_spelled_in_the_vocabulary() -> None:
    assert look_up_option("latest", options.PROMPT_MODES, "--prompt-mode") == "latest"
    assert look_up_option("ct", options.MODALITIES, "modality", case_sensitive=False) == "CT"
    assert look_up_option("seg.nrrd", options.OUTPUT_FORMATS, "--format") == "seg.nrrd"


@pytest.mark.parametrize("value, vocabulary, expected", [
    ("lastest", options.PROMPT_MODES, "--x: 'lastest'; expected one of latest, cumulative; "
                                      "did you mean 'latest'?"),
    ("finetuning", options.TRAIN_MODES, "--x: 'finetuning'; expected one of sgp, finetune; "
                                        "did you mean 'finetune'?"),
    ("seg.nrd", options.OUTPUT_FORMATS, "--x: 'seg.nrd'; expected one of nii.gz, nrrd, "
                                        "seg.nrrd; did you mean 'seg.nrrd'?"),
    ("PET", options.MODALITIES, "--x: 'PET'; expected one of auto, CT, MR"),
    (3, options.LESION_UNITS, "--x: 3; expected one of component, label"),
])
def test_a_bad_value_names_the_option_the_choices_and_the_nearest(value, vocabulary,
                                                                   expected) -> None:
    with pytest.raises(OptionError) as caught:
        look_up_option(value, vocabulary, "--x")
    assert str(caught.value) == expected
    # One line and exit 2 on the command line, a ValueError for library callers.
    assert isinstance(caught.value, SGPSAMError) and isinstance(caught.value, ValueError)


def test_case_sensitivity_and_the_error_type_are_the_callers() -> None:
    with pytest.raises(OptionError, match="did you mean 'CT'"):
        look_up_option("ct", options.MODALITIES, "modality")
    with pytest.raises(VolumeError, match="lesion_unit: 'blob'"):
        look_up_option("blob", options.LESION_UNITS, "lesion_unit", error=VolumeError)
    assert nearest_option("xyz", options.GATE_MODES) is None


def test_the_library_checks_its_options_through_the_vocabulary() -> None:
    from SGPSAMLib.config import ModelConfig
    from SGPSAMLib.region import resolve_modality
    from SGPSAMLib.training.config import TrainConfig

    with pytest.raises(ValueError, match="did you mean 'always_on'"):
        ModelConfig(gate_mode="always-on")
    with pytest.raises(ValueError, match="modality: 'PETCT'"):
        resolve_modality(0.0, "PETCT")
    with pytest.raises(SGPSAMError, match="--click-mode: 'centre'.*did you mean 'center'"):
        TrainConfig(data="d", out="o", click_mode="centre")
    assert TrainConfig(data="d", out="o", loss=None, gate_mode=None).loss_name == "zoom"


def _string_sets(path: Path) -> list[tuple[int, frozenset[str]]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2 and all(
                isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
            found.append((node.lineno, frozenset(e.value for e in node.elts)))
    return found


def test_no_module_spells_out_a_vocabulary_again() -> None:
    vocabularies = {name: frozenset(value) for name, value in vars(options).items()
                    if name.isupper() and isinstance(value, (tuple, dict))}
    assert len(vocabularies) >= 12
    copies = []
    for folder in ("SGPSAMLib", "SGPSAM"):
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel == "SGPSAMLib/options.py":
                continue
            for line, strings in _string_sets(path):
                copies += [f"{rel}:{line} copies options.{name}"
                           for name, vocabulary in vocabularies.items() if strings == vocabulary]
    assert copies == []
