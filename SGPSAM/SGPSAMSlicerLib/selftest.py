"""The module's self-test: a known-answer phantom, a transparent "oracle" model, the cases.

Why: a self-test must be able to fail. A random-weight model has no right answer, and the
bundled demo model may not be installed, so the tests of the Logic's plumbing (geometry,
segment writes, undo) use an oracle whose answer is predictable from the image: it goes
through the real ``InteractiveSession`` (crop sampling, normalisation, prompt coordinates,
mapping logits back to the volume), so any geometry error moves or spoils the result.

The oracle (``OracleModel``, a ``torch.nn.Module`` with SAM-Med3D's interface):

- ``encode(crop)`` returns the normalised crop itself (no learning);
- ``decode`` averages it to the low-res grid and, for a positive click, grows the region of
  cells whose intensity is closer to the clicked cell's than to the crop's median, connected
  to the clicked cell (26-neighbourhood) and within a ball around it, unioned with the
  previous mask; the logits are the signed, scaled intensity difference, so the 0.5
  boundary falls between cells the way a smooth model's would. A negative click removes the
  connected part of the previous mask that holds it (or a small ball around it).

``make_phantom`` builds an oblique, anisotropic MR-like volume with bright spherical lesions
at known RAS centres and returns the exact label.
"""
from __future__ import annotations

import importlib.util
import os
import unittest
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

__all__ = ["make_oracle_model", "make_phantom", "Phantom", "dice", "oblique_ijk_to_ras",
           "SelfTestCases", "ORACLE_MIN_DICE", "DEMO_MIN_DICE", "torch_missing_reason"]


