"""Training crops that look exactly like the crops the interactive session feeds the model.

A sample is a 128^3 region at 1.5 mm (:class:`~SGPSAMLib.region.Region`, axes along R, A, S)
centred on a random voxel of one lesion plus a random shift ("jitter"): the session centres
its region on the user's first click, so training does the same instead of SAM-Med3D's
centring on the ground-truth box. The image goes through the session's own
:func:`~SGPSAMLib.region.sample_region` (trilinear) and :func:`~SGPSAMLib.region.normalize_crop`;
the lesion map is sampled with nearest neighbour and binarised (the lesion of interest = 1,
everything else, other lesions included, = 0). Then random flips (SAM-Med3D trains with flips
on all three axes) and light intensity augmentation (MONAI ``RandScaleIntensity``,
``RandShiftIntensity``, ``RandGaussianNoise``).

Every random choice of a sample comes from one integer seed, and the seed of each sample is a
function of (run seed, epoch, position): the data stream is the same for any number of
workers and after a resume. :class:`SampleStream` shards it across data-parallel ranks the way
``DistributedSampler`` does.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..click_robot import distance_inside
from ..geometry import array_index_to_ijk
from ..region import Region, normalize_crop, sample_region
from .clicks import interior_weights
from .data import LoadedCase

__all__ = ["CropSample", "sample_crop", "CropDataset", "SampleStream", "sample_seed"]


@dataclass
class CropSample:
    """One training crop.

    Attributes:
        image: (S, S, S) float32 normalised (and augmented) crop.
        label: (S, S, S) uint8, 1 on the lesion of interest.
        point: (3,) float32 crop voxel index (tensor axis order) of the first click: a voxel of
            the lesion, where the region was centred before the jitter.
        region: the crop frame (before flips).
        flips: crop axes that were flipped.
    """

    image: np.ndarray
    label: np.ndarray
    point: np.ndarray
    region: Region
    flips: tuple[int, ...]


def sample_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from integers (numpy SeedSequence: well mixed, stable)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, *[int(k) for k in keys]])
    return int(state.generate_state(1, dtype=np.uint64)[0]) >> 1


def _snap_to_label(label: np.ndarray, point: np.ndarray) -> np.ndarray:
    """The crop voxel nearest ``point`` that is on the label (the rounded point if it is)."""
    size = label.shape[0]
    rounded = np.clip(np.round(point), 0, size - 1).astype(np.int64)
    if label[tuple(rounded)]:
        return rounded.astype(np.float32)
    voxels = np.argwhere(label)
    if voxels.size == 0:
        return rounded.astype(np.float32)
    nearest = voxels[np.argmin(((voxels - point) ** 2).sum(axis=1))]
    return nearest.astype(np.float32)


def _augment_intensity(image: np.ndarray, seed: int) -> np.ndarray:
    """MONAI RandScaleIntensity / RandShiftIntensity / RandGaussianNoise, seeded."""
    from monai.transforms import RandGaussianNoise, RandScaleIntensity, RandShiftIntensity

    out = torch.from_numpy(image)[None]
    for index, transform in enumerate((RandScaleIntensity(factors=0.1, prob=0.5),
                                       RandShiftIntensity(offsets=0.1, prob=0.5),
                                       RandGaussianNoise(prob=0.2, mean=0.0, std=0.05))):
        transform.set_random_state(seed=sample_seed(seed, index) % (1 << 32))
        out = transform(out)
    out = out.as_tensor() if hasattr(out, "as_tensor") else out
    return np.ascontiguousarray(out[0].numpy(), dtype=np.float32)


def sample_crop(case: LoadedCase, lesion: int, seed: int, size: int = 128,
                spacing_mm: float = 1.5, jitter_voxels: float = 8.0, flip: bool = True,
                augment: bool = True, voxel: int | None = None,
                weights: np.ndarray | None = None, jitter_fraction: float = 1.0) -> CropSample:
    """A crop of ``case`` around lesion number ``lesion`` (1-based), all randomness from ``seed``.

    Args:
        voxel: flat (K, J, I) index of the voxel to centre on (validation); default: a random
            voxel of the lesion.
        weights: probabilities of the lesion's voxels (in ``flat_indices`` order) for that
            random choice; None = uniform.
        jitter_voxels: the centre moves by a uniform random shift in [-j, j] crop voxels per axis.
        jitter_fraction: share of the crops that get that shift; the others are centred on the
            first click exactly, as the session centres a new region on the user's click.
    """
    rng = np.random.default_rng(sample_seed(seed, 0))
    info = case.lesions[lesion - 1]
    if voxel is None:
        pick = (rng.integers(info.flat_indices.size) if weights is None
                else rng.choice(info.flat_indices.size, p=weights))
        voxel = int(info.flat_indices[pick])
    kji = np.array(np.unravel_index(voxel, case.volume.array.shape), dtype=np.float64)
    ras = case.volume.ijk_to_ras_points(array_index_to_ijk(kji))
    jitter = rng.uniform(-jitter_voxels, jitter_voxels, 3) if jitter_voxels > 0 else np.zeros(3)
    if jitter_fraction < 1.0 and rng.random() >= jitter_fraction:
        jitter = np.zeros(3)
    region = Region(tuple(ras + jitter * spacing_mm), size, spacing_mm)
    image = normalize_crop(sample_region(case.volume, region, order=1), case.modality)
    ids = sample_region(case.lesion_volume, region, order=0)
    label = (ids == float(info.index)).astype(np.uint8)
    point = _snap_to_label(label, region.ras_to_crop_points(ras))
    flips = tuple(axis for axis in range(3) if flip and rng.random() < 0.5)
    if flips:
        image = np.ascontiguousarray(np.flip(image, flips))
        label = np.ascontiguousarray(np.flip(label, flips))
        for axis in flips:
            point[axis] = size - 1 - point[axis]
    if augment:
        image = _augment_intensity(image, sample_seed(seed, 1))
    return CropSample(image, label, point.astype(np.float32), region, flips)


class CropDataset(Dataset):
    """Crops keyed by ``(item, seed)``; items are (case index, lesion number) pairs.

    The cases are held in memory (they are loaded once before training; data-loader workers
    inherit them), so a sample costs one resampling of the image and of the lesion map.
    """

    def __init__(self, cases: Sequence[LoadedCase], size: int = 128, spacing_mm: float = 1.5,
                 jitter_voxels: float = 8.0, flip: bool = True, augment: bool = True,
                 interior_power: float = 0.0, jitter_fraction: float = 1.0,
                 close_fraction: float = 0.0) -> None:
        self.cases = list(cases)
        self.items = [(c, lesion.index) for c, case in enumerate(self.cases)
                      for lesion in case.lesions]
        self.size = size
        self.spacing_mm = spacing_mm
        self.jitter_voxels = jitter_voxels
        self.flip = flip
        self.augment = augment
        self.interior_power = float(interior_power)
        self.jitter_fraction = float(jitter_fraction)
        self.close_fraction = float(close_fraction)
        self._weights: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.items)

    def click_weights(self, item: int) -> np.ndarray | None:
        """First-click probabilities over an item's lesion voxels (None: uniform); cached."""
        if self.interior_power <= 0:
            return None
        if item not in self._weights:
            case_index, lesion = self.items[item]
            case = self.cases[case_index]
            info = case.lesions[lesion - 1]
            mask = case.lesion_volume.array == info.index
            depth = distance_inside(mask, case.volume.spacing).reshape(-1)[info.flat_indices]
            self._weights[item] = interior_weights(depth, self.interior_power)
        return self._weights[item]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        item, seed = key
        case_index, lesion = self.items[item]
        spacing, jitter = self.spacing_mm, self.jitter_voxels
        if self.close_fraction > 0.0 and (np.random.default_rng(sample_seed(seed, 7)).random()
                                          < self.close_fraction):
            spacing, jitter = spacing / 2.0, jitter * 2.0  # the same shift in mm
        sample = sample_crop(self.cases[case_index], lesion, seed, self.size, spacing,
                             jitter, self.flip, self.augment,
                             weights=self.click_weights(item),
                             jitter_fraction=self.jitter_fraction)
        return {
            "image": torch.from_numpy(sample.image)[None],
            "label": torch.from_numpy(sample.label)[None],
            "point": torch.from_numpy(sample.point),
            "item": torch.tensor(item),
        }


