"""The same CIFAR-10 ResNet trained by your own loop (``train: train.py:train``): tuner builds the optimizer and the
LR scheduler from the trial's recipe; the loop reports validation accuracy after every epoch.

    train: {name: train.py:train, options: {root: /data/cifar-10-batches-py}}
"""

import torch
import torch.nn.functional as F
from data import loaders
from model import ResNet

import tuner


def evaluate(model, loader, device):
    model.eval()
    correct = total = loss = 0.0
    with torch.no_grad():
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            outputs = model(images)
            loss += F.cross_entropy(outputs, labels, reduction="sum").item()
            correct += (outputs.argmax(1) == labels).sum().item()
            total += len(labels)
    model.train()
    return {"loss": loss / total, "accuracy": correct / total}


def train(trial: tuner.Trial) -> dict:
    options = trial.options
    train_loader, val_loader = loaders(options["root"], options.get("limit"))
    loader = train_loader(trial.recipe.batch_size, trial.seed)
    model = ResNet(width=options.get("width", 16)).to(trial.device)
    epochs = trial.budget.epochs or 10
    optimizer, scheduler = trial.build(model, total_steps=len(loader) * epochs)
    step, metrics = 0, {}
    for _ in range(epochs):
        for images, labels in loader:
            loss = F.cross_entropy(model(images.to(trial.device)), labels.to(trial.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
        metrics = evaluate(model, val_loader(), trial.device)
        trial.report(step, metrics)  # logs to MLflow; raises tuner.TrialPruned when the pruner stops the trial
        if trial.recipe.schedule == "plateau":
            scheduler.step(metrics["loss"])
    return metrics