def torch_missing_reason() -> str:
    """Why the self-test cannot run ("" when it can): PyTorch is not installed, the normal
    state of a fresh Slicer and of an extension build machine (the PyTorch extension installs
    PyTorch Utils, not torch). Checked without importing torch."""
    try:
        found = importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return ""
    return ("PyTorch is not installed: install it from the SGP-SAM module (Initialize asks) or "
            "the PyTorch Utils module, then run the self-test again")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two masks (1.0 when both are empty)."""
    a = np.asarray(a) > 0
    b = np.asarray(b) > 0
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def oblique_ijk_to_ras(spacing=(1.2, 1.0, 2.0), origin=(-40.0, 25.0, -30.0),
                       degrees: float = 20.0, flip_i: bool = True) -> np.ndarray:
    """A 4x4 IJK->RAS with a rotation about an oblique axis, anisotropic spacing, a flip."""
    axis = np.array([1.0, 2.0, 3.0])
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(degrees)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
    if flip_i:
        rotation = rotation @ np.diag([-1.0, 1.0, 1.0])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation * np.asarray(spacing, dtype=np.float64)
    matrix[:3, 3] = origin
    return matrix


@dataclass
class Phantom:
    """Voxels (K, J, I), their IJK->RAS matrix, the label (lesion n has value n), centres."""

    array: np.ndarray
    ijk_to_ras: np.ndarray
    label: np.ndarray
    centres_ras: list[np.ndarray]
    radii_mm: list[float]


def make_phantom(shape_kji=(40, 72, 64), ijk_to_ras: np.ndarray | None = None,
                 lesions: list[tuple[tuple[float, float, float], float]] | None = None,
                 seed: int = 0, background: float = 100.0, lesion_value: float = 300.0,
                 noise: float = 8.0) -> Phantom:
    """An MR-like volume with bright spheres; ``lesions`` = [((i, j, k) centre, radius mm)].

    Centres are given in continuous voxel coordinates so they are inside whatever the matrix.
    """
    rng = np.random.default_rng(seed)
    matrix = oblique_ijk_to_ras() if ijk_to_ras is None else np.asarray(ijk_to_ras, float)
    if lesions is None:
        nk, nj, ni = shape_kji
        lesions = [((ni * 0.35, nj * 0.4, nk * 0.5), 14.0), ((ni * 0.72, nj * 0.68, nk * 0.45),
                                                              11.0)]
    kk, jj, ii = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape_kji],
                             indexing="ij")
    ijk = np.stack([ii, jj, kk], axis=-1)
    ras = ijk @ matrix[:3, :3].T + matrix[:3, 3]
    label = np.zeros(shape_kji, dtype=np.uint8)
    centres, radii = [], []
    for number, (centre_ijk, radius) in enumerate(lesions, start=1):
        centre = matrix[:3, :3] @ np.asarray(centre_ijk, dtype=np.float64) + matrix[:3, 3]
        inside = np.sum((ras - centre) ** 2, axis=-1) <= radius ** 2
        label[inside & (label == 0)] = number
        centres.append(centre)
        radii.append(float(radius))
    array = background + noise * rng.standard_normal(shape_kji)
    array[label > 0] = lesion_value + noise * rng.standard_normal(int((label > 0).sum()))
    return Phantom(array.astype(np.float32), matrix, label, centres, radii)


def make_oracle_model(image_size: int = 48, crop_spacing_mm: float = 1.5,
                      low_res_size: int = 12) -> Any:
    """An ``OracleModel`` instance (torch is imported here, not at module load).

    The crop is smaller than SAM-Med3D's 128^3 (same 1.5 mm voxels and 4x low-res cells) so
    the self-test is quick; the session takes the size from the model's config.
    """
    import torch  # noqa: PLC0415 - heavy import only when a test asks for the model
    import torch.nn.functional as F  # noqa: N812, PLC0415

    scale = image_size // low_res_size
    # Growth stays within this many low-res cells of the click, so a click on background
    # never floods the crop (and never reaches its faces, where the session adds windows).
    reach = low_res_size / 2 - 1.5
    grid = torch.stack(torch.meshgrid(*[torch.arange(low_res_size, dtype=torch.float32)] * 3,
                                      indexing="ij"))

    def distance(cell: torch.Tensor) -> torch.Tensor:
        """(1, 1, L, L, L) distance in cells from ``cell``."""
        offset = grid - cell.float().reshape(3, 1, 1, 1)
        return offset.pow(2).sum(dim=0).sqrt()[None, None]

    def _grow(seed_mask: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Cells of ``allowed`` 26-connected to ``seed_mask`` (both (1, 1, L, L, L) bool)."""
        current = seed_mask & allowed
        for _ in range(3 * low_res_size):
            grown = F.max_pool3d(current.float(), 3, stride=1, padding=1) > 0
            grown &= allowed
            if torch.equal(grown, current):
                break
            current = grown
        return current

    class OracleModel(torch.nn.Module):
        """Threshold-and-grow stand-in with SAM-Med3D's encode/decode interface."""

        def __init__(self) -> None:
            super().__init__()
            self.config = SimpleNamespace(image_size=image_size, crop_spacing_mm=crop_spacing_mm,
                                          preset="oracle")
            self.low_res_size = low_res_size
            self.register_buffer("_anchor", torch.zeros(1))  # gives .to() a device to track
            self.checkpoint_metadata = {"format": "oracle"}

        def encode(self, image: torch.Tensor) -> torch.Tensor:
            return F.avg_pool3d(image.float(), scale)

        def decode(self, embedding: torch.Tensor, points: torch.Tensor, labels: torch.Tensor,
                   mask_logits: torch.Tensor) -> torch.Tensor:
            low = embedding.float()
            previous = mask_logits.float().reshape(low.shape)
            point = points[0, -1].float()
            cell = torch.clamp(torch.floor(point / scale).long(), 0, low_res_size - 1)
            seed = torch.zeros_like(low, dtype=torch.bool)
            seed[0, 0, cell[0], cell[1], cell[2]] = True
            if int(labels[0, -1]) == 0:
                inside = previous > 0
                region = _grow(seed, inside) if bool(inside[seed].any()) else \
                    F.max_pool3d(seed.float(), 3, stride=1, padding=1) > 0
                return torch.where(region, torch.full_like(previous, -10.0), previous)
            value = low[0, 0, cell[0], cell[1], cell[2]]
            median = low.median()
            contrast = value - median
            if float(contrast.abs()) < 1e-6:
                return previous
            signed = (low - (value + median) / 2.0) * torch.sign(contrast)
            logits = 20.0 * signed / contrast.abs()
            region = _grow(seed, (logits > 0) & (distance(cell) <= reach))
            logits = torch.where(region | (logits <= 0), logits, torch.full_like(logits, -10.0))
            return torch.where(previous > 0, torch.maximum(logits, previous), logits)

    return OracleModel().eval()


# ----------------------------------------------------------------------------------------------
# The self-test cases (mixed into SGPSAM.SGPSAMTest, a unittest.TestCase).

#: Pass mark for the oracle (known answer, exact geometry).
ORACLE_MIN_DICE = 0.85
#: Pass mark for the bundled demo model on a synthetic case (the environment variable
#: SGPSAM_SELFTEST_MIN_DICE overrides it). The model bundled on 2026-12-02 scores 0.831 on this
#: case with its one click (the library session, same case and click); earlier ones scored
#: 0.685 and 0.133.
DEMO_MIN_DICE = 0.7


def _volume_node(array: np.ndarray, ijk_to_ras: np.ndarray, name: str) -> Any:
    import slicer  # noqa: PLC0415

    from .mrml_geometry import vtk_from_matrix  # noqa: PLC0415

    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, array)
    node.SetIJKToRASMatrix(vtk_from_matrix(ijk_to_ras))
    node.CreateDefaultDisplayNodes()
    return node


def _segment_array(segmentation_node: Any, segment_id: str, volume_node: Any) -> np.ndarray:
    import slicer  # noqa: PLC0415

    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node)


