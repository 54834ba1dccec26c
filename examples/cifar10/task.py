"""CIFAR-10 as a tuner Task whose data stream from DataLoaders: tuner's trainer trains it (``task: task.py:make_task``).

task: {name: task.py:make_task, options: {root: /data/cifar-10-batches-py}}
"""

import torch.nn.functional as F
from data import loaders
from model import ResNet

from tuner.tasks import SimpleTask


def accuracy(outputs, targets):
    return {"accuracy": (outputs.argmax(1) == targets).float().mean()}


def make_task(root, limit=None, width=16):
    """A ResNet of ``width`` on CIFAR-10 from ``root`` (``limit``: the first N training images only)."""
    train_loader, val_loader = loaders(root, limit)
    return SimpleTask(
        name="cifar10-resnet",
        model_fn=lambda: ResNet(width=width),
        loss_fn=F.cross_entropy,
        metrics_fn=accuracy,
        metric="accuracy",
        direction="maximize",
        train_loader_fn=train_loader,
        val_loader_fn=val_loader,
        default_batch_size=128,
    )
