"""Training data: the embedded default dataset (scikit-learn's handwritten digits), held-out slices, and what a
dataset says about itself (classes, channels, pixel statistics) so train_pss.py can size the model and normalise.

The digits (1,797 real 8x8 scans, shipped inside the scikit-learn wheel) need no download, so
`python train_pss.py --model pss_mobilenetv1` trains anywhere. They come as RGB PIL images upsampled to a small
size, in three disjoint, seeded splits: `train`, `heldout` (a slice of the training data for choosing budget-table
subnets) and `val`. Any timm transform applies, as with timm's own datasets.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

__all__ = ['DigitsDataset', 'IndexSubset', 'ImageModeDataset', 'split_indices', 'dataset_num_classes',
           'image_statistics']

DIGITS_CLASSES = 10


def split_indices(n: int, fractions: Sequence[float], seed: int) -> list:
    """A seeded permutation of range(n) cut into consecutive parts of the given fractions (the last takes the rest)."""
    order = np.random.default_rng(seed).permutation(n)
    cuts = np.cumsum([int(round(f * n)) for f in fractions[:-1]])
    return [part.tolist() for part in np.split(order, cuts)]


class DigitsDataset(torch.utils.data.Dataset):
    """scikit-learn's handwritten digits as RGB PIL images of `image_size` pixels, labels 0..9.

    Args:
        split: 'train', 'heldout' or 'val'.
        image_size: side of the images (the 8x8 scans are upsampled bilinearly).
        val_fraction: share of all digits in 'val'.
        heldout_fraction: share of all digits in 'heldout' (taken from what would be training data).
        seed: the split's seed; the same seed gives the same, disjoint splits.
        transform: applied to each PIL image (timm's loaders set it).
    """
    splits = ('train', 'heldout', 'val')
    classes = [str(d) for d in range(DIGITS_CLASSES)]

    def __init__(
            self,
            split: str = 'train',
            image_size: int = 32,
            val_fraction: float = 0.2,
            heldout_fraction: float = 0.1,
            seed: int = 0,
            transform: Optional[Callable] = None,
    ):
        if split not in self.splits:
            raise ValueError(f'split must be one of {self.splits}, got {split!r}')
        if not (0 < val_fraction < 1 and 0 <= heldout_fraction < 1 and val_fraction + heldout_fraction < 1):
            raise ValueError(f'val_fraction ({val_fraction}) and heldout_fraction ({heldout_fraction}) must be '
                             f'shares of the data that leave some for training')
        from sklearn.datasets import load_digits
        digits = load_digits()
        val, heldout, train = split_indices(len(digits.target), [val_fraction, heldout_fraction, 1.0], seed)
        indices = {'train': train, 'heldout': heldout, 'val': val}[split]
        scans = (digits.images[indices] * (255.0 / 16.0)).round().astype(np.uint8)
        self.images = [Image.fromarray(s, mode='L').resize((image_size, image_size), Image.BILINEAR).convert('RGB')
                       for s in scans]
        self.targets = [int(t) for t in digits.target[indices]]
        self.transform = transform
        self.split = split

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = self.images[index]
        return (self.transform(image) if self.transform is not None else image), self.targets[index]


class IndexSubset(torch.utils.data.Dataset):
    """A subset of a timm dataset whose `transform` is the underlying dataset's (timm's loaders set it)."""

    def __init__(self, dataset, indices: Sequence[int]):
        self.dataset = dataset
        self.indices = list(indices)

    @property
    def transform(self):
        return self.dataset.transform

    @transform.setter
    def transform(self, value):
        self.dataset.transform = value

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[self.indices[index]]


class ImageModeDataset(torch.utils.data.Dataset):
    """A dataset whose PIL images are converted to `mode` ('RGB', 'L') before its `transform` runs, e.g. grayscale
    Fashion-MNIST replicated to three channels for a model built with in_chans=3."""

    def __init__(self, dataset, mode: str):
        self.dataset = dataset
        self.mode = mode
        self.transform = dataset.transform
        dataset.transform = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        image = image.convert(self.mode)
        return (self.transform(image) if self.transform is not None else image), target


def _unwrap(dataset):
    while isinstance(dataset, (IndexSubset, ImageModeDataset)):
        dataset = dataset.dataset
    return dataset


def dataset_num_classes(dataset) -> Optional[int]:
    """Number of classes a dataset declares: `classes` (torchvision datasets, DigitsDataset) or the reader's
    `class_to_idx` (timm's folder datasets); None where it declares neither."""
    dataset = _unwrap(dataset)
    for owner in (dataset, getattr(dataset, 'reader', None)):
        for name in ('classes', 'class_to_idx'):
            value = getattr(owner, name, None)
            if value:
                return len(value)
    return None


def image_statistics(dataset, max_images: int = 2000) -> Tuple[int, Tuple[float, ...], Tuple[float, ...]]:
    """(channels, per-channel mean, per-channel std) of a dataset's untransformed images, pixels scaled to [0, 1].

    Read from up to `max_images` images evenly spread over the dataset (all of them when it is smaller), so a
    60,000-image dataset costs a second. Raises ValueError when its items are not (PIL image, target) pairs.
    """
    base = dataset
    while isinstance(base, IndexSubset):  # not past an ImageModeDataset: its conversion is part of the images
        base = base.dataset
    transform, base.transform = getattr(base, 'transform', None), None
    try:
        indices = np.unique(np.linspace(0, len(base) - 1, min(max_images, len(base))).round().astype(int))
        pixels = []
        for i in indices:
            image = base[int(i)][0]
            if not isinstance(image, Image.Image):
                raise ValueError(f'expected PIL images from the dataset, got {type(image).__name__}')
            array = np.asarray(image, dtype=np.float64) / 255.0
            pixels.append(array.reshape(-1, 1 if array.ndim == 2 else array.shape[2]))
    finally:
        base.transform = transform
    if len({p.shape[1] for p in pixels}) != 1:
        raise ValueError('the dataset mixes images with different numbers of channels')
    pixels = np.concatenate(pixels)
    return pixels.shape[1], tuple(pixels.mean(0).tolist()), tuple(pixels.std(0).tolist())
