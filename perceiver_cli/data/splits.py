"""Which samples a run trains and validates on."""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from . import prepared

SPLIT_NAMES = ("train", "val", "test")


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
    labels = np.unique(labels, return_inverse=True)[1]
    assignment = split_groups([str(p) for p in patients], labels, int(labels.max()) + 1, (1 - fraction, fraction, 0),
                              seed, fix="prepare the dataset with a val split (--split), or set train.val_fraction=0")
    return np.flatnonzero(assignment == 0), np.flatnonzero(assignment == 1)


def split_train_val(dataset: prepared.PreparedDataset, val_fraction: float, seed: int):
    """The same samples as arrays: ((x, y) of train, (x, y) of validation)."""
    return tuple((x, y) if rows is None else (x[rows], y[rows])
                 for x, y, rows in split_train_val_rows(dataset, val_fraction, seed))


# --- whole groups (patients, volumes) to train/val/test: prepare akoa and knee-seg --------------

def split_groups(groups: list[str], labels: np.ndarray, num_classes: int, shares, seed: int,
                 fix: str = "add data, change --split, or use --split-by volume") -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) per sample, whole groups at a time.

    Groups go largest first (ties in a seeded random order) to the split that still needs the
    largest share of the group's classes, so every split approaches its share of every class."""
    keys = sorted(set(groups))
    index_of = {key: i for i, key in enumerate(keys)}
    group_of = np.array([index_of[g] for g in groups])
    counts = np.zeros((len(keys), num_classes))
    np.add.at(counts, (group_of, labels), 1)
    shares = np.asarray(shares, dtype=np.float64)
    target = shares[:, None] * counts.sum(0)[None, :]  # split x class
    assigned = np.zeros_like(target)
    order = np.random.default_rng(seed).permutation(len(keys))
    order = order[np.argsort(-counts[order].sum(1), kind="stable")]
    split_of_group = np.zeros(len(keys), dtype=np.int64)
    for g in order:
        need = ((target - assigned) * counts[g][None, :]).sum(1) / counts[g].sum()
        need[shares == 0] = -np.inf
        split_of_group[g] = int(np.argmax(need))
        assigned[split_of_group[g]] += counts[g]
    empty = [SPLIT_NAMES[s] for s in range(3) if shares[s] > 0 and not (split_of_group == s).any()]
    if empty:
        raise UserError(f"only {len(keys)} groups to split: the {', '.join(empty)} split would be empty; {fix}")
    return split_of_group[group_of]



def patients_in_several_splits(splits: dict[str, prepared.Split]) -> set[str]:
    seen: dict[str, str] = {}
    overlap = set()
    for name, split in splits.items():
        for patient in split.extra["patients"]:
            if seen.setdefault(patient, name) != name:
                overlap.add(patient)
    return overlap
