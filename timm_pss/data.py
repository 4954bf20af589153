"""Training data: the embedded default dataset (scikit-learn's handwritten digits) and held-out slices.

The digits (1,797 real 8x8 scans, shipped inside the scikit-learn wheel) need no download, so
`python train_pss.py --model pss_mobilenetv1` trains anywhere. They come as RGB PIL images upsampled to a small
size, in three disjoint, seeded splits: `train`, `heldout` (a slice of the training data for choosing budget-table
subnets) and `val`. Any timm transform applies, as with timm's own datasets.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ['DigitsDataset', 'IndexSubset', 'split_indices']

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
