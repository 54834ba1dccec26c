"""Tune the optimizer and LR schedule of a Hugging Face ``Trainer`` (a tiny BERT classifying generated reviews).

    tuner run examples/hf/study.yaml

Nothing is downloaded: the data are short "reviews" generated from a fixed word list (positive when they hold more
praise than complaint words), the tokenizer is a word-to-id table written here, and the model is a one-layer
``BertForSequenceClassification`` built from a ``BertConfig``. ``train(trial)`` is an ordinary ``Trainer`` script with
two additions from ``tuner.integrations.hf``: ``optimizers=`` gets the recipe's optimizer and scheduler, and a
``TunerCallback`` reports every evaluation to the study and stops training when the trial is pruned.
"""

from __future__ import annotations

import random
import tempfile

import numpy as np
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback

import tuner
from tuner.integrations.hf import TunerCallback, optimizers

PRAISE = ["good", "great", "fine", "lovely", "superb", "tasty", "fresh", "friendly"]
COMPLAINT = ["bad", "awful", "cold", "rude", "stale", "bland", "slow", "dirty"]
FILLER = ["the", "food", "was", "and", "service", "very", "quite", "place", "staff", "a", "meal", "really"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
LENGTH = 24
"""Tokens per example: [CLS], the words (at most 18), [SEP], padding."""


class WordTokenizer:
    """Whitespace words to ids from a fixed vocabulary: ``[CLS] words [SEP]``, padded to ``LENGTH``."""

    def __init__(self, words: list[str]) -> None:
        self.vocab = {word: index for index, word in enumerate(SPECIAL + words)}

    def __call__(self, text: str) -> dict[str, list[int]]:
        unknown = self.vocab["[UNK]"]
        ids = [self.vocab["[CLS]"]] + [self.vocab.get(w, unknown) for w in text.split()][: LENGTH - 2]
        ids.append(self.vocab["[SEP]"])
        mask = [1] * len(ids) + [0] * (LENGTH - len(ids))
        return {"input_ids": ids + [self.vocab["[PAD]"]] * (LENGTH - len(ids)), "attention_mask": mask}


def reviews(count: int, seed: int) -> list[tuple[str, int]]:
    """``count`` (text, label) pairs: up to 3 praise and 3 complaint words among fillers, each sentiment word
    negated by a "not" in front of it one time in six ("not good" counts as a complaint); label 1 when praise
    wins (ties are not made)."""
    rng = random.Random(seed)
    made = []
    while len(made) < count:
        words, score = [], 0
        for polarity, choices in ((1, PRAISE), (-1, COMPLAINT)):
            for word in rng.choices(choices, k=rng.randint(0, 3)):
                negated = rng.random() < 1 / 6
                words.append(f"not {word}" if negated else word)
                score += -polarity if negated else polarity
        if score == 0:
            continue
        words += rng.choices(FILLER, k=rng.randint(2, 6))
        rng.shuffle(words)
        made.append((" ".join(words), int(score > 0)))
    return made


class ReviewDataset(torch.utils.data.Dataset):
    """Tokenized reviews as the dicts a ``Trainer`` batches: input_ids, attention_mask, labels."""

    def __init__(self, pairs: list[tuple[str, int]], tokenizer: WordTokenizer) -> None:
        self.items = [
            {**{key: torch.tensor(value) for key, value in tokenizer(text).items()}, "labels": torch.tensor(label)}
            for text, label in pairs
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index]


def accuracy(prediction) -> dict[str, float]:
    """The share of reviews classified right (the Trainer reports it as ``eval_accuracy``)."""
    logits, labels = prediction
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def tiny_bert(vocab_size: int) -> BertForSequenceClassification:
    """A one-layer BERT with 32-wide hidden states: about 25k parameters."""
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=LENGTH,
        type_vocab_size=1,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def train(trial: tuner.Trial) -> dict[str, float]:
    """One trial: ``budget.steps`` optimizer steps, an evaluation every ``budget.eval_every`` steps."""
    tokenizer = WordTokenizer(PRAISE + COMPLAINT + FILLER)
    train_set = ReviewDataset(reviews(1024, seed=0), tokenizer)
    eval_set = ReviewDataset(reviews(256, seed=1), tokenizer)
    model = tiny_bert(len(tokenizer.vocab)).to(trial.device)
    steps = trial.budget.steps or 200
    with tempfile.TemporaryDirectory(prefix="tuner-hf-") as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            max_steps=steps,
            per_device_train_batch_size=trial.recipe.batch_size or len(train_set),
            per_device_eval_batch_size=len(eval_set),
            eval_strategy="steps",
            eval_steps=trial.budget.eval_every or max(1, steps // 5),
            logging_strategy="no",
            save_strategy="no",
            report_to=[],
            max_grad_norm=0,  # the recipe clips inside its optimizer's step
            seed=trial.seed,  # the Trainer reseeds torch with it
            data_seed=trial.seed,
            use_cpu=trial.device.type != "cuda",
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        callback = TunerCallback(trial)
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_set,
            eval_dataset=eval_set,
            compute_metrics=accuracy,
            optimizers=optimizers(trial, model, steps),
            callbacks=[callback],
        )
        trainer.remove_callback(PrinterCallback)  # tuner prints one line per trial
        trainer.train()
        return callback.named(trainer.evaluate())  # accuracy, loss, ...