class SampleStream(Sampler):
    """This rank's endless stream of ``(item, seed)`` keys, from position ``start`` on.

    Epoch ``e`` is a permutation of all items seeded by (seed, e) (or, with ``weights``, as
    many draws with replacement in proportion to them), padded to a multiple of
    ``world`` with its own head and dealt round-robin to the ranks (as ``DistributedSampler``).
    Position ``p`` of a rank is epoch ``p // per_rank``, and its sample seed depends on the
    global position only, so the stream does not depend on workers or restarts.
    """

    def __init__(self, n_items: int, seed: int, world: int = 1, rank: int = 0, start: int = 0,
                 count: int | None = None, weights: np.ndarray | None = None) -> None:
        if n_items <= 0:
            raise ValueError("SampleStream needs at least one item")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world size {world}")
        self.n_items, self.seed, self.world, self.rank = n_items, seed, world, rank
        self.start, self.count = start, count
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        if self.weights is not None and self.weights.shape != (n_items,):
            raise ValueError(f"SampleStream weights must have {n_items} entries")
        self.total = -(-n_items // world) * world
        self.per_rank = self.total // world
        self._epoch_cache: tuple[int, np.ndarray] | None = None

    def _epoch(self, epoch: int) -> np.ndarray:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            rng = np.random.default_rng(sample_seed(self.seed, 2, epoch))
            if self.weights is None:
                perm = rng.permutation(self.n_items)
            else:  # an "epoch" of n draws with replacement, in proportion to the weights
                perm = rng.choice(self.n_items, size=self.n_items, p=self.weights)
            if self.total > self.n_items:
                perm = np.concatenate([perm, perm[: self.total - self.n_items]])
            self._epoch_cache = (epoch, perm)
        return self._epoch_cache[1]

    def key(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, self.per_rank)
        global_position = epoch * self.total + self.rank + offset * self.world
        item = int(self._epoch(epoch)[self.rank + offset * self.world])
        return item, sample_seed(self.seed, 3, global_position)

    def epoch_of(self, position: int) -> float:
        return position / self.per_rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start
        end = None if self.count is None else self.start + self.count
        while end is None or position < end:
            yield self.key(position)
            position += 1

    def __len__(self) -> int:
        return self.count if self.count is not None else (1 << 62)
