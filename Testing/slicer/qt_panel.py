"""The module's panel (``SGPSAM/Resources/UI/SGPSAM.ui``) loaded by a real Qt (PyQt5, Qt 5.15
as in Slicer 5.x), with small stand-ins for the four CTK / qMRML classes it uses.

Used by ``test_qt_panel.py`` and, as a script, to render one PNG per tab for the README and the
extension's screenshot URL::

    QT_QPA_PLATFORM=offscreen python Testing/slicer/qt_panel.py --out Resources/Screenshots

What this proves: the .ui parses with Qt's own loader, every widget has the class the code
expects, each tab lays out without overlaps at the panel's width. What it does not: the
stand-ins are not CTK/qMRML (a node selector here lists no nodes), and PyQt5 is not PythonQt,
Slicer's binding (``button.checked`` as a property, ``connect("activated(int)", f)``): that
needs the real application (README, "Checking a release in Slicer").

The stand-ins are written here from scratch; they mimic only what the .ui sets on them.
"""
from __future__ import annotations

import argparse
import os
import sys
import types
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PyQt5 import QtCore, QtGui, QtWidgets, uic  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
UI_FILE = REPO_ROOT / "SGPSAM" / "Resources" / "UI" / "SGPSAM.ui"
#: A narrow module panel (Slicer's default panel is about this wide on a laptop screen).
PANEL_WIDTH = 480
TAB_FILES = {"Segment": "SGPSAM-Segment.png", "Batch": "SGPSAM-Batch.png",
             "Training": "SGPSAM-Training.png"}


class _SceneSignal:
    """``mrmlSceneChanged(vtkMRMLScene*)``: uic looks the overload up by its C++ type name,
    which PyQt5 cannot know; this object accepts any overload and records the slots."""

    def __init__(self) -> None:
        self.slots: list = []

    def __getitem__(self, signature: str) -> _SceneSignal:
        return self

    def connect(self, slot) -> None:
        self.slots.append(slot)

    def emit(self, scene) -> None:
        for slot in self.slots:
            slot(scene)


class qMRMLWidget(QtWidgets.QWidget):  # noqa: N801 - the class name the .ui names
    """A QWidget that hands an MRML scene to its children (here: any object)."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.mrmlSceneChanged = _SceneSignal()
        self.scene = None

    def setMRMLScene(self, scene) -> None:  # noqa: N802
        self.scene = scene
        self.mrmlSceneChanged.emit(scene)


class qMRMLNodeComboBox(QtWidgets.QComboBox):  # noqa: N801
    """A combo box standing in for the node selector: shows its 'none' entry or the node
    type it would list."""

    currentNodeChanged = QtCore.pyqtSignal(object)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.nodeTypes: list[str] = []
        self.showChildNodeTypes = True
        self.noneEnabled = False
        self.addEnabled = True
        self.removeEnabled = True
        self.noneDisplay = "None"
        self.scene = None
        self._refresh()

    def _refresh(self) -> None:
        self.clear()
        if self.noneEnabled:
            self.addItem(self.noneDisplay)
        for name in self.nodeTypes:
            self.addItem(name.replace("vtkMRML", "").replace("Node", "") + " 1")

    def setNodeTypes(self, types_: list[str]) -> None:  # noqa: N802
        self.nodeTypes = list(types_)
        self._refresh()

    def setShowChildNodeTypes(self, value: bool) -> None:  # noqa: N802
        self.showChildNodeTypes = bool(value)

    def setNoneEnabled(self, value: bool) -> None:  # noqa: N802
        self.noneEnabled = bool(value)
        self._refresh()

    def setAddEnabled(self, value: bool) -> None:  # noqa: N802
        self.addEnabled = bool(value)

    def setRemoveEnabled(self, value: bool) -> None:  # noqa: N802
        self.removeEnabled = bool(value)

    def setNoneDisplay(self, text: str) -> None:  # noqa: N802
        self.noneDisplay = text
        self._refresh()

    def setMRMLScene(self, scene) -> None:  # noqa: N802
        self.scene = scene

    def currentNode(self):  # noqa: N802
        return None

    def setCurrentNode(self, node) -> None:  # noqa: N802
        self.currentNodeChanged.emit(node)


class ctkPathLineEdit(QtWidgets.QWidget):  # noqa: N801
    """A line edit with a browse button, as ctkPathLineEdit looks."""

    currentPathChanged = QtCore.pyqtSignal(str)
    # The .ui's 'filters' set names these flags (ctkPathLineEdit::Filter).
    Dirs, Files, Drives, NoDot, NoDotDot, Readable = 1, 2, 4, 8, 16, 32

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.lineEdit = QtWidgets.QLineEdit(self)
        self.browseButton = QtWidgets.QToolButton(self)
        self.browseButton.setText("...")
        layout.addWidget(self.lineEdit)
        layout.addWidget(self.browseButton)
        self.filters = 0
        self.nameFilters: list[str] = []
        self.lineEdit.textChanged.connect(self.currentPathChanged)

    def setFilters(self, value) -> None:  # noqa: N802
        self.filters = value

    def setNameFilters(self, value) -> None:  # noqa: N802
        self.nameFilters = value

    @property
    def currentPath(self) -> str:  # noqa: N802
        return self.lineEdit.text()

    def setCurrentPath(self, path: str) -> None:  # noqa: N802
        self.lineEdit.setText(path)


class ctkCollapsibleButton(QtWidgets.QGroupBox):  # noqa: N801
    """A titled frame around its contents (the collapse arrow is not drawn)."""

    def setText(self, text: str) -> None:  # noqa: N802
        self.setTitle(text)

    def text(self) -> str:
        return self.title()

    def setCollapsed(self, collapsed: bool) -> None:  # noqa: N802
        self.setVisible(not collapsed)


STAND_INS = {cls.__name__: cls for cls in (qMRMLWidget, qMRMLNodeComboBox, ctkPathLineEdit,
                                           ctkCollapsibleButton)}


def _install_stand_ins() -> None:
    """uic imports a custom widget class from the module named after its header
    (``ctkPathLineEdit.h`` -> ``ctkPathLineEdit``)."""
    for name, cls in STAND_INS.items():
        module = sys.modules.get(name)
        if module is None or getattr(module, name, None) is not cls:
            module = types.ModuleType(name)
            setattr(module, name, cls)
            sys.modules[name] = module


_APP: list[QtWidgets.QApplication] = []  # keeps the application alive


def application() -> QtWidgets.QApplication:
    app = QtWidgets.QApplication.instance()
    if app is None:
        app = QtWidgets.QApplication(["sgpsam-panel"])
        app.setStyle("Fusion")
        _APP.append(app)
    return app


def load_panel() -> QtWidgets.QWidget:
    """The .ui as Qt loads it, its scene signal connected as Slicer's loader would."""
    application()
    _install_stand_ins()
    panel = uic.loadUi(str(UI_FILE))
    panel.setMRMLScene(object())
    return panel


