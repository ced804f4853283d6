"""Fixtures for the Slicer module's tests: real MRML from ``slicer-core``, no Qt.

``slicer-core`` (PyPI) ships Slicer's C++ MRML and module logics wrapped for Python, but no Qt,
no ``slicer.app`` and no ``slicer.ScriptedLoadableModule``. This file therefore

- puts the repository root and ``SGPSAM/`` on ``sys.path`` (``import SGPSAM``,
  ``import SGPSAMSlicerLib`` and ``import SGPSAMLib`` work as they do in Slicer);
- when ``slicer`` imports, installs minimal stand-ins, written here from scratch, for the
  modules a scripted module imports at load time: ``qt``, ``ctk`` (empty modules whose every
  attribute access fails with a clear message) and ``slicer.ScriptedLoadableModule``
  (the four base classes; the Widget base refuses to be built, since there is no GUI);
- provides the function-scoped ``mrml`` fixture: a fresh scene with application logic and the
  Colors, Volumes, Markups, Segmentations, SubjectHierarchy and Transforms logics registered
  (not Terminologies: slicer-core ships no terminology files, its logic only logs errors),
  ``slicer.mrmlScene`` and a ``slicer.modules`` shim set for ``slicer.util``; both are removed
  again afterwards;
- provides ``vtk_messages`` (captures VTK/MRML warnings and errors, which never raise) and
  ``no_vtk_errors`` (fails the test if any VTK error or warning was logged).

Tests that need MRML call ``pytest.importorskip("slicer")`` at module level, so this folder is
skipped cleanly when ``slicer-core`` is not installed; tests that need neither (for example
``test_ui_names.py``) still run.
"""
from __future__ import annotations

import importlib.util
import logging
import sys
import types
import unittest
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO_ROOT / "SGPSAM"
SHARED_DIR = REPO_ROOT / ".." / "shared"

for _path in (MODULE_DIR, REPO_ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

HAVE_SLICER = importlib.util.find_spec("slicer") is not None

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Stand-ins for the Qt-side modules a scripted module imports at load time.

class _UnavailableModule(types.ModuleType):
    """A module that imports fine but refuses every attribute: the GUI is not available here."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"{self.__name__}.{name} is not available in tests: this is a "
                             "stand-in module (no Qt outside the Slicer application)")


def _make_scripted_loadable_module() -> types.ModuleType:
    """``slicer.ScriptedLoadableModule`` with the four base classes, Qt-free."""
    import slicer  # noqa: PLC0415 - only when slicer-core is installed

    module = types.ModuleType("slicer.ScriptedLoadableModule")
    module.__doc__ = "Test stand-in for slicer.ScriptedLoadableModule (no Qt)."

    class ScriptedLoadableModule:
        """Module description holder; ``parent`` is any attribute bag."""

        def __init__(self, parent: Any = None) -> None:
            self.parent = parent if parent is not None else types.SimpleNamespace()
            self.moduleName = type(self).__name__
            for key, value in (("title", self.moduleName), ("categories", []),
                               ("dependencies", []), ("contributors", []), ("helpText", ""),
                               ("acknowledgementText", "")):
                if not hasattr(self.parent, key):
                    setattr(self.parent, key, value)
            self.parent.moduleName = self.moduleName

        def resourcePath(self, filename: str) -> str:  # noqa: N802 - Slicer's API name
            return str(MODULE_DIR / "Resources" / filename)

        def runTest(self, msec: int = 100, **kwargs: Any) -> None:  # noqa: N802
            raise NotImplementedError("use pytest to run the self-test outside Slicer")

    class ScriptedLoadableModuleWidget:
        """The GUI base class: cannot be built without Qt."""

        def __init__(self, parent: Any = None) -> None:
            raise RuntimeError("ScriptedLoadableModuleWidget needs the Slicer application "
                               "(Qt); it cannot be instantiated in tests")

    class ScriptedLoadableModuleLogic:
        """Logic base: the module's singleton parameter node in ``slicer.mrmlScene``."""

        def __init__(self, parent: Any = None) -> None:
            name = type(self).__name__
            self.moduleName = name[:-len("Logic")] if name.endswith("Logic") else name

        def getParameterNode(self):  # noqa: N802 - Slicer's API name
            scene = slicer.mrmlScene
            node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = self.createParameterNode()
                node = scene.AddNode(node)
            return node

        def createParameterNode(self):  # noqa: N802
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(self.moduleName)
            node.SetModuleName(self.moduleName)
            node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
            self.setDefaultParameters(node)
            return node

        def setDefaultParameters(self, parameterNode) -> None:  # noqa: N802
            """Override to fill a new parameter node."""

    class ScriptedLoadableModuleTest(unittest.TestCase):
        """Self-test base: ``delayDisplay`` only logs here."""

        def delayDisplay(self, message: str, requestedDelay: int = 100,  # noqa: N802, N803
                         msec: int | None = None) -> None:
            log.info("delayDisplay: %s", message)

        def takeScreenshot(self, name: str, description: str, type: int = -1) -> None:  # noqa: N802, A002
            log.info("takeScreenshot skipped: %s", name)

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget,
                ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest):
        cls.__module__ = module.__name__
        setattr(module, cls.__name__, cls)
    module.__all__ = [cls.__name__ for cls in (ScriptedLoadableModule,
                                               ScriptedLoadableModuleWidget,
                                               ScriptedLoadableModuleLogic,
                                               ScriptedLoadableModuleTest)]
    return module


