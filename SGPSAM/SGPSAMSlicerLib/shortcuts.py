"""The Segment tab's keyboard shortcuts, and the keys Slicer itself uses (so they never clash).

Why a table of Slicer's keys: a module shortcut with the default (window) context wins over a
view's own key handling, so a key Slicer uses in its views would silently stop working while
the module is shown. The keys below come from the Slicer 5.8/5.10 sources:
``vtkMRMLSliceIntersectionWidget.cxx`` and ``vtkMRMLCameraWidget.cxx`` (views),
``vtkSlicerMarkupsWidget.cxx`` (``s`` snaps the hovered control point to the slice, Delete /
BackSpace delete it; right-click or double-click ends placing) and
``qMRMLSegmentEditorWidget.cxx`` (its shortcuts are active only while the Segment Editor is
shown, so only the Ctrl+Z / Ctrl+Y pair is shared, which the modules never are at once).
"""
from __future__ import annotations

__all__ = ["SHORTCUTS", "SLICER_VIEW_KEYS", "shortcuts_help"]

#: Action -> key sequence (Qt's QKeySequence text).
SHORTCUTS = {
    "positive": "a",
    "negative": "x",
    "nextLesion": "n",
    "undo": "Ctrl+Z",
    "reset": "Shift+R",
}

#: Single keys (and Shift+key) that Slicer's slice/3D views and markups widgets handle.
SLICER_VIEW_KEYS = frozenset({
    "r", "f", "b", "v", "Shift+V", "g", "t", "s", "[", "]", "{", "}", "+", "-",
    "Left", "Right", "Up", "Down", "Home", "End", "PgDown", "Ins", "Del", "Backspace", "Esc",
    "Shift+Del", "Ctrl+B",
})


def shortcuts_help() -> str:
    """The one line the Segment tab shows under its buttons."""
    return ("Shortcuts: {positive} positive point, {negative} negative point, {nextLesion} next "
            "lesion, {undo} undo, {reset} reset lesion. Right-click or double-click in a view "
            "ends placing.").format(**SHORTCUTS)
