"""Interactive point-prompt segmentation of one volume: the backend of the Segment tab.

Life cycle: ``InteractiveSession(model)`` -> ``set_volume(volume)`` -> ``add_point(ras, positive)``
any number of times -> ``undo()`` / ``reset()``. Points are RAS millimetres; the result is a
uint8 mask on the volume's own (K, J, I) grid, updated in place inside a changed-region box so
a viewer can refresh only that box.

Policies (each one a deliberate choice):

- **Windows.** The model sees a 128^3 crop at 1.5 mm whose axes follow R, A, S
  (:class:`~SGPSAMLib.region.Region`). Which window a click goes to, when an encoded window is
  reused, which window owns a voxel where windows overlap and when a large lesion gets a
  neighbour window are the window policy, :mod:`SGPSAMLib.windows`. The first positive click
  centres a window on itself (SAM-Med3D centres on the target; a click tool must centre on the
  click). A negative click before any positive one is stored and waits; it joins later prompts
  if it falls inside the window (cumulative mode); a negative click outside every window is only
  stored.
- **Embedding cache.** A region's image embedding is computed once (``model.encode`` under
  ``torch.inference_mode``, bf16 autocast on CUDA when ``amp``) and kept in an LRU cache of
  ``cache_size`` regions keyed by the region; later clicks in it run only ``model.decode``.
  :meth:`InteractiveSession.prepare` computes it ahead of the first click (Slicer's
  "Initialize"); the first positive click then adopts that region if it lies in its central
  half (within ``size / 4`` crop voxels of its centre along every axis) instead of
  re-centring.
- **Prompting.** "latest" (default, SAM-Med3D's evaluation): the newest click only plus the
  region's previous low-res logits (zeros at first). "cumulative" (the current official
  script): every click inside the region so far (and the seed of an extension window) plus the
  previous logits. Points go to the model as crop voxel indices in tensor-axis order.
- **Large targets** (``extend_at_border``): neighbour windows (:mod:`SGPSAMLib.windows`), up
  to ``max_windows`` per lesion, each prompted with the clicks that fall inside it (per the
  prompting mode) plus its positive border seed, and a zero mask prompt. The full mask is, per
  voxel, the latest prediction of the window that owns it.
- **Clicked components only** (``keep_clicked``, default on): of a region's prediction, the
  connected components no positive click or seed touches are dropped before it is written
  (:mod:`SGPSAMLib.clicked_components`): a lesion's clicks give that lesion, not also a
  look-alike elsewhere in the window.
- **Zoom** (``zoom``, default on for models with a measured policy, :mod:`SGPSAMLib.zoom`): a
  new lesion's first window opens at the policy's fine spacing; when the clicked answer there
  is large it is opened again, wider, around the same click before anything is written. The
  lesion's later clicks and neighbour windows keep that spacing. Without a policy every window
  is at the model's ``crop_spacing_mm``.
- **Mask updates and undo.** A prediction is written only inside the box covering the
  region's previous and new foreground (plus, the first time a region is decoded, the parts of
  other regions' foreground it now owns); the previous content of every written box is pushed
  on the undo stack with the region's previous logits and the click count, so ``undo()``
  restores mask and state exactly. One ``add_point`` (windows included) is one undo step.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from . import windows
from .boxes import BBox, bbox_union, foreground_box
from .clicked_components import keep_clicked_components
from .devices import resolve_device
from .errors import VolumeError
from .geometry import Volume
from .options import PROMPT_MODES, look_up_option
from .region import (
    Region,
    footprint_bbox,
    map_logits_to_volume,
    normalize_crop,
    resolve_modality,
    sample_region,
)
from .windows import RegionState
from .zoom import answer_is_large, zoom_policy

__all__ = ["InteractiveSession", "SessionState", "RegionState", "Click", "Prediction",
           "PROMPT_MODES", "TIMING_KEYS"]

log = logging.getLogger(__name__)

TIMING_KEYS = ("sample", "normalize", "encode", "decode", "map_back", "total")


@dataclass
class Click:
    """One user click: RAS mm, its sign, and the region it was sent to (None: only stored)."""

    ras: np.ndarray
    positive: bool
    region_id: int | None


@dataclass
class _UndoEntry:
    """What one ``add_point`` changed, to be put back by ``undo``."""

    patches: list[tuple[BBox, np.ndarray]]
    region_states: dict[int, tuple[torch.Tensor | None, BBox | None]]
    n_regions: int
    n_clicks: int
    voxels: int
    region_id: int | None


@dataclass
class SessionState:
    """Everything a session knows about the current volume (one object, no loose dicts).

    Attributes:
        volume: the image being segmented.
        modality: "CT" or "MR" (resolved at ``set_volume``).
        mask: (K, J, I) uint8 full-grid mask, updated in place.
        ras_bounds: (min, max) RAS mm covered by the image's voxels.
        regions: crop windows in creation order.
        embeddings: LRU cache Region -> (1, C, g, g, g) image embedding on the device.
        crops: the normalised (1, 1, S, S, S) crops of those regions, kept only for a model
            with a refinement head (it looks at the image again at every click).
        clicks: every click, in order.
        undo_stack: one entry per ``add_point``.
        voxels: number of foreground voxels in ``mask``.
        prepared: region from the last ``prepare`` call (adopted by the next new region).
    """

    volume: Volume
    modality: str
    mask: np.ndarray
    ras_bounds: tuple[np.ndarray, np.ndarray]
    regions: list[RegionState] = field(default_factory=list)
    embeddings: OrderedDict[Region, torch.Tensor] = field(default_factory=OrderedDict)
    crops: dict[Region, torch.Tensor] = field(default_factory=dict)
    clicks: list[Click] = field(default_factory=list)
    undo_stack: list[_UndoEntry] = field(default_factory=list)
    voxels: int = 0
    prepared: Region | None = None


@dataclass
class Prediction:
    """The session's answer to one call.

    Attributes:
        mask: (K, J, I) uint8 0/1 on the input grid. A read-only *view* of the session's mask:
            later calls update it in place; ``mask.copy()`` to keep a snapshot.
        changed_bbox: array-order (K, J, I) slices covering every voxel that changed, or None.
        timings: seconds per step: sample, normalize, encode (0 when cached), decode, map_back,
            total.
        region_centre_ras: (3,) RAS mm centre of the region the click was decoded in (after
            ``undo``: the region of the newest remaining click); None if none.
        embedding_cached: whether that region's embedding came from the cache.
        message: what happened, for the user.
        voxels: foreground voxel count of the whole mask.
        low_res_logits: (L, L, L) float32 copy of that region's latest low-res logits, on the
            crop axes (R, A, S); None if none. (Border windows added by the same click keep
            their own logits in ``state.regions``.)
        region: that region (crop frame), or None.
        region_id: its index in ``state.regions``, or None.
    """

    mask: np.ndarray
    changed_bbox: BBox | None
    timings: dict[str, float]
    region_centre_ras: np.ndarray | None
    embedding_cached: bool
    message: str
    voxels: int
    low_res_logits: np.ndarray | None = None
    region: Region | None = None
    region_id: int | None = None


class InteractiveSession:
    """Point-prompted segmentation of one volume with cached embeddings, windows and undo.

    Args:
        model: an ``SGPSAMModel`` (or any module with ``encode``/``decode``, ``config.image_size``,
            ``config.crop_spacing_mm`` and ``low_res_size``). It is moved to ``device`` and put
            in eval mode.
        device: "auto", "cpu", "cuda", "cuda:N" or "mps" (see :func:`resolve_device`).
        prompt_mode: "latest" or "cumulative" (module docstring).
        amp: bf16 autocast for encode/decode on CUDA (ignored elsewhere).
        extend_at_border: add overlapping windows when a prediction reaches a region's face.
        max_windows: most windows per lesion, the first one included (>= 1).
        cache_size: most embeddings kept (LRU, >= 1).
        keep_clicked: drop predicted components that no positive click (or seed) touches
            (:mod:`SGPSAMLib.clicked_components`); False keeps everything the model draws.
        zoom: choose a new lesion's crop spacing by the model's measured policy
            (:func:`SGPSAMLib.zoom.zoom_policy`; models without one are unaffected); False:
            every window at the model's ``crop_spacing_mm``.
    """

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "auto",
                 prompt_mode: str = "latest", amp: bool = True, extend_at_border: bool = True,
                 max_windows: int = 8, cache_size: int = 16, keep_clicked: bool = True,
                 zoom: bool = True) -> None:
        look_up_option(prompt_mode, PROMPT_MODES, "prompt_mode")
        for name, value in (("max_windows", max_windows), ("cache_size", cache_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("encode", "decode", "config"):
            if not hasattr(model, name):
                raise TypeError(f"model must provide encode(), decode() and config; "
                                f"{type(model).__name__} has no {name!r}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.prompt_mode = prompt_mode
        self.amp = bool(amp)
        self.extend_at_border = bool(extend_at_border)
        self.max_windows = max_windows
        self.cache_size = cache_size
        self.keep_clicked = bool(keep_clicked)
        self.size = int(model.config.image_size)
        self.spacing_mm = float(model.config.crop_spacing_mm)
        self.zoom = zoom_policy(model.config) if zoom else None
        #: Crop spacing of a new lesion's first window (and of :meth:`prepare`).
        self.start_spacing_mm = self.spacing_mm if self.zoom is None else self.zoom.probe_mm
        self.low_res_size = int(getattr(model, "low_res_size", self.size // 4))
        self.output_size = int(getattr(model, "output_size", self.low_res_size))
        self._keeps_crops = getattr(model, "refiner", None) is not None
        self._state: SessionState | None = None

    # ------------------------------------------------------------------------------------------
    # Public API.

    @property
    def state(self) -> SessionState | None:
        """The current state (None before ``set_volume``); read it, do not mutate it."""
        return self._state

    def set_volume(self, volume: Volume, modality: str = "auto") -> None:
        """Validate ``volume`` and start over on it (prompts, mask, undo, cache cleared).

        No embedding is computed yet (there is no click to centre on); see :meth:`prepare`.

        Args:
            volume: the image with its geometry.
            modality: "CT", "MR" or "auto" (CT when the volume's minimum is below -500 HU).

        Raises:
            VolumeError: a single slice / 2-D image, a non-numeric, non-finite, empty or
                constant array.
            ValueError: an unknown modality.
        """
        if not isinstance(volume, Volume):
            raise TypeError(f"volume must be a SGPSAMLib.geometry.Volume, "
                            f"got {type(volume).__name__}")
        name = volume.name or "volume"
        array = volume.array
        if array.size == 0 or min(array.shape) < 2:
            raise VolumeError(f"{name}: array shape (K, J, I) = {array.shape} is a single slice "
                              "/ 2-D image; interactive segmentation needs a 3-D volume with at "
                              "least 2 voxels along every axis")
        if array.dtype.kind not in "biuf":
            raise VolumeError(f"{name}: array dtype {array.dtype} is not a real numeric type")
        if array.dtype.kind == "f":
            finite = np.isfinite(array)
            if not finite.all():
                raise VolumeError(f"{name}: {int(array.size - finite.sum())} voxels are NaN or "
                                  "infinite; fix or mask them before segmenting")
        minimum, maximum = float(array.min()), float(array.max())
        if minimum == maximum:
            raise VolumeError(f"{name}: every voxel has the value {minimum:g} (constant or "
                              "empty image); nothing to segment")
        resolved = resolve_modality(minimum, modality)
        self._state = SessionState(
            volume=volume, modality=resolved, mask=np.zeros(array.shape, dtype=np.uint8),
            ras_bounds=volume.ras_bounds(),
        )
        log.info("session volume %s %s (%s, modality %s)", name, array.shape, array.dtype,
                 resolved)

    def prepare(self, ras_mm: Sequence[float]) -> Region:
        """Compute and cache the embedding of a region centred at ``ras_mm`` (no prediction).

        The next positive click that starts a region adopts this one if it lies in its central
        half, so the first click then costs only a decode.

        Raises:
            RuntimeError: before ``set_volume``.
            PromptError: the point is not finite or outside the volume.
        """
        state = self._require_volume("prepare")
        ras = self._check_point(ras_mm, "prepare")
        region = Region(tuple(ras), self.size, self.start_spacing_mm)
        timings = dict.fromkeys(TIMING_KEYS, 0.0)
        self._embedding(region, timings)
        state.prepared = region
        return region

    def reuse_encoded_region(self, ras_mm: Sequence[float]) -> Region | None:
        """Let the next new region reuse an encoded one that holds ``ras_mm`` in its central half.

        For a caller that segments several lesions of one volume (batch: the prompts are reset
        between lesions, the embeddings are kept): the newest cached region that qualifies is
        prepared again (a cache hit), so a nearby lesion costs no encoder pass. Returns that
        region, or None when no cached region qualifies (nothing changes).

        Raises:
            RuntimeError: before ``set_volume``.
        """
        state = self._require_volume("reuse_encoded_region")
        if not state.embeddings:
            return None
        ras = np.asarray(ras_mm, dtype=np.float64).reshape(-1)
        region = windows.reusable_window(reversed(list(state.embeddings)), ras, state.volume)
        if region is not None:
            self.prepare(region.centre_ras)
        return region

    def add_point(self, ras_mm: Sequence[float], positive: bool = True) -> Prediction:
        """Add a click and update the mask.

        Args:
            ras_mm: (3,) RAS millimetres.
            positive: True for "lesion here", False for "not lesion".

        Raises:
            RuntimeError: before ``set_volume``.
            PromptError: the point is not finite or outside the volume (state unchanged).
        """
        start = time.perf_counter()
        state = self._require_volume("add_point")
        ras = self._check_point(ras_mm, "add_point")
        positive = bool(positive)
        timings = dict.fromkeys(TIMING_KEYS, 0.0)
        entry = _UndoEntry(patches=[], region_states={}, n_regions=len(state.regions),
                           n_clicks=len(state.clicks), voxels=state.voxels, region_id=None)
        target = windows.route(state.regions, ras)
        if target is None and not positive:
            state.clicks.append(Click(ras, False, None))
            state.undo_stack.append(entry)
            timings["total"] = time.perf_counter() - start
            what = ("no lesion is started yet" if not state.regions
                    else "it lies outside every region")
            return self._prediction(None, timings, False, f"negative point stored: {what}; "
                                    "it is used once a positive point starts a region around it")
        try:
            created = target is None
            if created:
                target = self._new_region(windows.window_for_click(
                    ras, state.prepared, self.size, self.start_spacing_mm), group=None)
            state.clicks.append(Click(ras, positive, target.id))
            entry.region_id = target.id
            cached = self._decode_region(target, entry, timings)
            widened = self._widen_if_large(target, entry, timings) if created else None
            target = widened or target
            added = self._extend(target, entry, timings)
        except BaseException:
            self._rollback(entry)
            raise
        state.undo_stack.append(entry)
        timings["total"] = time.perf_counter() - start
        message = (f"{'new' if created else 'region'} {target.id}: "
                   f"{'+' if positive else '-'} point, {state.voxels} voxels in the mask")
        if widened:
            message += (f"; the answer was large, so the window was opened at "
                        f"{target.region.spacing_mm:g} mm")
        if added:
            message += f"; {added} window(s) added to follow the target across the border"
        log.debug("add_point %s -> %s; timings %s", ras, message, timings)
        return self._prediction(target, timings, cached, message, entry)

    def undo(self) -> Prediction | None:
        """Take back the last ``add_point`` exactly (mask, logits, regions, clicks).

        Returns the restored state as a Prediction (``changed_bbox`` covers what was restored),
        or None when there is nothing to undo.
        """
        state = self._require_volume("undo")
        if not state.undo_stack:
            return None
        start = time.perf_counter()
        entry = state.undo_stack.pop()
        self._rollback(entry)
        timings = dict.fromkeys(TIMING_KEYS, 0.0)
        timings["total"] = time.perf_counter() - start
        last = self._last_decoded_region()
        return self._prediction(last, timings, True, f"undone; {state.voxels} voxels in the mask",
                                entry)

    def reset(self) -> None:
        """Clear clicks, regions, logits, mask and undo stack; keep the cached embeddings."""
        state = self._require_volume("reset")
        state.mask.fill(0)
        state.regions.clear()
        state.clicks.clear()
        state.undo_stack.clear()
        state.voxels = 0

    # ------------------------------------------------------------------------------------------
    # Checks.

    def _require_volume(self, method: str) -> SessionState:
        if self._state is None:
            raise RuntimeError(f"InteractiveSession.{method}() needs a volume: call "
                               "set_volume(volume) first")
        return self._state

    def _check_point(self, ras_mm: Sequence[float], method: str) -> np.ndarray:
        return self._state.volume.check_point(ras_mm, f"{method}: point")

    # ------------------------------------------------------------------------------------------
    # Regions, routing and prompts.

    def _new_region(self, region: Region, group: int | None, seed: np.ndarray | None = None
                    ) -> RegionState:
        state = self._state
        rid = len(state.regions)
        rs = RegionState(id=rid, region=region, group=rid if group is None else group,
                         footprint=footprint_bbox(state.volume, region))
        if seed is not None:
            rs.seeds.append(np.asarray(seed, dtype=np.float64))
        state.regions.append(rs)
        return rs

    def _prompt(self, rs: RegionState) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) crop-index points and (N,) labels for a region, per the prompting mode."""
        clicks = self._state.clicks
        if self.prompt_mode == "latest":
            return _crop_prompt(rs, clicks[-1:], rs.seeds if rs.logits is None else [])
        return _crop_prompt(rs, clicks, rs.seeds)

    def _all_clicks(self, rs: RegionState) -> tuple[np.ndarray, np.ndarray]:
        """Every click inside the region and its seeds (what a refinement head sees)."""
        return _crop_prompt(rs, self._state.clicks, rs.seeds)

    # ------------------------------------------------------------------------------------------
    # Model calls.

    def _autocast(self):
        if self.amp and self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _embedding(self, region: Region, timings: dict[str, float]) -> tuple[torch.Tensor, bool]:
        """The region's embedding from the cache, or sampled + normalised + encoded now."""
        state = self._state
        cache = state.embeddings
        if region in cache:
            cache.move_to_end(region)
            return cache[region], True
        tick = time.perf_counter()
        crop = sample_region(state.volume, region)
        timings["sample"] += time.perf_counter() - tick
        tick = time.perf_counter()
        crop = normalize_crop(crop, state.modality)
        timings["normalize"] += time.perf_counter() - tick
        tick = time.perf_counter()
        image = torch.from_numpy(crop)[None, None].to(self.device)
        with torch.inference_mode(), self._autocast():
            embedding = self.model.encode(image)
        self._sync()
        timings["encode"] += time.perf_counter() - tick
        cache[region] = embedding
        if self._keeps_crops:
            state.crops[region] = image
        while len(cache) > self.cache_size:
            evicted, _ = cache.popitem(last=False)
            state.crops.pop(evicted, None)
        return embedding, False

    def _decode_region(self, rs: RegionState, entry: _UndoEntry,
                       timings: dict[str, float]) -> bool:
        """Decode one region with its prompt and write its prediction; -> embedding cached."""
        embedding, cached = self._embedding(rs.region, timings)
        points, labels = self._prompt(rs)
        size = self.output_size
        tick = time.perf_counter()
        with torch.inference_mode(), self._autocast():
            logits = self._predict(rs, embedding, points, labels)
        logits = logits.detach().float().reshape(size, size, size).cpu()
        if self.keep_clicked:
            logits = self._clicked_only(rs, logits)
        timings["decode"] += time.perf_counter() - tick
        tick = time.perf_counter()
        self._write(rs, logits, entry)
        timings["map_back"] += time.perf_counter() - tick
        return cached

    def _predict(self, rs: RegionState, embedding: torch.Tensor, points: np.ndarray,
                 labels: np.ndarray) -> torch.Tensor:
        """The model's logits for a region's prompt, given its previous answer."""
        def tensors(p: np.ndarray, lab: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            return (torch.from_numpy(p)[None].to(self.device),
                    torch.from_numpy(lab).long()[None].to(self.device))

        point_t, label_t = tensors(points, labels)
        previous = None if rs.logits is None else rs.logits[None, None].to(self.device)
        predict = getattr(self.model, "predict", None)
        if predict is None:  # a bare encode/decode model: SAM-Med3D's decoder call
            if previous is None:
                size = self.low_res_size
                previous = torch.zeros((1, 1, size, size, size), device=self.device)
            return self.model.decode(embedding, point_t, label_t, previous)
        clicks, click_labels = tensors(*self._all_clicks(rs))
        image = self._state.crops.get(rs.region)
        logits, _ = predict(embedding, image, point_t, label_t, previous, clicks, click_labels)
        return logits

    def _clicked_only(self, rs: RegionState, logits: torch.Tensor) -> torch.Tensor:
        """The region's logits without the components its positive clicks do not touch."""
        points, labels = self._all_clicks(rs)
        scale = self.output_size / self.size  # output cells per crop voxel
        grid_points = (points[labels == 1] + 0.5) * scale - 0.5
        return keep_clicked_components(logits, grid_points, rs.region.spacing_mm / scale)

    def _widen_if_large(self, rs: RegionState, entry: _UndoEntry,
                        timings: dict[str, float]) -> RegionState | None:
        """Zoom out: if a new lesion's first answer is large (:func:`answer_is_large`), take
        this ``add_point`` back and open the lesion again at the policy's wide spacing around
        the click; returns that region, or None when the first window stays."""
        zoom = self.zoom
        if zoom is None or rs.region.spacing_mm >= zoom.wide_mm or rs.logits is None:
            return None
        cell_mm = rs.region.spacing_mm * self.size / self.output_size
        if not answer_is_large(rs.logits, cell_mm, zoom.large_mm):
            return None
        click = self._state.clicks[-1]
        self._rollback(entry)
        entry.patches.clear()
        entry.region_states.clear()
        wide = self._new_region(Region(tuple(click.ras), self.size, zoom.wide_mm), group=None)
        self._state.clicks.append(Click(click.ras, click.positive, wide.id))
        self._decode_region(wide, entry, timings)
        return wide

    def _write(self, rs: RegionState, logits: torch.Tensor, entry: _UndoEntry) -> None:
        """Map a region's new logits to the volume and write the voxels it owns."""
        state = self._state
        others = windows.overlapping(state.regions, rs)
        hint = windows.takeover_box(rs, others)
        box, patch = map_logits_to_volume(logits, rs.region, state.volume, hint)
        entry.region_states.setdefault(rs.id, (rs.logits, rs.bbox))
        rs.logits = logits
        rs.bbox = foreground_box(patch, box)
        if box is None:
            return
        view = state.mask[box]
        before = view.copy()
        entry.patches.append((box, before))
        owned = windows.owned_voxels(rs, box, others, state.volume)
        if owned is None:
            view[...] = patch
        else:
            np.copyto(view, patch, where=owned)
        state.voxels += int(np.count_nonzero(view)) - int(np.count_nonzero(before))

    # ------------------------------------------------------------------------------------------
    # Windows for large targets.

    def _extend(self, start: RegionState, entry: _UndoEntry, timings: dict[str, float]) -> int:
        """Add neighbour windows while predictions reach faces where the image continues."""
        if not self.extend_at_border:
            return 0
        state = self._state
        added = 0
        queue = [start]
        while queue:
            rs = queue.pop(0)
            for axis, direction in windows.faces_to_extend(rs, state.ras_bounds):
                group = [r for r in state.regions if r.group == rs.group]
                if len(group) >= self.max_windows:
                    log.info("lesion %d reached max_windows=%d; not extending further",
                             rs.group, self.max_windows)
                    return added
                candidate = windows.extension_window(rs, axis, direction, state.regions)
                if candidate is None:
                    continue
                seed = windows.border_seed(rs, axis, direction, candidate)
                if seed is None:
                    continue
                window = self._new_region(candidate, group=rs.group, seed=seed)
                self._decode_region(window, entry, timings)
                added += 1
                queue.append(window)
        return added

    # ------------------------------------------------------------------------------------------
    # Undo and results.

    def _rollback(self, entry: _UndoEntry) -> None:
        state = self._state
        for box, before in reversed(entry.patches):
            state.mask[box] = before
        for rid, (logits, bbox) in entry.region_states.items():
            if rid < entry.n_regions:
                state.regions[rid].logits = logits
                state.regions[rid].bbox = bbox
        del state.regions[entry.n_regions:]
        del state.clicks[entry.n_clicks:]
        state.voxels = entry.voxels

    def _last_decoded_region(self) -> RegionState | None:
        for click in reversed(self._state.clicks):
            if click.region_id is not None:
                return self._state.regions[click.region_id]
        return None

    def _prediction(self, rs: RegionState | None, timings: dict[str, float], cached: bool,
                    message: str, entry: _UndoEntry | None = None) -> Prediction:
        state = self._state
        mask = state.mask.view()
        mask.flags.writeable = False
        changed = None
        if entry is not None:
            changed = bbox_union(*(box for box, _ in entry.patches))
        logits = None if rs is None or rs.logits is None else rs.logits.numpy().copy()
        return Prediction(
            mask=mask, changed_bbox=changed, timings=dict(timings),
            region_centre_ras=None if rs is None else np.asarray(rs.region.centre_ras),
            embedding_cached=bool(cached), message=message, voxels=int(state.voxels),
            low_res_logits=logits, region=None if rs is None else rs.region,
            region_id=None if rs is None else rs.id,
        )


def _crop_prompt(rs: RegionState, clicks: Sequence[Click], seeds: Sequence[np.ndarray]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The clicks inside the region, as crop indices, then its seeds (positive): (N, 3), (N,)."""
    chosen = [c for c in clicks if rs.region.contains_ras(c.ras)]
    points = [rs.region.ras_to_crop_points(c.ras) for c in chosen] + list(seeds)
    labels = [int(c.positive) for c in chosen] + [1] * len(seeds)
    return np.asarray(points, dtype=np.float32).reshape(-1, 3), np.asarray(labels)
