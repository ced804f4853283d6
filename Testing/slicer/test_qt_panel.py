"""The panel loaded by a real Qt (issue 16): PyQt5 offscreen, stand-ins for CTK/qMRML classes.

Checks that every widget the Widget code reaches exists with the class the .ui declares, that
each tab lays out at a narrow panel width without overlapping widgets, that the bound form
widgets carry their parameter names and the ranges Slicer's binding will set, and that the
screenshots the README and the extension show exist. It does not exercise PythonQt (see
``qt_panel.py``).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytest.importorskip("PyQt5.QtWidgets", reason="PyQt5 is not installed (pip install PyQt5)")

import qt_panel  # noqa: E402
from PyQt5 import QtCore, QtGui, QtWidgets  # noqa: E402
from SGPSAMSlicerLib.forms import FORMS, SeedSource  # noqa: E402
from test_ui_names import _used_names, _widgets  # noqa: E402

REPO = qt_panel.REPO_ROOT
SCREENSHOTS = REPO / "Resources" / "Screenshots"


@pytest.fixture(scope="module")
def panel() -> QtWidgets.QWidget:
    widget = qt_panel.load_panel()
    qt_panel.show_as_after_setup(widget)
    return widget


def test_every_widget_the_code_uses_exists_with_its_class(panel) -> None:
    declared = {name: element.get("class") for name, element in _widgets(
        __import__("xml.etree.ElementTree", fromlist=["parse"]).parse(
            qt_panel.UI_FILE).getroot()).items()}
    used = _used_names()
    assert len(used) > 30
    problems = []
    for name in sorted(used):
        widget = panel.findChild(QtCore.QObject, name)
        if widget is None:
            problems.append(f"{name}: Qt loaded no such widget")
        elif type(widget).__name__ != declared[name]:
            problems.append(f"{name}: {type(widget).__name__}, the .ui says {declared[name]}")
    assert problems == []
    # The scene reaches both node selectors, as uiWidget.setMRMLScene does in Slicer.
    for name in ("inputVolumeSelector", "segmentationSelector"):
        assert panel.findChild(QtCore.QObject, name).scene is panel.scene


def _overlaps(layout: QtWidgets.QLayout) -> list[str]:
    boxes = []
    for index in range(layout.count()):
        item = layout.itemAt(index)
        widget = item.widget()
        if widget is not None and widget.isVisible():
            boxes.append((widget.objectName() or type(widget).__name__, widget.geometry()))
    return [f"{a} overlaps {b}" for n, (a, ra) in enumerate(boxes)
            for b, rb in boxes[n + 1:] if ra.intersects(rb)]


def test_each_tab_lays_out_at_a_narrow_panel_width(panel) -> None:
    tabs = panel.findChild(QtWidgets.QTabWidget, "tabWidget")
    assert [tabs.tabText(i) for i in range(tabs.count())] == list(qt_panel.TAB_FILES)
    images = qt_panel.render_tabs(panel)
    for index in range(tabs.count()):
        tabs.setCurrentIndex(index)
        panel.resize(qt_panel.PANEL_WIDTH, images[tabs.tabText(index)].height())
        panel.show()
        QtWidgets.QApplication.processEvents()
        page = tabs.widget(index)
        assert page.minimumSizeHint().width() <= qt_panel.PANEL_WIDTH - 20, tabs.tabText(index)
        problems = []
        for widget in page.findChildren(QtWidgets.QWidget):
            name = widget.objectName()
            if not name or name.startswith("qt_") or not widget.isVisible():
                continue  # Qt's own parts of complex widgets (table corners, scroll bars)
            if widget.width() <= 0 or widget.height() <= 0:
                problems.append(f"{widget.objectName()}: no room")
            corner = widget.mapTo(page, QtCore.QPoint(widget.width() - 1, widget.height() - 1))
            if not page.rect().contains(corner):
                problems.append(f"{widget.objectName()}: outside the tab")
        for layout in page.findChildren(QtWidgets.QLayout):
            problems += _overlaps(layout)
        assert problems == [], tabs.tabText(index)
    panel.hide()


def test_bound_form_widgets_carry_their_names_and_ranges(panel) -> None:
    for pack, fields in FORMS.items():
        for field in fields:
            widget = panel.findChild(QtWidgets.QWidget, field.widget)
            assert widget.property("SlicerParameterName") == f"{pack}.{field.name}"
            if isinstance(widget, (QtWidgets.QSpinBox, QtWidgets.QDoubleSpinBox)):
                assert (widget.minimum(), widget.maximum(), widget.value()) == pytest.approx(
                    (field.minimum, field.maximum, field.default))
                if field.decimals is not None:
                    assert widget.decimals() == field.decimals
                    assert widget.singleStep() == pytest.approx(field.single_step)
            if isinstance(widget, QtWidgets.QComboBox):
                items = [widget.itemText(i) for i in range(widget.count())]
                expected = [s.label() for s in SeedSource] if field.type is SeedSource else [
                    str(choice) for choice in field.choices]
                assert items == expected
    node = panel.findChild(QtWidgets.QWidget, "inputVolumeSelector")
    assert node.property("SlicerParameterName") == "inputVolume"
    assert node.nodeTypes == ["vtkMRMLScalarVolumeNode"] and node.showChildNodeTypes is False


def _distinct_colours(image: QtGui.QImage) -> int:
    step = 7
    return len({image.pixel(x, y) for x in range(0, image.width(), step)
                for y in range(0, image.height(), step)})


def test_screenshots_render_and_are_shown(panel, tmp_path: Path) -> None:
    assert qt_panel.main(["--out", str(tmp_path)]) == 0
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for tab, name in qt_panel.TAB_FILES.items():
        rendered = QtGui.QImage(str(tmp_path / name))
        assert rendered.width() == qt_panel.PANEL_WIDTH and rendered.height() > 400, tab
        assert _distinct_colours(rendered) > 5, f"{tab}: blank image"
        committed = QtGui.QImage(str(SCREENSHOTS / name))
        assert not committed.isNull(), f"{SCREENSHOTS / name} is missing: run qt_panel.py"
        assert committed.width() == qt_panel.PANEL_WIDTH
        assert f"Resources/Screenshots/{name}" in readme
    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    urls = [line.split('"')[1] for line in cmake.splitlines()
            if line.startswith("set(EXTENSION_SCREENSHOTURLS")]
    assert urls, "no EXTENSION_SCREENSHOTURLS"
    for url in urls[0].split():
        relative = url.replace("${EXTENSION_RAW_URL}/", "")
        assert (REPO / relative).is_file(), url


def test_the_qt_free_package_imports_no_gui() -> None:
    """SGPSAMSlicerLib is what pytest and scripts run: no qt, ctk or slicer.app at import."""
    for path in sorted((REPO / "SGPSAM" / "SGPSAMSlicerLib").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in ("qt", "ctk", "PythonQt", "SGPSAMGui"), \
                    f"{path.name} imports {name}"
