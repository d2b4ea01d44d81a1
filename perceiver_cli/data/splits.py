"""Which samples a run trains and validates on."""

from __future__ import annotations

from . import prepared


def split_train_val(dataset: prepared.PreparedDataset, val_fraction: float, seed: int):
    """The dataset's own val split if it has one, else a seeded stratified share of train."""
    train = dataset.split("train")
    if "val" in dataset.splits:
        val = dataset.splits["val"]
        return (train.x, train.y), (val.x, val.y)
    keep, held = prepared.stratified_holdout(train.y, val_fraction, seed)
    return (train.x[keep], train.y[keep]), (train.x[held], train.y[held])