def _install_stubs() -> None:
    """Install the stand-ins once, never over real modules (e.g. inside Slicer's Python)."""
    import slicer  # noqa: PLC0415

    for name in ("qt", "ctk"):
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            sys.modules[name] = _UnavailableModule(name)
    if "slicer.ScriptedLoadableModule" not in sys.modules:
        stub = _make_scripted_loadable_module()
        sys.modules[stub.__name__] = stub
        slicer.ScriptedLoadableModule = stub


if HAVE_SLICER:
    try:
        _install_stubs()
    except ImportError as _error:  # a broken install: the MRML tests skip, the rest run
        log.warning("slicer is present but does not import (%s); MRML tests are skipped",
                    _error)
        HAVE_SLICER = False


# ----------------------------------------------------------------------------------------------
# Fixtures.

@dataclass
class MRMLApp:
    """What the ``mrml`` fixture yields: the scene, the application logic and module logics."""

    scene: Any
    app_logic: Any
    logics: dict[str, Any] = field(default_factory=dict)

    def logic(self, name: str) -> Any:
        return self.logics[name]


@pytest.fixture
def mrml() -> Iterator[MRMLApp]:
    """A fresh MRML scene with the module logics registered, as ``slicer.mrmlScene``.

    Order matters (slicer_core.md §8): application logic first, its colour logic with the
    default colour tables, then every other logic gets the scene and the application logic.
    """
    slicer = pytest.importorskip("slicer")
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    color_logic = app_logic.GetColorLogic()
    color_logic.SetMRMLScene(scene)
    color_logic.AddDefaultColorNodes()
    logics = {"Colors": color_logic}
    app_logic.SetModuleLogic("Colors", color_logic)
    for name, cls in (("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
                      ("Volumes", slicer.vtkSlicerVolumesLogic),
                      ("Markups", slicer.vtkSlicerMarkupsLogic),
                      ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
                      ("Transforms", slicer.vtkSlicerTransformLogic)):
        logic = cls()
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(name, logic)
        logics[name] = logic

    def shim(logic: Any) -> types.SimpleNamespace:
        return types.SimpleNamespace(logic=lambda: logic)

    saved = {name: getattr(slicer, name, None) for name in ("mrmlScene", "modules")}
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(
        colors=shim(color_logic), subjecthierarchy=shim(logics["SubjectHierarchy"]),
        volumes=shim(logics["Volumes"]),
        markups=shim(logics["Markups"]), segmentations=shim(logics["Segmentations"]),
        transforms=shim(logics["Transforms"]),
    )
    try:
        yield MRMLApp(scene=scene, app_logic=app_logic, logics=logics)
    finally:
        scene.Clear(True)
        for name, value in saved.items():
            if value is None:
                if hasattr(slicer, name):
                    delattr(slicer, name)
            else:
                setattr(slicer, name, value)
        # Logics keep their scene reference until they are garbage collected with it;
        # detaching them explicitly makes the subject hierarchy logic log a warning.


class VTKMessages:
    """Text that VTK/MRML logged during a test (VTK never raises on errors)."""

    def __init__(self, window: Any) -> None:
        self._window = window

    @property
    def text(self) -> str:
        return self._window.GetOutput() or ""

    def errors(self) -> list[str]:
        """Lines that report an error or a warning."""
        return [line for line in self.text.splitlines()
                if "ERROR" in line.upper() or "WARNING" in line.upper()]

    def clear(self) -> None:
        self._window.Initialize()


@pytest.fixture
def vtk_messages() -> Iterator[VTKMessages]:
    """Capture VTK's output window (and silence its stderr logger) for one test."""
    pytest.importorskip("slicer")
    from vtkmodules.vtkCommonCore import (  # noqa: PLC0415
        vtkLogger,
        vtkOutputWindow,
        vtkStringOutputWindow,
    )

    previous = vtkOutputWindow.GetInstance()
    verbosity = vtkLogger.GetCurrentVerbosityCutoff()
    window = vtkStringOutputWindow()
    vtkOutputWindow.SetInstance(window)
    vtkLogger.SetStderrVerbosity(vtkLogger.VERBOSITY_OFF)
    try:
        yield VTKMessages(window)
    finally:
        vtkOutputWindow.SetInstance(previous)
        vtkLogger.SetStderrVerbosity(verbosity)


@pytest.fixture
def no_vtk_errors(vtk_messages: VTKMessages) -> Iterator[VTKMessages]:
    """Fail the test if VTK/MRML logged any error or warning while it ran."""
    yield vtk_messages
    problems = vtk_messages.errors()
    assert not problems, "VTK/MRML logged:\n" + vtk_messages.text