def show_as_after_setup(panel: QtWidgets.QWidget) -> None:
    """What the Widget's setup() puts into the panel before the user does anything, from the
    same Qt-free sources (model list, shortcuts line, table columns), for the screenshots."""
    sys.path[:0] = [p for p in (str(REPO_ROOT), str(REPO_ROOT / "SGPSAM")) if p not in sys.path]
    from SGPSAMSlicerLib.batch_tab import TABLE_COLUMNS
    from SGPSAMSlicerLib.module_logic import MODEL_STATES
    from SGPSAMSlicerLib.shortcuts import shortcuts_help

    from SGPSAMLib import models

    def find(cls, name):
        return panel.findChild(cls, name)

    combo = find(QtWidgets.QComboBox, "modelComboBox")
    for info in models.KNOWN_MODELS.values():
        combo.addItem(info.title)
    combo.addItem("Local checkpoint file")
    find(QtWidgets.QLabel, "modelStatusLabel").setText(MODEL_STATES["bundled"])
    find(QtWidgets.QLabel, "cpuWarningLabel").setVisible(False)
    find(QtWidgets.QLabel, "statusLabel").setText("Choose a volume and press Initialize.")
    find(QtWidgets.QLabel, "shortcutsLabel").setText(shortcuts_help())
    for name in ("checkpointPathLineEdit", "batchSeedsCsvPathLineEdit"):
        find(ctkPathLineEdit, name).setEnabled(False)
    find(QtWidgets.QComboBox, "batchCsvSpaceComboBox").setEnabled(False)
    for name in ("positiveButton", "negativeButton", "undoButton", "resetButton",
                 "addLesionButton", "batchStopButton", "trainStopButton"):
        find(QtWidgets.QPushButton, name).setEnabled(False)
    find(QtWidgets.QComboBox, "lesionComboBox").setEnabled(False)
    table = find(QtWidgets.QTableWidget, "batchTable")
    table.setColumnCount(len(TABLE_COLUMNS))
    table.setHorizontalHeaderLabels(list(TABLE_COLUMNS))


def render_tabs(panel: QtWidgets.QWidget, width: int = PANEL_WIDTH) -> dict[str, QtGui.QImage]:
    """One image per tab at the panel width (and the height the tab needs)."""
    app = application()
    tabs = panel.findChild(QtWidgets.QTabWidget, "tabWidget")
    images = {}
    for index in range(tabs.count()):
        tabs.setCurrentIndex(index)
        panel.resize(width, 100)
        panel.show()
        app.processEvents()
        height = max(panel.sizeHint().height(), panel.minimumSizeHint().height())
        panel.resize(width, height)
        app.processEvents()
        images[tabs.tabText(index)] = panel.grab().toImage()
    panel.hide()
    return images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the SGP-SAM panel, one PNG per tab.")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "Resources" / "Screenshots")
    parser.add_argument("--width", type=int, default=PANEL_WIDTH)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    panel = load_panel()
    show_as_after_setup(panel)
    for tab, image in render_tabs(panel, args.width).items():
        path = args.out / TAB_FILES[tab]
        if not image.save(str(path), "PNG"):
            print(f"cannot write {path}", file=sys.stderr)
            return 1
        print(f"{path} ({image.width()}x{image.height()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
