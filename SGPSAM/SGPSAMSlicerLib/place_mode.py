"""Placing points with Slicer's markups place mode, and giving the mode back as it was.

Why a class: the Segment tab switches place mode on with persistence (several clicks in a
row), and persistence is an application-wide setting that the Markups toolbar shows. It is
saved when placing starts and restored when placing stops, however it stops: our buttons, a
right-click or double-click in a view (Slicer's own way to end placing), another module, or the
scene closing. Only MRML nodes are used (no Qt), so this runs in tests against real MRML.
"""
from __future__ import annotations

from typing import Any

__all__ = ["PlaceMode"]

_FIDUCIAL_CLASS = "vtkMRMLMarkupsFiducialNode"


class PlaceMode:
    """Start and stop placing into a markups node; restore the user's persistence setting.

    Args:
        interaction: the scene's ``vtkMRMLInteractionNode``.
        selection: the scene's ``vtkMRMLSelectionNode``.
    """

    def __init__(self, interaction: Any, selection: Any) -> None:
        self.interaction = interaction
        self.selection = selection
        self._saved_persistence: int | None = None

    @classmethod
    def from_application_logic(cls, app_logic: Any) -> PlaceMode:
        return cls(app_logic.GetInteractionNode(), app_logic.GetSelectionNode())

    @property
    def placing(self) -> bool:
        return self.interaction.GetCurrentInteractionMode() == self.interaction.Place

    def start(self, markups_node: Any) -> None:
        """Place points into ``markups_node``, several in a row (persistent place mode)."""
        self.selection.SetReferenceActivePlaceNodeClassName(_FIDUCIAL_CLASS)
        self.selection.SetActivePlaceNodeID(markups_node.GetID())
        if self._saved_persistence is None:
            self._saved_persistence = int(self.interaction.GetPlaceModePersistence())
        self.interaction.SetPlaceModePersistence(1)
        self.interaction.SetCurrentInteractionMode(self.interaction.Place)

    def stop(self) -> None:
        """Leave place mode (if we are in it) and restore the user's persistence setting."""
        if self._saved_persistence is not None and self.placing:
            self.interaction.SetCurrentInteractionMode(self.interaction.ViewTransform)
        self.restore()

    def restore(self) -> None:
        """Give the persistence setting back as it was before ``start``."""
        if self._saved_persistence is not None:
            self.interaction.SetPlaceModePersistence(self._saved_persistence)
            self._saved_persistence = None

    def interaction_mode_changed(self) -> bool:
        """Call on the interaction node's mode change; True when placing has ended (the
        caller unchecks its place buttons)."""
        if self.placing:
            return False
        self.restore()
        return True
