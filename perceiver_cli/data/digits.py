"""scikit-learn's handwritten digits: 1,797 real 8x8 images shipped inside scikit-learn (no download).

The set has no test split; a seeded, stratified 20 % is held out as `test` so that `perceiver eval`
measures on images training never saw.
"""

import numpy as np

from .prepared import PreparedDataset, Split, channel_stats, stratified_holdout

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def read_digits() -> PreparedDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # pixel values are 0..16; store as uint8 0..255 like every other image set
    x = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]  # N 8 8 1
    y = digits.target.astype(np.int64)
    train_idx, test_idx = stratified_holdout(y, TEST_FRACTION, SPLIT_SEED)
    classes = [str(c) for c in digits.target_names]
    return PreparedDataset(
        name="digits",
        classes=classes,
        input_spec={"kind": "image", "shape": [8, 8, 1]},
        splits={"train": Split(x[train_idx], y[train_idx]), "test": Split(x[test_idx], y[test_idx])},
        normalization=channel_stats(x[train_idx]),
        source={"kind": "scikit-learn", "what": "sklearn.datasets.load_digits", "test_fraction": TEST_FRACTION, "seed": SPLIT_SEED},
    )
