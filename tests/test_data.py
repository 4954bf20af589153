"""What train_pss.py reads from a dataset: its number of classes, its channels and pixel statistics."""
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from timm.data import create_dataset

from support import write_fashion_mnist_gz
from timm_pss.data import DigitsDataset, ImageModeDataset, IndexSubset, dataset_num_classes, image_statistics
from timm_pss.dataset_setup import setup_dataset
from timm_pss.train.args import parse_args
from timm_pss.train.checks import UsageError
from timm_pss.train.data import resolve_data_properties


class UnlabelledImages(torch.utils.data.Dataset):
    """Images with integer targets and no declared classes."""

    def __init__(self, images):
        self.images, self.transform = images, None

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], 0


@pytest.fixture
def fashion_root(tmp_path):
    setup_dataset('fashion-mnist', tmp_path / 'data', write_fashion_mnist_gz(tmp_path / 'src'))
    return str(tmp_path / 'data')


def test_num_classes_of_torchvision_folder_and_embedded_datasets(fashion_root, tmp_path):
    fashion = create_dataset('torch/fashion_mnist', root=fashion_root, split='train')
    assert dataset_num_classes(fashion) == 10 and dataset_num_classes(IndexSubset(fashion, [0, 1])) == 10
    for c in ('cat', 'dog', 'fox'):
        (tmp_path / 'folder' / c).mkdir(parents=True)
        Image.new('RGB', (8, 8)).save(tmp_path / 'folder' / c / '0.png')
    assert dataset_num_classes(create_dataset('', root=str(tmp_path / 'folder'))) == 3
    assert dataset_num_classes(DigitsDataset('val')) == 10
    assert dataset_num_classes(UnlabelledImages([Image.new('L', (4, 4))])) is None


def test_image_statistics_are_the_pixels_mean_and_std():
    images = [Image.fromarray(np.full((4, 4), v, np.uint8), mode='L') for v in (0, 255)]
    assert image_statistics(UnlabelledImages(images)) == (1, (0.5,), (0.5,))
    rgb = [Image.new('RGB', (2, 2), (255, 0, 51))]
    channels, mean, std = image_statistics(UnlabelledImages(rgb))
    assert channels == 3 and mean == pytest.approx((1.0, 0.0, 0.2)) and std == pytest.approx((0, 0, 0))


def test_image_statistics_leave_the_transform_in_place(fashion_root):
    fashion = create_dataset('torch/fashion_mnist', root=fashion_root, split='train')
    fashion.transform = torchvision.transforms.ToTensor()
    channels, mean, _ = image_statistics(fashion)
    data = fashion.data.double() / 255
    assert channels == 1 and mean[0] == pytest.approx(float(data.mean()))
    assert isinstance(fashion.transform, torchvision.transforms.ToTensor)


def test_image_mode_dataset_replicates_grayscale_before_the_transform(fashion_root):
    fashion = create_dataset('torch/fashion_mnist', root=fashion_root, split='train')
    rgb = IndexSubset(ImageModeDataset(fashion, 'RGB'), [5, 6])
    rgb.transform = torchvision.transforms.ToTensor()  # as timm's create_loader sets it
    image, target = rgb[0]
    assert image.shape == (3, 28, 28) and target == fashion.targets[5]
    assert torch.equal(image[0], image[2]) and image_statistics(rgb)[0] == 3


def test_resolve_data_properties_exits_2_when_classes_cannot_be_told():
    args, _ = parse_args(['--dataset', 'custom', '--data-dir', '/data'])
    data = UnlabelledImages([Image.fromarray(np.full((4, 4), v, np.uint8), mode='L') for v in (0, 255)])
    with pytest.raises(UsageError) as error:
        resolve_data_properties(args, (data, data, data, data))
    assert error.value.exit_code == 2
    lines = str(error.value).splitlines()
    assert len(lines) == 1 and '--num-classes' in lines[0]
    args.num_classes, args.mean = 5, [0.1, 0.2, 0.3]
    with pytest.raises(UsageError, match='--mean has 3 values'):
        resolve_data_properties(args, (data, data, data, data))
    args.mean = None
    resolve_data_properties(args, (data, data, data, data))
    assert args.in_chans == 1 and args.mean == [0.5] and args.std == [0.5]
