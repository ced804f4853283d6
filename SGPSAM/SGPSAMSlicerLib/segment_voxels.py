"""A segment's voxels inside a box of the volume grid, read and written without touching the rest.

The segmenter (:mod:`.segment`) writes only the voxels the model changed, in the box the
session reports; these two functions are the only place that moves voxels between numpy and a
Slicer segment. Slicer keeps overlapping segments on separate layers, so writing one segment
never changes another.
"""
from __future__ import annotations

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from SGPSAMLib.boxes import BBox, bbox_shape
from SGPSAMLib.errors import SGPSAMError

from .mrml_geometry import matrix_from_vtk, vtk_from_matrix

__all__ = ["read_segment_box", "write_segment_box", "box_extent"]


def box_extent(box: BBox) -> list[int]:
    """VTK extent (i0, i1, j0, j1, k0, k1), inclusive, of an array-order box."""
    k, j, i = box
    return [i.start, i.stop - 1, j.start, j.stop - 1, k.start, k.stop - 1]


def _matrix_of(image) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    return matrix_from_vtk(matrix)


def _image_array(image) -> np.ndarray | None:
    """(K, J, I) view of a vtkImageData's scalars, or None if it holds no voxels."""
    scalars = image.GetPointData().GetScalars() if image.GetPointData() else None
    extent = image.GetExtent()
    if scalars is None or extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]:
        return None
    dims = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    return numpy_support.vtk_to_numpy(scalars).reshape(dims)


def read_segment_box(segmentation_node, segment_id: str, ijk_to_segmentation: np.ndarray,
                     box: BBox) -> np.ndarray:
    """The segment's 0/1 content in ``box`` of the volume grid, as a uint8 (K, J, I) array.

    Reads Slicer's binary labelmap of the segment (a copy of its voxels only, whatever layer it
    shares); when its grid is not the volume's, it is resampled (nearest) onto the box first.
    """
    out = np.zeros(bbox_shape(box), dtype=np.uint8)
    image = slicer.vtkOrientedImageData()
    if not segmentation_node.GetBinaryLabelmapRepresentation(segment_id, image):
        return out
    if _image_array(image) is None:
        return out
    matrix = _matrix_of(image)
    if not np.allclose(matrix, ijk_to_segmentation, rtol=0.0, atol=1e-6):
        reference = slicer.vtkOrientedImageData()
        reference.SetImageToWorldMatrix(vtk_from_matrix(ijk_to_segmentation))
        reference.SetExtent(*box_extent(box))
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            image, reference, resampled, False, False)
        image = resampled
    data = _image_array(image)
    if data is None:
        return out
    extent = image.GetExtent()
    start = (extent[4], extent[2], extent[0])  # k, j, i of data[0, 0, 0]
    src, dst = [], []
    for axis in range(3):
        lo = max(box[axis].start, start[axis])
        hi = min(box[axis].stop, start[axis] + data.shape[axis])
        if hi <= lo:
            return out
        src.append(slice(lo - start[axis], hi - start[axis]))
        dst.append(slice(lo - box[axis].start, hi - box[axis].start))
    out[tuple(dst)] = data[tuple(src)] > 0
    return out


def _oriented_image(values: np.ndarray, box: BBox, ijk_to_segmentation: np.ndarray):
    image = slicer.vtkOrientedImageData()
    image.SetExtent(*box_extent(box))
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    image.SetImageToWorldMatrix(vtk_from_matrix(ijk_to_segmentation))
    _image_array(image)[...] = values
    image.Modified()
    return image


def write_segment_box(segmentation_node, segment_id: str, ijk_to_segmentation: np.ndarray,
                      box: BBox, values: np.ndarray) -> None:
    """Make the segment equal ``values`` (0/1, box shape) inside ``box``; nothing else changes.

    Two merges of Slicer's segmentation logic restricted to the box's extent: "minimum"
    clears the voxels where ``values`` is 0, then "mask" sets those where it is 1. Other
    segments are never overwritten (Slicer moves overlapping segments to separate layers).
    """
    values = (np.asarray(values) > 0).astype(np.uint8)
    if values.shape != bbox_shape(box):
        raise ValueError(f"values shape {values.shape} does not match the box {bbox_shape(box)}")
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    extent = box_extent(box)
    image = _oriented_image(values, box, ijk_to_segmentation)
    if not values.all() and not logic.SetBinaryLabelmapToSegment(
            image, segmentation_node, segment_id, logic.MODE_MERGE_MIN, extent):
        raise SGPSAMError(f"Slicer could not clear voxels of segment {segment_id!r} in "
                          f"{segmentation_node.GetName()!r}")
    if values.any() and not logic.SetBinaryLabelmapToSegment(
            image, segmentation_node, segment_id, logic.MODE_MERGE_MASK, extent):
        raise SGPSAMError(f"Slicer could not set voxels of segment {segment_id!r} in "
                          f"{segmentation_node.GetName()!r}")
