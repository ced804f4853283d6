"""Static check of the module's .ui against the code that uses it (no Slicer, no Qt needed).

Every widget the Widget reaches through ``self.ui.<name>`` (or its local alias ``ui.<name>``)
must exist in ``Resources/UI/SGPSAM.ui`` with a class that fits how the code uses it;
``SlicerParameterName`` properties must name fields of the parameter node; the three tabs
exist. A typo here would otherwise only show up as an AttributeError inside Slicer.
"""
from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "SGPSAM"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "SGPSAM.ui"
MODULE_FILE = MODULE_DIR / "SGPSAM.py"
# The Widget and its panels (one file per tab): every file that reaches ``ui.<name>``.
WIDGET_FILES = [MODULE_FILE, *sorted((MODULE_DIR / "SGPSAMGui").glob("*.py"))]

# Name suffix -> classes a widget with that name may have.
SUFFIX_CLASSES = {
    "CollapsibleButton": {"ctkCollapsibleButton"},
    "Button": {"QPushButton", "QToolButton"},
    "ComboBox": {"QComboBox", "ctkComboBox"},
    "Selector": {"qMRMLNodeComboBox"},
    "PathLineEdit": {"ctkPathLineEdit"},
    "Label": {"QLabel"},
    "CheckBox": {"QCheckBox"},
    "SpinBox": {"QSpinBox", "QDoubleSpinBox", "ctkDoubleSpinBox"},
    "ProgressBar": {"QProgressBar"},
    "Table": {"QTableWidget"},
    "TextEdit": {"QPlainTextEdit", "QTextEdit"},
    "Tab": {"QWidget"},
    "tabWidget": {"QTabWidget"},
}
# Attribute/method used on a widget -> classes that have it (PythonQt property or method).
USAGE_CLASSES = {
    "currentNode": {"qMRMLNodeComboBox"},
    "setCurrentNode": {"qMRMLNodeComboBox"},
    "currentNodeChanged": {"qMRMLNodeComboBox"},
    "currentPath": {"ctkPathLineEdit"},
    "currentPathChanged": {"ctkPathLineEdit"},
    "currentData": {"QComboBox", "ctkComboBox"},
    "currentText": {"QComboBox", "ctkComboBox"},
    "findData": {"QComboBox", "ctkComboBox"},
    "addItem": {"QComboBox", "ctkComboBox"},
    "appendPlainText": {"QPlainTextEdit"},
    "setHorizontalHeaderLabels": {"QTableWidget"},
    "currentRow": {"QTableWidget"},
    "clicked": {"QPushButton", "QToolButton", "ctkCollapsibleButton"},
    "toggled": {"QPushButton", "QToolButton", "QCheckBox"},
    "checked": {"QPushButton", "QToolButton", "QCheckBox"},
    "setChecked": {"QPushButton", "QToolButton", "QCheckBox"},
    "value": {"QSpinBox", "QDoubleSpinBox", "ctkDoubleSpinBox", "QProgressBar"},
    "setValue": {"QSpinBox", "QDoubleSpinBox", "ctkDoubleSpinBox", "QProgressBar"},
}


def _ui_tree() -> ET.Element:
    return ET.parse(UI_FILE).getroot()


def _widgets(root: ET.Element) -> dict[str, ET.Element]:
    found: dict[str, ET.Element] = {}
    for element in root.iter("widget"):
        name = element.get("name")
        assert name not in found, f"widget name {name!r} is used twice in {UI_FILE.name}"
        found[name] = element
    return found


def _used_names() -> dict[str, set[str]]:
    """ui widget name -> attributes used on it, from ``self.ui.X.attr`` / ``ui.X.attr``."""
    source = "\n".join(path.read_text(encoding="utf-8") for path in WIDGET_FILES)
    used: dict[str, set[str]] = {}
    for match in re.finditer(r"\b(?:self\.)?ui\.(\w+)(?:\.(\w+))?", source):
        name, attribute = match.group(1), match.group(2)
        used.setdefault(name, set())
        if attribute:
            used[name].add(attribute)
    return used


def _is_checkable(element: ET.Element) -> bool:
    if element.get("class") == "QCheckBox":
        return True
    for prop in element.findall("property"):
        if prop.get("name") == "checkable":
            return prop.findtext("bool") == "true"
    return False


def test_ui_file_parses_with_three_tabs() -> None:
    root = _ui_tree()
    assert root.tag == "ui" and root.findtext("class") == "SGPSAM"
    top = root.find("widget")
    assert top is not None and top.get("class") == "qMRMLWidget"
    widgets = _widgets(root)
    tabs = widgets["tabWidget"]
    titles = [page.find("attribute/string").text for page in tabs.findall("widget")]
    assert titles == ["Segment", "Batch", "Training"]


