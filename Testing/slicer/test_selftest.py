"""Run the module's own self-test (``SGPSAM.SGPSAMTest``) against real MRML in pytest.

Inside Slicer the same class runs from the Self Tests module or ``ctest -R py_SGPSAM``; here
``slicer.mrmlScene`` is the ``mrml`` fixture's scene and the display helpers that need Qt are
replaced by no-ops. Importing ``SGPSAM.py`` with the stand-in ``qt``/``ctk`` also checks that
the module file loads without touching the GUI.
"""
from __future__ import annotations

import sys
import unittest

import pytest

slicer = pytest.importorskip("slicer")


@pytest.fixture
def module(mrml, monkeypatch):
    import SGPSAM  # noqa: PLC0415 - needs the conftest stand-ins

    shown = []
    monkeypatch.setattr(slicer.util, "delayDisplay", lambda *a, **k: shown.append(a))
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda *a, **k: None)
    return SGPSAM


def test_module_file_loads_and_describes_itself(module) -> None:
    parent = type("Parent", (), {})()
    module.SGPSAM(parent)
    assert parent.title == "SGP-SAM"
    assert parent.categories == ["Segmentation"]
    assert "Shift+R" in parent.helpText and parent.acknowledgementText
    assert module.SHORTCUTS["undo"] == "Ctrl+Z"
    with pytest.raises(RuntimeError, match="needs the Slicer application"):
        module.SGPSAMWidget()
    logic = module.SGPSAMLogic()
    node = logic.getParameterNode()  # no parameterNodeWrapper here: the raw node
    assert node.IsA("vtkMRMLScriptedModuleNode") and node.GetSingletonTag() == "SGPSAM"


def test_self_test_runs_and_passes(module) -> None:
    case = module.SGPSAMTest("runTest")
    result = unittest.TestResult()
    case.run(result)
    assert result.errors == [] and result.failures == [], result.errors + result.failures


def test_self_test_can_fail(module, monkeypatch) -> None:
    """With clicks mapped without the volume's transform the self-test must not pass."""
    from SGPSAMSlicerLib import mrml_geometry  # noqa: PLC0415

    monkeypatch.setattr(mrml_geometry, "volume_ras_to_world", lambda node, points: points)
    case = module.SGPSAMTest("test_oracle_lesions_and_undo")
    case.setUp()
    result = unittest.TestResult()
    case.run(result)
    assert not result.wasSuccessful()


def _without_torch(monkeypatch) -> None:
    """As in a fresh Slicer: torch cannot be imported (find_spec finds nothing)."""
    monkeypatch.setitem(sys.modules, "torch", None)


def test_self_test_skips_with_a_reason_without_torch(module, monkeypatch) -> None:
    """Issue 15, item 3: ctest -R py_SGPSAM (unittest's loader) and Reload and Test (runTest)
    report 'skipped' with the reason instead of failing."""
    _without_torch(monkeypatch)
    suite = unittest.TestLoader().loadTestsFromTestCase(module.SGPSAMTest)
    assert suite.countTestCases() == 3
    result = unittest.TestResult()
    suite.run(result)
    assert result.wasSuccessful() and result.errors == [] and result.failures == []
    assert len(result.skipped) == 3
    assert all("PyTorch is not installed" in reason for _, reason in result.skipped)

    shown = []
    case = module.SGPSAMTest("runTest")
    monkeypatch.setattr(case, "delayDisplay", lambda message, *a, **k: shown.append(message))
    case.runTest()  # what Reload and Test calls: no exception
    assert [m.split(" skipped:")[0] for m in shown] == list(module.SGPSAMTest.TEST_NAMES)


def test_module_lists_the_modules_it_uses(module) -> None:
    parent = type("Parent", (), {})()
    module.SGPSAM(parent)
    assert parent.dependencies == ["Markups", "Segmentations", "Plots"]
    assert "Esc" not in parent.helpText and "right-click or double-click" in parent.helpText
