"""Finding nodes in a scene without leaking, and the volume the input selector can show.

``vtkMRMLScene.GetNodesByClass`` returns a new collection the caller must release (forgetting
``UnRegister`` leaks it and every node it holds); counting and indexing by class needs no
collection at all.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["nodes_by_class", "first_input_volume", "INPUT_VOLUME_CLASS"]

#: What the Segment tab's input selector lists: exactly this class (showChildNodeTypes is off in
#: the .ui, so label maps and other subclasses are not offered).
INPUT_VOLUME_CLASS = "vtkMRMLScalarVolumeNode"


def nodes_by_class(scene: Any, class_name: str) -> Iterator[Any]:
    """The scene's nodes of ``class_name`` (and subclasses), in scene order."""
    for index in range(scene.GetNumberOfNodesByClass(class_name)):
        node = scene.GetNthNodeByClass(index, class_name)
        if node is not None:
            yield node


def first_input_volume(scene: Any) -> Any:
    """The first volume the input selector can show (a plain scalar volume that is not
    hidden), or None: never a label map, which the selector would not display."""
    for node in nodes_by_class(scene, INPUT_VOLUME_CLASS):
        if node.GetClassName() == INPUT_VOLUME_CLASS and not node.GetHideFromEditors():
            return node
    return None
