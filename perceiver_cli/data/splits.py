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
    patients = train.extra.get("sample_patients")
    if val_fraction > 0 and isinstance(patients, list) and len(patients) == len(labels):
        keep, held = patient_holdout(patients, labels, val_fraction, seed)
    else:
        keep, held = prepared.stratified_holdout(labels, val_fraction, seed)
    return (train.x, train.y, keep), (train.x, train.y, held)


def patient_holdout(patients: list, labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep, held_out) with whole patients held out (slices of one knee are near copies: a share of
    slices would validate on the training patients), each split near its share of every class."""
    from .akoa import split_groups

    labels = np.unique(labels, return_inverse=True)[1]
    assignment = split_groups([str(p) for p in patients], labels, int(labels.max()) + 1, (1 - fraction, fraction, 0),
                              seed, fix="prepare the dataset with a val split (--split), or set train.val_fraction=0")
    return np.flatnonzero(assignment == 0), np.flatnonzero(assignment == 1)


def split_train_val(dataset: prepared.PreparedDataset, val_fraction: float, seed: int):
    """The same samples as arrays: ((x, y) of train, (x, y) of validation)."""
    return tuple((x, y) if rows is None else (x[rows], y[rows])
                 for x, y, rows in split_train_val_rows(dataset, val_fraction, seed))
