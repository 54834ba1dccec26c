"""CIFAR-10 from a directory you name (the "python version" batches; nothing is downloaded), as PyTorch datasets.

The training set is augmented the usual way -- a random 32x32 crop of the image padded by 4 pixels, and a random
horizontal flip -- drawn from torch's generator, which tuner seeds with the trial's seed (``num_workers=0`` keeps
reruns identical). Images are normalized with the training set's per-channel mean and std.
"""

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tuner.tasks.cifar import TEST_FILE, TRAIN_FILES, check_root, read_batch


def load_arrays(root, limit=None):
    """(train images, train labels, test images, test labels) as tensors; ``limit`` keeps the first N train images."""
    path = check_root(root)
    train = [read_batch(Path(path) / name) for name in TRAIN_FILES]  # a safe unpickler: batches only, no code
    x = np.concatenate([images for images, _ in train])[:limit]
    y = np.concatenate([labels for _, labels in train])[:limit]
    test_x, test_y = read_batch(Path(path) / TEST_FILE)

    def images(data):
        return torch.tensor(data, dtype=torch.float32).reshape(-1, 3, 32, 32) / 255.0

    train_x, val_x = images(x), images(test_x)
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (train_x - mean) / std, torch.tensor(y), (val_x - mean) / std, torch.tensor(test_y)


class Augmented(Dataset):
    """Images with a random padded crop and a random horizontal flip each time they are read."""

    def __init__(self, images, labels, padding=4):
        self.images, self.labels, self.padding = images, labels, padding

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = torch.nn.functional.pad(self.images[index], [self.padding] * 4)
        top, left = torch.randint(0, 2 * self.padding + 1, (2,)).tolist()
        image = image[:, top : top + 32, left : left + 32]
        if torch.rand(()) < 0.5:
            image = image.flip(2)
        return image, self.labels[index]


class Plain(Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]


def loaders(root, limit=None):
    """``(train_loader(batch_size, seed), val_loader())`` factories over CIFAR-10 at ``root``."""
    train_x, train_y, val_x, val_y = load_arrays(root, limit)

    def train_loader(batch_size, seed):
        generator = torch.Generator().manual_seed(seed)  # the trial's seed orders the batches
        return DataLoader(
            Augmented(train_x, train_y),
            batch_size=batch_size or 128,
            shuffle=True,
            generator=generator,
            num_workers=0,
            drop_last=False,
        )

    def val_loader():
        return DataLoader(Plain(val_x, val_y), batch_size=512)

    return train_loader, val_loader
