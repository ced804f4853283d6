"""The Segment tab's status line says when a click gave nothing usable (issue 13, item 6):
an empty prediction, or a positive point on background or air; a good click gets no warning."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
torch = pytest.importorskip("torch")

from SGPSAMSlicerLib import mrml_geometry  # noqa: E402
from SGPSAMSlicerLib.logic import SegmentLogic  # noqa: E402
from SGPSAMSlicerLib.selftest import make_oracle_model, make_phantom  # noqa: E402
from SGPSAMSlicerLib.settings import Settings  # noqa: E402

from SGPSAMLib.result_checks import EMPTY_PREDICTION  # noqa: E402

AIR_COLUMNS = 10  # voxels i < 10 of the phantom are set to 0: "air" beside the body


class NothingModel(torch.nn.Module):
    """SAM-Med3D's encode/decode interface; every logit is -10, so every mask is empty."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(image_size=48, crop_spacing_mm=1.5, preset="nothing")
        self.low_res_size = 12
        self.register_buffer("_anchor", torch.zeros(1))
        self.checkpoint_metadata = {"format": "test"}

    def encode(self, image):
        return torch.nn.functional.avg_pool3d(image.float(), 4)

    def decode(self, embedding, points, labels, mask_logits):
        return torch.full_like(embedding.float(), -10.0)


def _session(mrml, model):
    phantom = make_phantom(seed=3)
    array = phantom.array.copy()
    array[:, :, :AIR_COLUMNS] = 0.0
    node = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "phantom")
    slicer.util.updateVolumeFromArray(node, array)
    node.SetIJKToRASMatrix(mrml_geometry.vtk_from_matrix(phantom.ijk_to_ras))
    logic = SegmentLogic(Settings({}))
    logic.setModel(model, "test model", device="cpu")
    logic.startSession(node)
    logic.addLesion()
    return logic, phantom


def _ras(phantom, ijk) -> list[float]:
    return (phantom.ijk_to_ras[:3, :3] @ np.asarray(ijk, float) + phantom.ijk_to_ras[:3, 3]
            ).tolist()


def test_an_empty_prediction_is_said_on_the_status_line(mrml):
    logic, phantom = _session(mrml, NothingModel())
    result = logic.addPoint(phantom.centres_ras[0].tolist())
    assert result.lesion_voxels == 0
    assert f"Warning: {EMPTY_PREDICTION}." in result.message
    assert "background or air" not in result.message  # the click was on the lesion


def test_a_click_on_air_is_said_and_a_good_click_is_not(mrml):
    logic, phantom = _session(mrml, make_oracle_model())
    good = logic.addPoint(phantom.centres_ras[0].tolist())
    assert good.lesion_voxels > 0 and "Warning" not in good.message
    logic.addLesion()
    air = logic.addPoint(_ras(phantom, (3.0, 36.0, 20.0)))
    assert "lies on background or air (voxel value 0," in air.message
    usual, warning = air.message.split(" Warning: ", 1)
    assert ": point added; " in usual  # the usual line comes first
    assert warning.endswith("a positive point belongs inside the lesion.")
