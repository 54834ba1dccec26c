"""What both callbacks share, without a framework: the naming rule, the plateau feeding, the missing-extra error."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from tuner.errors import TunerError
from tuner.integrations._common import MissingExtraError, as_report, feed_plateau, number, validation_loss
from tuner.optim.torch_api import build
from tuner.recipe import Recipe

LIGHTNING = ("val_", "val/")


def test_numbers_of_every_kind_are_floats_and_anything_else_is_left_out() -> None:
    assert number(3) == 3.0 and number(0.5) == 0.5 and number(torch.tensor(0.25)) == 0.25
    assert number(np.float32(1.5)) == 1.5 and number(np.int64(2)) == 2.0 and number(torch.tensor([7])) == 7.0
    assert [number(v) for v in (True, None, "0.5", [1.0], torch.zeros(2), np.zeros(3), {"a": 1})] == [None] * 7


def test_the_validation_prefix_is_dropped_unless_the_bare_name_was_logged_too() -> None:
    logged = {
        "val_accuracy": torch.tensor(0.875),
        "val_loss": 0.3,
        "loss": 0.2,  # logged by training_step: stays the training loss, so val_loss keeps its name
        "val/f1": 0.8,
        "train_loss": np.float64(0.25),
        "note": "text",
    }
    report = as_report(logged, "accuracy", LIGHTNING, None, "here")
    assert report == {"accuracy": 0.875, "val_loss": 0.3, "loss": 0.2, "f1": 0.8, "train_loss": 0.25}
    assert as_report({"eval_loss": 0.1, "eval_accuracy": 1}, "accuracy", ("eval_",), None, "here") == {
        "loss": 0.1,
        "accuracy": 1.0,
    }


def test_monitor_names_the_studys_metric_and_a_missing_metric_says_what_was_logged() -> None:
    report = as_report({"val_acc": 0.7, "val_loss": 0.4}, "accuracy", LIGHTNING, "val_acc", "here")
    assert report == {"acc": 0.7, "loss": 0.4, "accuracy": 0.7}
    with pytest.raises(TunerError, match=r"here: the study optimizes 'accuracy', which is not among the logged "):
        as_report({"val_acc": 0.7}, "accuracy", LIGHTNING, None, "here")
    with pytest.raises(TunerError, match=r"log it as 'accuracy' or 'val_accuracy' or 'val/accuracy', or name"):
        as_report({"val_acc": 0.7}, "accuracy", LIGHTNING, None, "here")
    with pytest.raises(TunerError, match=r"monitor='val_f1' was not logged; the logged metrics: \['val_acc'\]"):
        as_report({"val_acc": 0.7}, "accuracy", LIGHTNING, "val_f1", "here")


def test_the_plateau_hears_the_validation_loss_and_nothing_else_is_fed() -> None:
    assert validation_loss({"val_loss": 0.5, "loss": 0.1}, {"loss": 0.1}, LIGHTNING, None) == 0.5
    assert validation_loss({"eval_loss": 0.5}, {"loss": 0.5}, ("eval_",), None) == 0.5
    assert validation_loss({"loss": 0.1}, {"loss": 0.1}, LIGHTNING, None) == 0.1
    assert validation_loss({"val_nll": 0.7}, {"nll": 0.7}, LIGHTNING, "val_nll") == 0.7

    params = {"factor": 0.5, "patience": 0, "cooldown": 0, "min_factor": 0.0, "threshold": 1e-4}
    recipe = Recipe(optimizer="sgd", lr=0.1, schedule="plateau", schedule_params=params)
    optimizer, scheduler = build(torch.nn.Linear(2, 1), recipe, total_steps=10)
    assert feed_plateau([None, scheduler], "plateau", 1.0, "here") == 1
    assert feed_plateau([scheduler], "plateau", 1.0, "here") == 1  # no improvement, patience 0: the LR halves
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)

    class Wrapped:  # accelerate's AcceleratedScheduler keeps the scheduler in .scheduler
        def __init__(self, inner):
            self.scheduler = inner

    assert feed_plateau([Wrapped(scheduler)], "plateau", 0.5, "here") == 1
    constant = build(torch.nn.Linear(2, 1), Recipe(optimizer="sgd", lr=0.1), total_steps=10)[1]
    assert feed_plateau([constant], "constant", 1.0, "here") == 0
    with pytest.raises(TunerError, match="here: the recipe's schedule is plateau, but the trainer holds no scheduler"):
        feed_plateau([constant, None], "plateau", 1.0, "here")
    with pytest.raises(TunerError, match="here: the recipe's schedule is plateau, which follows the validation loss"):
        feed_plateau([scheduler], "plateau", None, "here")


@pytest.mark.parametrize(("extra", "package"), [("lightning", "lightning"), ("hf", "transformers")])
def test_a_missing_framework_names_the_extra_to_install(monkeypatch, extra: str, package: str) -> None:
    import tuner.integrations

    monkeypatch.setitem(sys.modules, package, None)  # import fails as if it were not installed
    monkeypatch.delitem(sys.modules, f"tuner.integrations.{extra}", raising=False)
    monkeypatch.delitem(vars(tuner.integrations), extra, raising=False)  # not hasattr: that would import it
    with pytest.raises(MissingExtraError, match=rf"needs {package}, .*: pip install 'tuner\[{extra}\]'") as caught:
        getattr(tuner.integrations, extra)
    assert isinstance(caught.value, ImportError) and isinstance(caught.value, TunerError)


def test_importing_the_package_imports_no_framework() -> None:
    import subprocess

    code = (
        "import sys, tuner.integrations as i\nassert sorted(i.__all__) == ['hf', 'lightning']\n"
        "print(sorted(m for m in ('torch', 'lightning', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