def test_every_widget_the_code_uses_exists_with_a_fitting_class() -> None:
    widgets = _widgets(_ui_tree())
    used = _used_names()
    assert len(used) > 30, "the regular expression found suspiciously few ui names"
    problems = []
    for name, attributes in sorted(used.items()):
        element = widgets.get(name)
        if element is None:
            problems.append(f"{name}: not in {UI_FILE.name}")
            continue
        cls = element.get("class")
        for suffix, classes in SUFFIX_CLASSES.items():
            if name.endswith(suffix) or name == suffix:
                if cls not in classes:
                    problems.append(f"{name}: class {cls}, expected one of {sorted(classes)}")
                break
        else:
            problems.append(f"{name}: no known suffix to check its class {cls} against")
        for attribute in attributes:
            classes = USAGE_CLASSES.get(attribute)
            if classes is not None and cls not in classes:
                problems.append(f"{name}.{attribute}: {cls} has no {attribute!r}")
            if attribute in ("checked", "setChecked", "toggled") and not _is_checkable(element):
                problems.append(f"{name}.{attribute}: the button is not checkable in the .ui")
    assert problems == []


def test_parameter_names_match_the_parameter_node() -> None:
    """The session nodes and (issue 16) every field of the Batch and Training forms are bound,
    so a saved scene keeps them."""
    from SGPSAMSlicerLib.forms import FORMS  # noqa: PLC0415 - Qt-free

    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    fields = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "SGPSAMParameterNode":
            fields = {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
    assert fields == {"inputVolume", "segmentation", *FORMS}
    bound = {}
    for element in _ui_tree().iter("widget"):
        for prop in element.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                assert prop.get("stdset") == "0", "dynamic properties need stdset=0"
                bound[prop.findtext("string")] = element.get("class")
    expected = {"inputVolume": "qMRMLNodeComboBox", "segmentation": "qMRMLNodeComboBox"}
    widgets = _widgets(_ui_tree())
    for pack, form in FORMS.items():
        for field in form:
            expected[f"{pack}.{field.name}"] = widgets[field.widget].get("class")
    assert bound == expected


def test_node_selectors_get_the_scene_and_accept_the_right_nodes() -> None:
    root = _ui_tree()
    widgets = _widgets(root)
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    for name, node_type in (("inputVolumeSelector", "vtkMRMLScalarVolumeNode"),
                            ("segmentationSelector", "vtkMRMLSegmentationNode")):
        assert name in receivers, f"{name} never receives the MRML scene"
        types = [s.text for p in widgets[name].findall("property")
                 if p.get("name") == "nodeTypes" for s in p.iter("string")]
        assert types == [node_type]


@pytest.mark.parametrize("custom", ["ctkCollapsibleButton", "ctkPathLineEdit",
                                    "qMRMLNodeComboBox", "qMRMLWidget"])
def test_custom_widgets_are_declared(custom: str) -> None:
    root = _ui_tree()
    used = {element.get("class") for element in root.iter("widget")}
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    assert custom in used and custom in declared


def test_shortcuts_avoid_slicers_own_keys_and_use_the_window_context() -> None:
    """Issue 15: 's' snaps a hovered control point to the slice in Slicer's views, so the
    module must not take it; window shortcuts (not ApplicationShortcut), made only when a main
    window exists (the generic test runs with --no-main-window)."""
    from SGPSAMSlicerLib.shortcuts import SHORTCUTS, SLICER_VIEW_KEYS, shortcuts_help  # noqa: PLC0415

    assert not set(SHORTCUTS.values()) & SLICER_VIEW_KEYS
    assert len(set(SHORTCUTS.values())) == len(SHORTCUTS)
    assert "s" in SLICER_VIEW_KEYS and SHORTCUTS["negative"] != "s"
    help_text = shortcuts_help()
    assert all(key in help_text for key in SHORTCUTS.values()) and "Esc" not in help_text
    source = (MODULE_DIR / "SGPSAMGui" / "segment_panel.py").read_text(encoding="utf-8")
    assert "ApplicationShortcut" not in source and "setContext" not in source
    assert "if mainWindow is None:\n            return" in source


def test_reload_enables_the_shortcuts_of_a_shown_module() -> None:
    """Issue 15, item 4: Developer > Reload calls setup() but not enter()
    (qSlicerScriptedLoadableModuleWidget::reload), so setup() enables the shortcuts itself
    when the module is shown; cleanup() disconnects the parameter node GUI."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    methods = {node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    setup = ast.unparse(methods["setup"])
    assert "if self.parent.isEntered:\n        self.segment.setShortcutsEnabled(True)" in setup
    cleanup = ast.unparse(methods["cleanup"])
    for call in ("self.segment.cleanup()", "self._disconnectParameterNode()",
                 "self.logic.releaseModel()", "self.removeObservers()"):
        assert call in cleanup
