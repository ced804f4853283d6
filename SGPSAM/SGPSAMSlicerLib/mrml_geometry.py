"""MRML nodes <-> SGPSAMLib geometry: the only place in the module that handles transforms.

Frames (each conversion below names the two it connects):

- *world RAS*: the scene's RAS, where views show things and where a markups node's
  ``GetNthControlPointPositionWorld`` answers (the markups node's own parent transforms
  already applied).
- *volume RAS*: the input volume's own RAS frame, before its parent transform (if any). Its
  ``GetIJKToRASMatrix`` maps voxels there. **The library works in this frame**: the model's
  crop axes follow R, A, S of the frame the scanner wrote, whatever registration transform a
  user later put the volume under, and no resampling of the image is ever needed (a
  non-linear parent transform is fine too: only points are transformed).
- *segmentation RAS*: the segmentation node's own frame (its internal labelmaps live there).

A ``Volume`` built here holds a zero-copy (K, J, I) view of the node's voxels and its
IJK->RAS matrix, so oblique, flipped and anisotropic volumes keep their exact geometry.
Results go back to the segmentation on the volume's own voxel grid: the 4x4 matrix from
volume IJK to segmentation RAS is the volume's IJK->RAS composed with the volume-to-
segmentation transform (identity when both share a parent, as for segmentations this module
creates).
"""
from __future__ import annotations

import numpy as np
import slicer
import vtk

from SGPSAMLib.errors import VolumeError
from SGPSAMLib.geometry import Volume

__all__ = [
    "volume_from_node",
    "ijk_to_ras_of_node",
    "world_to_volume_ras",
    "volume_ras_to_world",
    "volume_ijk_to_segmentation_matrix",
    "matrix_from_vtk",
    "vtk_from_matrix",
    "ras_to_voxel_index",
]


def matrix_from_vtk(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    """A vtkMatrix4x4 as a float64 (4, 4) array."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)],
                    dtype=np.float64)


def vtk_from_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    """A float (4, 4) array as a new vtkMatrix4x4."""
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijk_to_ras_of_node(volume_node) -> np.ndarray:
    """(4, 4) IJK -> volume RAS matrix of a volume node (no parent transform)."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix_from_vtk(matrix)


def _check_volume_node(volume_node, what: str = "input volume") -> None:
    if volume_node is None:
        raise VolumeError(f"no {what}: select a CT or MRI volume (a scalar volume node) first")
    if not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        raise VolumeError(f"{what} {volume_node.GetName()!r} is a {volume_node.GetClassName()}; "
                          "select a scalar (grayscale) CT or MRI volume")
    image = volume_node.GetImageData()
    if image is None or image.GetPointData() is None or \
            image.GetPointData().GetScalars() is None:
        raise VolumeError(f"{what} {volume_node.GetName()!r} has no voxel data")
    components = image.GetNumberOfScalarComponents()
    if components != 1:
        raise VolumeError(f"{what} {volume_node.GetName()!r} has {components} components per "
                          "voxel (a colour or vector image); select a scalar (grayscale) volume")


def volume_from_node(volume_node, frame: str = "volume") -> Volume:
    """The node's voxels and geometry as a library ``Volume`` (array view, no copy).

    Args:
        volume_node: a ``vtkMRMLScalarVolumeNode`` (or a subclass such as a labelmap).
        frame: "volume" (default: the volume's own RAS, what the session uses) or "world"
            (the parent transform applied; it must then be linear).

    Raises:
        VolumeError: no node, not a scalar volume, no voxels, several components, or a
            non-linear parent transform with ``frame="world"``.
    """
    if frame not in ("volume", "world"):
        raise ValueError(f"frame must be 'volume' or 'world', got {frame!r}")
    _check_volume_node(volume_node)
    array = slicer.util.arrayFromVolume(volume_node)
    matrix = ijk_to_ras_of_node(volume_node)
    if frame == "world":
        parent = volume_node.GetParentTransformNode()
        if parent is not None:
            to_world = vtk.vtkMatrix4x4()
            if not parent.GetMatrixTransformToWorld(to_world):
                raise VolumeError(f"volume {volume_node.GetName()!r} is under the non-linear "
                                  f"transform {parent.GetName()!r}; its world geometry is not an "
                                  "affine grid (use the volume frame, or harden the transform)")
            matrix = matrix_from_vtk(to_world) @ matrix
    return Volume(array, matrix, volume_node.GetName() or "")


def _general_transform(source_parent, target_parent) -> vtk.vtkGeneralTransform:
    transform = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(source_parent, target_parent, transform)
    return transform


def world_to_volume_ras(volume_node, points_world) -> np.ndarray:
    """World RAS (3,) or (N, 3) -> the volume's own RAS frame (through its parent transform).

    Works for linear and non-linear parent transforms (each point is transformed).
    """
    return _through_parent(volume_node, points_world, to_world=False)


def volume_ras_to_world(volume_node, points_ras) -> np.ndarray:
    """The volume's own RAS (3,) or (N, 3) -> world RAS (inverse of ``world_to_volume_ras``)."""
    return _through_parent(volume_node, points_ras, to_world=True)


def _through_parent(volume_node, points, to_world: bool) -> np.ndarray:
    """Points through the volume's parent transform, to or from world (identity without one)."""
    points = np.asarray(points, dtype=np.float64)
    single = points.ndim == 1
    points = points.reshape(-1, 3)
    parent = volume_node.GetParentTransformNode() if volume_node is not None else None
    if parent is None:
        out = points.copy()
    else:
        transform = _general_transform(parent, None) if to_world else \
            _general_transform(None, parent)
        out = np.array([transform.TransformPoint(*p) for p in points], dtype=np.float64)
    return out[0] if single else out


def volume_ijk_to_segmentation_matrix(volume_node, segmentation_node) -> np.ndarray:
    """(4, 4) volume IJK -> segmentation RAS, for writing results on the volume's grid.

    Raises:
        VolumeError: the two nodes are related by a non-linear transform (the volume's voxel
            grid would not be a grid in the segmentation's frame).
    """
    matrix = ijk_to_ras_of_node(volume_node)
    source = volume_node.GetParentTransformNode()
    target = segmentation_node.GetParentTransformNode()
    if source is target:
        return matrix
    between = vtk.vtkMatrix4x4()
    if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(source, target, between):
        raise VolumeError(
            f"segmentation {segmentation_node.GetName()!r} and volume {volume_node.GetName()!r} "
            "are related by a non-linear transform; put both under the same transform (or none)")
    return matrix_from_vtk(between) @ matrix


def ras_to_voxel_index(volume: Volume, ras, name: str = "point") -> tuple[int, int, int]:
    """Nearest (k, j, i) array index of a point in the volume's RAS frame.

    Raises:
        PromptError: the point is not inside the volume's voxels.
    """
    return volume.nearest_voxel(volume.check_point(ras, name))