class SelfTestCases:
    """Test methods for a ``unittest.TestCase`` that provides ``makeLogic()`` (the module's
    logic) and ``delayDisplay(text)``; ``slicer.mrmlScene`` is the scene to work in."""

    TEST_NAMES = ("test_oracle_lesions_and_undo", "test_bad_inputs", "test_demo_model_dice")

    def test_oracle_lesions_and_undo(self) -> None:
        """Two lesions under a rotated parent transform land where they are; undo is exact."""
        import slicer  # noqa: PLC0415
        import vtk  # noqa: PLC0415

        from .mrml_geometry import volume_ras_to_world  # noqa: PLC0415

        self.delayDisplay("Oracle model on an oblique phantom under a transform")
        phantom = make_phantom(seed=3)
        volume = _volume_node(phantom.array, phantom.ijk_to_ras, "SGPSAM phantom")
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        matrix = vtk.vtkMatrix4x4()
        matrix.DeepCopy([0.0, -1.0, 0.0, 20.0, 1.0, 0.0, 0.0, -5.0, 0.0, 0.0, 1.0, 12.0,
                         0.0, 0.0, 0.0, 1.0])
        transform.SetMatrixTransformToParent(matrix)
        volume.SetAndObserveTransformNodeID(transform.GetID())
        slicer.util.setSliceViewerLayers(background=volume, fit=True)

        logic = self.makeLogic()
        logic.setModel(make_oracle_model(), "oracle", device="cpu")
        segmentation = logic.startSession(volume)
        first = logic.addLesion()
        result = logic.addPoint(volume_ras_to_world(volume, phantom.centres_ras[0]))
        self.assertGreater(result.voxels_changed, 0)
        mask = _segment_array(segmentation, first, volume)
        score = dice(mask, phantom.label == 1)
        self.delayDisplay(f"Lesion 1: Dice {score:.3f} (needs >= {ORACLE_MIN_DICE})")
        self.assertGreaterEqual(score, ORACLE_MIN_DICE)

        second = logic.addLesion()
        logic.addPoint(volume_ras_to_world(volume, phantom.centres_ras[1]))
        mask2 = _segment_array(segmentation, second, volume)
        score2 = dice(mask2, phantom.label == 2)
        self.delayDisplay(f"Lesion 2: Dice {score2:.3f} (needs >= 0.75)")
        self.assertGreaterEqual(score2, 0.75)
        self.assertTrue(np.array_equal(_segment_array(segmentation, first, volume), mask),
                        "the first lesion changed when the second was segmented")

        logic.undo()
        self.assertEqual(int(_segment_array(segmentation, second, volume).sum()), 0)
        self.assertEqual(logic.activeMarkupsNode(True).GetNumberOfControlPoints(), 0)
        self.assertTrue(np.array_equal(_segment_array(segmentation, first, volume), mask))

    def test_bad_inputs(self) -> None:
        """No volume, a single slice, a point outside: clear errors, scene unchanged."""
        import slicer  # noqa: PLC0415

        from SGPSAMLib.errors import PromptError, VolumeError  # noqa: PLC0415

        logic = self.makeLogic()
        logic.setModel(make_oracle_model(), "oracle", device="cpu")
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(VolumeError):
            logic.startSession(None)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)

        flat = make_phantom(shape_kji=(1, 40, 40), lesions=[((20.0, 20.0, 0.0), 5.0)])
        node = _volume_node(flat.array, flat.ijk_to_ras, "single slice")
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(VolumeError) as caught:
            logic.startSession(node)
        self.assertIn("single slice", str(caught.exception))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)

        phantom = make_phantom(seed=1)
        volume = _volume_node(phantom.array, phantom.ijk_to_ras, "phantom")
        segmentation = logic.startSession(volume)
        segment = logic.addLesion()
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(PromptError) as caught:
            logic.addPoint([1e4, 0.0, 0.0])
        self.assertIn("outside the volume", str(caught.exception))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.assertEqual(logic.activeMarkupsNode(True).GetNumberOfControlPoints(), 0)
        self.assertEqual(int(_segment_array(segmentation, segment, volume).sum()), 0)

    def test_demo_model_dice(self) -> None:
        """The bundled demo model on a synthetic case (skipped when it is not installed)."""
        from SGPSAMLib import models  # noqa: PLC0415

        if models.bundled_model_path() is None:
            raise unittest.SkipTest("the bundled demo model is not installed")
        from SGPSAMLib.synthetic import DEMO_SEED_BASE, make_case  # noqa: PLC0415

        threshold = float(os.environ.get("SGPSAM_SELFTEST_MIN_DICE", DEMO_MIN_DICE))
        case = make_case(DEMO_SEED_BASE + 7, modality="CT")  # a seed no training set uses
        volume = _volume_node(case.volume.array, case.volume.ijk_to_ras, "synthetic case")
        lesion = max(case.lesions, key=lambda spec: spec.voxels)
        logic = self.makeLogic()
        logic.loadModel("demo", device="cpu")
        segmentation = logic.startSession(volume, modality="CT")
        segment = logic.addLesion()
        logic.addPoint(lesion.centre_ras)
        score = dice(_segment_array(segmentation, segment, volume), case.label == lesion.label)
        self.delayDisplay(f"Demo model: Dice {score:.3f} (needs >= {threshold})")
        self.assertGreaterEqual(score, threshold)
