"""Shared test data: scikit-learn's bundled handwritten digits (real data, no download) as small RGB tensors."""
import pytest
import torch
import torch.nn.functional as F


@pytest.fixture(scope='session')
def digits():
    """(images (1797, 3, 32, 32) in [0, 1], labels (1797,)) from sklearn's load_digits."""
    from sklearn.datasets import load_digits
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=32, mode='bilinear', align_corners=False).repeat(1, 3, 1, 1)
    return images, torch.tensor(data.target)
