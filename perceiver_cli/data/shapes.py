"""The input shape and classes of a recipe's dataset without preparing it: read from its manifest
when it is prepared here, else what the shipped readers produce by default. `perceiver bench`,
`perceiver recipes` and `perceiver_cli.create_model` build models from it."""

from __future__ import annotations

from dataclasses import dataclass, field

KNOWN_INPUTS = {
    "digits": {"kind": "image", "shape": [8, 8, 1]},
    "mnist": {"kind": "image", "shape": [28, 28, 1]},
    "cifar10": {"kind": "image", "shape": [32, 32, 3]},
    "modelnet40": {"kind": "points", "shape": [2048, 3], "coords": 3, "features": 0},
    "akoa": {"kind": "image", "shape": [228, 260, 1]},
    "knee-seg": {"kind": "image", "shape": [128, 128, 1]},
    "text": {"kind": "bytes", "shape": [4096]},
    "imagenet": {"kind": "image", "shape": [224, 224, 3]},  # an image folder prepared as `imagenet`
}
# knee-seg: the OAI label maps' values 0-9 (prepare knee-seg's default --size 128 128)
KNOWN_CLASSES = {"digits": 10, "mnist": 10, "cifar10": 10, "modelnet40": 40, "akoa": 2, "knee-seg": 10, "text": 256,
                 "imagenet": 1000}


def input_of(data_config) -> tuple[dict, int] | None:
    """(input spec, number of classes) of the dataset a recipe names, or None where it is not known
    (a custom image folder not prepared here)."""
    from .prepared import read_manifest
    from .sources import prepared_root

    root = prepared_root(data_config)
    if (root / "manifest.json").is_file():
        manifest = read_manifest(root)
        return dict(manifest["input"]), len(manifest["classes"])
    if data_config.dataset in KNOWN_INPUTS:
        return dict(KNOWN_INPUTS[data_config.dataset]), KNOWN_CLASSES[data_config.dataset]
    return None


@dataclass
class ShapesOnly:
    """A dataset known by its shapes alone, with no samples: what a task needs to build its model for
    bench, `perceiver recipes` and create_model (its input spec and class names)."""
    name: str
    input_spec: dict
    classes: list[str]
    target: dict | None = None  # {"kind": "mask"}: per-pixel labels, for a task that reads them
    splits: dict = field(default_factory=dict)  # none: a task that counts its training labels finds none

    @classmethod
    def numbered(cls, name: str, input_spec: dict, classes: int, target: dict | None = None) -> "ShapesOnly":
        """Classes named 0, 1, ... (their names do not change a model)."""
        return cls(name, input_spec, [str(i) for i in range(classes)], target)
