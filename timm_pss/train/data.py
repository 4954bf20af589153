"""The run's data: the train / calibration / held-out / validation datasets (the embedded digits or timm's),
their classes, channels and normalisation, and timm's loaders over them."""
from timm.data import create_dataset, create_loader
from timm.data.loader import PrefetchLoader

from timm_pss.data import (
    DigitsDataset, ImageModeDataset, IndexSubset, dataset_num_classes, image_statistics, split_indices,
)
from timm_pss.pss import fixed_batch

from .checks import UsageError

DIGITS_IMAGE_SIZE = 32


def create_datasets(args):
    """(train, calibration, held-out, validation) datasets; calibration is the training data without augmentation."""
    if not args.data_dir and not args.dataset:
        kw = dict(image_size=DIGITS_IMAGE_SIZE, heldout_fraction=args.pss_heldout_frac, seed=args.seed)
        return (DigitsDataset('train', **kw), DigitsDataset('train', **kw), DigitsDataset('heldout', **kw),
                DigitsDataset('val', **kw))
    kw = dict(root=args.data_dir, split=args.train_split, class_map=args.class_map, download=args.dataset_download,
              batch_size=args.batch_size, seed=args.seed)
    try:
        train_full = create_dataset(args.dataset, is_training=True, **kw)
    except (AssertionError, ValueError, RuntimeError) as e:  # timm asserts on unknown names
        raise UsageError(f'--dataset {args.dataset!r} --data-dir {args.data_dir!r}: timm cannot read it ({e}); give '
                         f'a timm dataset name (e.g. torch/fashion_mnist) or an image-folder root') from None
    eval_full = create_dataset(args.dataset, is_training=False, **kw)
    heldout_idx, train_idx = split_indices(len(train_full), [args.pss_heldout_frac, 1.0], args.seed)
    val = create_dataset(args.dataset, root=args.data_dir, split=args.val_split, is_training=False,
                         class_map=args.class_map, download=args.dataset_download, batch_size=args.batch_size)
    calib_full = create_dataset(args.dataset, is_training=False, **kw)
    return (IndexSubset(train_full, train_idx), IndexSubset(calib_full, train_idx), IndexSubset(eval_full, heldout_idx),
            val)


def resolve_data_properties(args, datasets):
    """Fill --num-classes, --in-chans, --mean and --std from the training data where the command line left them
    unset, and return the datasets with images of the model's channel count.

    Classes: the number the dataset declares (torchvision's `classes`, a folder dataset's class folders). Channels:
    one-channel (grayscale) images give a model with in_chans=1 normalised by the data's own mean/std (measured on
    up to 2,000 training images); three-channel images keep timm's defaults. An explicit --in-chans that differs
    from the images' channels converts the images (grayscale replicated to RGB, or RGB to grayscale).
    """
    declared = dataset_num_classes(datasets[0])
    if args.num_classes is not None and declared is not None and args.num_classes < declared:
        raise UsageError(f'--num-classes {args.num_classes} is fewer than the {declared} classes of the training '
                         f'data; give at least {declared} (or leave it out to use the data\'s)')
    if args.num_classes is None:
        args.num_classes = declared
        if args.num_classes is None:
            raise UsageError(f'cannot tell the number of classes of --dataset {args.dataset!r} (it declares no '
                             f'classes); give --num-classes N')
    channels = image_statistics(datasets[0], max_images=1)[0]
    if args.in_chans is None:
        args.in_chans = channels
    if args.in_chans != channels:
        modes = {1: 'L', 3: 'RGB'}
        if args.in_chans not in modes or channels not in modes:
            raise UsageError(f'--in-chans {args.in_chans} does not match the data\'s {channels}-channel images, and '
                             f'only 1 (grayscale) and 3 (RGB) can be converted into each other')
        datasets = tuple(ImageModeDataset(d, modes[args.in_chans]) for d in datasets)
    elif channels == 1 and (args.mean is None or args.std is None):
        _, mean, std = image_statistics(datasets[0])
        args.mean = args.mean if args.mean is not None else list(mean)
        args.std = args.std if args.std is not None else list(std)
    for name in ('mean', 'std'):
        values = getattr(args, name)
        if values is not None and len(values) not in (1, args.in_chans):
            raise UsageError(f'--{name} has {len(values)} values; the model takes {args.in_chans}-channel images: give '
                             f'1 or {args.in_chans}')
    return datasets


def create_loaders(args, data_config, datasets, mixup_active, device):
    train, calib, heldout, val = datasets
    common = dict(input_size=data_config['input_size'], interpolation=data_config['interpolation'],
                  mean=data_config['mean'], std=data_config['std'], num_workers=args.workers,
                  pin_memory=args.pin_mem, use_prefetcher=args.prefetcher, device=device)
    train_loader = create_loader(
        train, batch_size=args.batch_size, is_training=True, no_aug=args.no_aug, re_prob=args.reprob,
        re_mode=args.remode, re_count=args.recount, scale=args.scale, ratio=args.ratio, hflip=args.hflip,
        vflip=args.vflip, color_jitter=args.color_jitter, auto_augment=args.aa, distributed=args.distributed,
        num_aug_repeats=args.aug_repeats,
        **dict(common, interpolation=args.train_interpolation))
    eval_batch = args.validation_batch_size or args.batch_size
    eval_kw = dict(common, batch_size=eval_batch, is_training=False, crop_pct=data_config['crop_pct'],
                   crop_mode=data_config['crop_mode'], distributed=False)
    return (train_loader, create_loader(calib, **eval_kw), create_loader(heldout, **eval_kw),
            create_loader(val, **eval_kw))


def monitor_batch(loader, batch_size: int, seed: int):
    """The pool monitor's fixed batch from `loader`'s dataset, normalised as the loader delivers it (timm's
    prefetcher leaves uint8 images in the dataset and normalises on the device)."""
    images, labels = fixed_batch(loader.dataset, batch_size, seed)
    if isinstance(loader, PrefetchLoader):
        images = images.to(loader.mean.device).float().sub_(loader.mean).div_(loader.std)
    return images, labels
