"""Markups events of the lesions' point lists -> one deferred update, never model work inside
a VTK event.

Why: while placing, every mouse move updates the markups *preview* point and fires
``PointModifiedEvent``; a drag fires it continuously; Slicer fires these events from inside
its interaction handling. Running the model (or Qt's ``processEvents``) there is slow and
re-entrant. So :class:`PointEventFilter`

- ignores events that change nothing the segment depends on (a preview point, our own edits,
  a point removed that was never defined): ``logic.pointsChanged(node)`` decides, cheaply;
- ignores a drag until it ends;
- otherwise schedules **one** update through ``schedule(delay_ms, callback)`` (in Slicer
  ``qt.QTimer.singleShot``); the update first switches to the lesion whose list changed (also
  deferred), then syncs the points. While a prediction runs it tries again shortly after.

No Qt here: ``schedule``, ``run`` (the Widget's error-reporting call wrapper) and ``busy``
are injected, so tests drive it with real MRML markups and a fake scheduler.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

__all__ = ["PointEventFilter", "MARKUPS_EVENTS", "RETRY_MS"]

log = logging.getLogger(__name__)

#: The markups node events observed on each lesion's point lists.
MARKUPS_EVENTS = (
    "PointPositionDefinedEvent",  # a point was placed
    "PointRemovedEvent",          # deleted (also: a preview point taken away)
    "PointModifiedEvent",         # moved, edited in the Markups table, or the preview moved
    "PointStartInteractionEvent",  # a drag starts
    "PointEndInteractionEvent",    # a drag ends
)
#: Delay before trying again while a prediction runs.
RETRY_MS = 50

Schedule = Callable[[int, Callable[[], None]], None]
Run = Callable[..., Any]


class PointEventFilter:
    """Observes the session's point lists and runs at most one update per burst of events.

    Args:
        logic: the module logic (``hasSession``, ``markupsNodes``, ``lesionOfMarkups``,
            ``pointsChanged``, ``activeLesion``, ``setActiveLesion``, ``syncPoints``).
        schedule: ``schedule(delay_ms, callback)`` runs ``callback`` later, outside the event.
        run: ``run(title, function, *args)`` calls the Logic and reports errors (returns None
            on failure); default: a plain call.
        busy: True while a prediction runs (the update waits).
        on_lesion_switched: called after the active lesion changed to the edited one.
        on_result: called with what ``syncPoints`` returned (None when nothing changed).
    """

    def __init__(self, logic: Any, schedule: Schedule, run: Run | None = None,
                 busy: Callable[[], bool] = lambda: False,
                 on_lesion_switched: Callable[[], None] | None = None,
                 on_result: Callable[[Any], None] | None = None) -> None:
        self.logic = logic
        self.schedule = schedule
        self.run = run if run is not None else (lambda title, function, *args: function(*args))
        self.busy = busy
        self.on_lesion_switched = on_lesion_switched
        self.on_result = on_result
        self.dragging = False
        self.scheduled = False
        self.pending_lesion: str | None = None
        self._observations: list[tuple[Any, int]] = []

    # -- observers ------------------------------------------------------------------------
    def observe(self) -> None:
        """Observe every point list of the session (again: after lesions were added)."""
        self.unobserve()
        if not self.logic.hasSession():
            return
        for node in self.logic.markupsNodes():
            for name in MARKUPS_EVENTS:
                tag = node.AddObserver(getattr(node, name), self._callback(name))
                self._observations.append((node, tag))

    def unobserve(self) -> None:
        for node, tag in self._observations:
            node.RemoveObserver(tag)
        self._observations = []
        self.dragging = False

    def _callback(self, name: str) -> Callable[[Any, Any], None]:
        return lambda caller, event: self.handle(caller, name)

    # -- events ---------------------------------------------------------------------------
    def handle(self, node: Any, event: str) -> None:
        """One markups event (``event`` is its name in ``MARKUPS_EVENTS``)."""
        if event == "PointStartInteractionEvent":
            self.dragging = True
            return
        if event == "PointEndInteractionEvent":
            self.dragging = False
        elif event == "PointModifiedEvent" and self.dragging:
            return  # a drag updates once, at its end
        if not self.logic.hasSession() or not self.logic.pointsChanged(node):
            return
        self.pending_lesion = self.logic.lesionOfMarkups(node)
        if not self.scheduled:
            self.scheduled = True
            self.schedule(0, self.flush)

    def flush(self) -> None:
        """The deferred update: switch lesion if needed, then sync the points."""
        self.scheduled = False
        if not self.logic.hasSession():
            self.pending_lesion = None
            return
        if self.busy():
            self.scheduled = True
            self.schedule(RETRY_MS, self.flush)
            return
        lesion, self.pending_lesion = self.pending_lesion, None
        if lesion is not None and lesion != self.logic.activeLesion():
            self.run("Choose lesion", self.logic.setActiveLesion, lesion)
            if self.on_lesion_switched is not None:
                self.on_lesion_switched()
        result = self.run("Update", self.logic.syncPoints)
        if self.on_result is not None:
            self.on_result(result)
