"""clicked_components.py and the session's ``keep_clicked``: a lesion's clicks give that lesion,
not also a look-alike elsewhere in the window; undo and ``keep_clicked=False`` keep working."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_session import OracleModel, _dice, _physical_volume, _ras_of_voxels

from SGPSAMLib.clicked_components import DROPPED_LOGIT, keep_clicked_components
from SGPSAMLib.session import InteractiveSession


def _balls(size: int = 40, centres=((10, 10, 10), (30, 30, 30)), radius: float = 4.0
           ) -> torch.Tensor:
    """Logits: +3 inside balls of ``radius`` cells, -3 elsewhere."""
    grid = np.stack(np.meshgrid(*(np.arange(size),) * 3, indexing="ij"), axis=-1)
    inside = np.zeros((size,) * 3, dtype=bool)
    for c in centres:
        inside |= np.linalg.norm(grid - np.asarray(c), axis=-1) <= radius
    return torch.from_numpy(np.where(inside, 3.0, -3.0).astype(np.float32))


def test_untouched_component_is_dropped_and_the_clicked_one_kept():
    logits = _balls()
    out = keep_clicked_components(logits, np.array([[10.0, 10.0, 10.0]]), cell_mm=1.5)
    assert out is not logits
    assert torch.equal(out[:20, :20, :20], logits[:20, :20, :20])
    second = logits[26:35, 26:35, 26:35] > 0
    assert second.any()
    assert float(out[26:35, 26:35, 26:35][second].max()) == DROPPED_LOGIT
    assert torch.equal(logits, _balls())  # the input is not modified


def test_both_touched_and_single_component_are_left_alone():
    logits = _balls()
    both = np.array([[10.0, 10.0, 10.0], [30.0, 30.0, 30.0]])
    assert keep_clicked_components(logits, both, 1.5) is logits
    one = _balls(centres=((10, 10, 10),))
    assert keep_clicked_components(one, np.array([[35.0, 35.0, 35.0]]), 1.5) is one
    assert keep_clicked_components(logits, np.zeros((0, 3)), 1.5) is logits
    empty = torch.full((20, 20, 20), -2.0)
    assert keep_clicked_components(empty, np.array([[5.0, 5.0, 5.0]]), 1.5) is empty
    with pytest.raises(ValueError, match="cell_mm"):
        keep_clicked_components(logits, both, 0.0)


def test_touch_radius_is_in_millimetres():
    logits = _balls()  # ball edge at 14 along the first axis
    beside = np.array([[16.0, 10.0, 10.0]])  # 2 cells from the edge
    # 2 cells are 3 mm at 1.5 mm cells: touched. At 3 mm cells they are 6 mm: not touched, but
    # the nearest component is within reach (10 mm), with the same outcome.
    for cell_mm in (1.5, 3.0):
        out = keep_clicked_components(logits, beside, cell_mm)
        assert float(out[10, 10, 10]) == 3.0 and float(out[30, 30, 30]) == DROPPED_LOGIT
    # At 6 mm cells the 2 cells are 12 mm: beyond reach, so nothing is dropped.
    assert keep_clicked_components(logits, beside, 6.0) is logits
    # Nothing touched and nothing within reach (10 mm): the prediction is left as it is.
    far = np.array([[20.0, 2.0, 38.0]])
    assert keep_clicked_components(logits, far, 1.5) is logits
    # Within reach only through the nearest-component rule: kept is the nearer ball.
    near_second = np.array([[30.0, 30.0, 38.0]])  # 4 cells = 6 mm from ball 2's edge
    out = keep_clicked_components(logits, near_second, 1.5)
    assert float(out[30, 30, 30]) == 3.0 and float(out[10, 10, 10]) == DROPPED_LOGIT


A = np.array([-25.0, 0.0, 0.0])
B = np.array([25.0, 0.0, 0.0])
RADIUS_MM = 12.0


def _two_lesions(ras: np.ndarray) -> np.ndarray:
    """Background 100; two bright balls (500) 50 mm apart: the oracle model finds both."""
    values = np.full(len(ras), 100.0)
    for centre in (A, B):
        values[np.linalg.norm(ras - centre, axis=1) <= RADIUS_MM] = 500.0
    return values


def _truth(volume, centre) -> np.ndarray:
    ras = _ras_of_voxels(volume)
    return (np.linalg.norm(ras - centre, axis=1) <= RADIUS_MM).reshape(volume.array.shape)


def test_session_keeps_the_clicked_lesion_and_undo_restores():
    volume = _physical_volume(np.eye(3), (1.5, 1.5, 1.5), (40, 48, 80), centre=(0.0, 0.0, 0.0),
                              fn=_two_lesions)
    lesion_a, lesion_b = _truth(volume, A), _truth(volume, B)

    everything = InteractiveSession(OracleModel(), device="cpu", keep_clicked=False)
    everything.set_volume(volume, modality="MR")
    both = everything.add_point(A).mask.copy()
    assert _dice(both, lesion_a | lesion_b) > 0.8  # the model draws both in one window

    session = InteractiveSession(OracleModel(), device="cpu")
    session.set_volume(volume, modality="MR")
    first = session.add_point(A)
    assert len(session.state.regions) == 1
    assert _dice(first.mask, lesion_a) > 0.8
    assert not np.asarray(first.mask)[lesion_b].any()
    after_a = np.asarray(first.mask).copy()
    # A positive click on the second lesion adds it; undo takes exactly that back.
    second = session.add_point(B)
    assert _dice(second.mask, lesion_a | lesion_b) > 0.8
    undone = session.undo()
    assert np.array_equal(undone.mask, after_a)
