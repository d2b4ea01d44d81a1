"""Which samples a run trains and validates on."""

from __future__ import annotations

import numpy as np

from . import prepared


def split_train_val_rows(dataset: prepared.PreparedDataset, val_fraction: float, seed: int):
    """((x, y, rows) of train, (x, y, rows) of validation): the dataset's own val split if it has one,
    else a seeded stratified share of train. rows index x and y (None: all of them), so no sample is
    copied and memory-mapped arrays stay on disk until a batch reads them."""
    train = dataset.split("train")
    if "val" in dataset.splits:
        val = dataset.splits["val"]
        return (train.x, train.y, None), (val.x, val.y, None)
    # per-pixel labels (masks) have no class per sample to stratify on: a plain seeded share
    labels = train.y if train.y.ndim == 1 else np.zeros(len(train.y), dtype=np.int64)
    keep, held = prepared.stratified_holdout(labels, val_fraction, seed)
    return (train.x, train.y, keep), (train.x, train.y, held)


def split_train_val(dataset: prepared.PreparedDataset, val_fraction: float, seed: int):
    """The same samples as arrays: ((x, y) of train, (x, y) of validation)."""
    return tuple((x, y) if rows is None else (x[rows], y[rows])
                 for x, y, rows in split_train_val_rows(dataset, val_fraction, seed))
