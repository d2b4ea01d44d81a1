"""A user's own files read the way `prepare` read a run's data, for `perceiver predict`.

What a checkpoint records decides how: its input spec (image size and channels, point count) and
its `source` (what prepare did: a volume's slicing and intensity window, the point sampling seed).
Images are decoded, made gray or RGB and resized (bilinear) as `prepare` image folders and CIFAR
JPEGs are; AKOA / knee-seg runs slice NIfTI volumes (and read PNG slices) as `prepare akoa` does;
point-cloud runs sample OFF/PLY/STL/OBJ meshes on their surface with the seed prepare derived from
the mesh's path, centred and scaled into the unit sphere. Folders and zips are walked recursively,
in any layout; a file that cannot be read is reported and skipped, never the end of the batch.

    reader = input_reader(input_spec, source)
    with expand(paths, reader.kinds) as (files, skipped):
        samples = reader.read(file.name, file.read())  # both raise Unreadable(reason)
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .files import Unreadable, is_hidden, open_source, read_file, skipped_example, special_kind
from .imagefolder import EXTENSIONS

IMAGE_SUFFIXES = tuple(sorted(EXTENSIONS))  # what prepare reads from image folders
MESH_SUFFIXES = (".off", ".ply", ".stl", ".obj")
VOLUME_SUFFIXES = (".nii", ".nii.gz")
KIND_WORDS = {"image": "images", "mesh": "meshes (OFF/PLY/STL/OBJ)", "volume": "NIfTI volumes"}
ONE_OF_KIND = {"image": "an image", "mesh": "a mesh", "volume": "a NIfTI volume"}
SLICED_SOURCES = ("akoa", "knee-seg")  # prepare kinds whose images are slices of volumes


@dataclass
class Sample:
    name: str  # the file, or "<file>#slice=<i>" for a slice of a volume
    array: np.ndarray  # as prepare stores a sample: uint8 H W C image, float32 N 3 cloud
    volume: str | None = None  # the volume file a slice came from
    index: int | None = None  # and its index there (akoa's orientation)


@dataclass
class Found:
    name: str  # as the user gave it, or <zip or folder>/<member>
    read: Callable[[], bytes]


def kind_of(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(IMAGE_SUFFIXES):
        return "image"
    if lower.endswith(MESH_SUFFIXES):
        return "mesh"
    if lower.endswith(VOLUME_SUFFIXES):
        return "volume"
    return None


@contextmanager
def expand(paths: list[Path], kinds: set[str]) -> Iterator[tuple[list[Found], list[dict]]]:
    """(every input file under `paths` (files, folders and zips, recursively) of the kinds the model
    reads, sorted per path; what is not read, listed as skipped with the reason: files of another kind
    (named on their own or found inside a folder or zip alike), zips within, FIFOs and devices inside a
    folder, members whose path leaves their zip). Hidden files (.DS_Store, __MACOSX) are passed over
    silently. Files are read when asked (zips stay open meanwhile), so no folder is ever held in memory
    whole. A path that does not exist, or is itself a FIFO or device, is one line; so is finding nothing."""
    found, skipped = [], []
    with ExitStack() as stack:
        for path in map(Path, paths):
            if not path.exists() and not path.is_symlink():
                raise UserError(f"{path}: no such file or folder")
            if not path.is_file() and not path.is_dir():  # a FIFO would block predict, a device never end
                raise UserError(f"{path}: is {special_kind(path)}, not a regular file or a folder; give files, folders "
                                f"or zips of {_words(kinds)}")
            if path.is_file() and not zipfile.is_zipfile(path):
                kind = kind_of(path.name)
                if kind in kinds:
                    found.append(Found(str(path), lambda path=path: read_file(path)))
                else:
                    skipped.append({"input": str(path), "reason": _not_read(kind, kinds)})
                continue
            source = stack.enter_context(open_source(path))
            skipped += [{"input": f"{path}/{item['path']}", "reason": item["reason"]} for item in source.skipped]
            for name in sorted(source.names):
                if any(is_hidden(part) for part in name.split("/")):
                    continue
                kind = kind_of(name)
                if kind in kinds:
                    found.append(Found(f"{path}/{name}", lambda read=source.read, name=name: read(name)))
                else:
                    skipped.append({"input": f"{path}/{name}", "reason": _not_read(kind, kinds)})
        if not found and len(paths) == 1 and len(skipped) == 1 and skipped[0]["input"] == str(paths[0]):
            raise UserError(f"{paths[0]}: {skipped[0]['reason']}: nothing to predict; give files, folders or zips of "
                            f"{_words(kinds)}")
        if not found:
            given = ", ".join(map(str, paths[:3])) + (" ..." if len(paths) > 3 else "")
            raise UserError(f"{given}: no inputs this model reads ({_words(kinds)}) found{skipped_example(skipped, 'input')}; "
                            f"give files, folders or zips of them")
        yield found, skipped


def _not_read(kind: str | None, kinds: set[str]) -> str:
    """Why a file of this kind is skipped: the same words whether it was named or found in a folder."""
    what = ONE_OF_KIND[kind] if kind else "not an image, mesh or NIfTI volume"
    return f"{what}, and this model reads {_words(kinds)}"


def _words(kinds: set[str]) -> str:
    return " and ".join(KIND_WORDS[k] for k in sorted(kinds))


def match_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """uint8 images (... H W C) with the model's number of channels."""
    if x.shape[-1] == channels:
        return x
    if channels == 1:  # RGB -> luminance (ITU-R 601), as PIL's convert("L")
        return np.round(x[..., :3] @ np.array([0.299, 0.587, 0.114])).clip(0, 255).astype(np.uint8)[..., None]
    return np.repeat(x, channels, axis=-1)


class ImageReader:
    """Image files (and, for runs on volume slices, NIfTI volumes and PNG slices) as H W C uint8."""

    def __init__(self, input_spec: dict, source: dict):
        height, width, self.channels = input_spec["shape"]
        self.size = (height, width)
        self.sliced = str(source.get("kind", "")).startswith(SLICED_SOURCES)
        self.kinds = {"image", "volume"} if self.sliced else {"image"}
        axis = source.get("axis")
        slices = source.get("slices")
        self.axis = axis if isinstance(axis, int) else None  # else sagittal, from the affine
        # akoa takes `slices` evenly spaced slices; knee-seg's were the labelled ones, which a new scan
        # has not: all of them
        self.slices = slices if isinstance(slices, int) and not str(source.get("kind")).startswith("knee-seg") else None
        self.geometry: dict[str, VolumeGeometry] = {}  # per volume read: how to lay labels back over it

    def read(self, name: str, data: bytes) -> list[Sample]:
        from .imagefolder import _decode, _reason

        if self.sliced:
            return self._slices(name, data)
        try:
            image, _ = _decode(data, self.size)
        except Exception as exc:  # PIL raises many types on broken files (and on decompression bombs)
            raise Unreadable(_reason(exc)) from None
        return [Sample(name, match_channels(image if image.ndim == 3 else image[..., None], self.channels))]

    def _slices(self, name: str, data: bytes) -> list[Sample]:
        """As `prepare akoa` reads a file: a PNG slice, or a volume's slices (its orientation and window)."""
        from .akoa import AkoaOptions, _read_file, slice_volume
        from .nifti import nifti_image, oriented

        options = AkoaOptions(slices=self.slices, axis=self.axis, size=self.size)
        is_volume = kind_of(name) == "volume"
        try:
            if is_volume:
                image = nifti_image(data, name.lower().endswith(".gz"))
                volume = oriented(image, self.axis)
                read = slice_volume(volume, options)
                self.geometry[name] = VolumeGeometry(np.asarray(image.affine), self.axis, *volume.shape)
            elif name.lower().endswith(".png"):
                read = _read_file(name, data, options)
            else:
                raise Unreadable("slice runs read PNG slices or NIfTI volumes")
        except UserError as exc:
            raise Unreadable(str(exc)) from None
        except Unreadable:
            raise
        except Exception as exc:  # nibabel / PIL on a broken file
            raise Unreadable(f"not a readable {'NIfTI volume' if is_volume else 'PNG slice'} ({_short(exc)})") from None
        return [Sample(f"{name}#slice={index}" if index is not None else name,
                       match_channels(image[..., None], self.channels), name if is_volume else None, index)
                for index, image in read]


@dataclass
class VolumeGeometry:
    """Where a volume's slices came from: enough to write a label volume over the scan (nifti.labels_nifti)."""
    affine: np.ndarray
    axis: int | None
    slices: int
    rows: int
    columns: int


class MeshReader:
    """Meshes sampled as `prepare modelnet40` samples them: prepared point count, seed from the path."""

    kinds = {"mesh"}

    def __init__(self, input_spec: dict, source: dict):
        self.points = int(input_spec["shape"][0])
        self.seed = int(source.get("seed", 0) or 0)

    def read(self, name: str, data: bytes) -> list[Sample]:
        import trimesh

        from .modelnet40 import file_seed, sample_mesh, sample_surface

        seed = file_seed(name.replace("\\", "/"), self.seed)
        suffix = name.lower().rsplit(".", 1)[-1]
        if suffix == "off":
            cloud, reason = sample_mesh(data, seed, self.points)
        else:
            try:
                mesh = trimesh.load(io.BytesIO(data), file_type=suffix, force="mesh", process=False)
            except Exception as exc:  # trimesh raises many types on malformed files
                raise Unreadable(f"cannot parse {suffix.upper()} ({_short(exc)})") from None
            cloud, reason = sample_surface(mesh, seed, self.points)
        if cloud is None:
            raise Unreadable(reason)
        return [Sample(name, cloud)]


def input_reader(input_spec: dict, source: dict | None):
    """The reader for a model of this input spec, trained on data prepared as `source` records."""
    source = source or {}
    if input_spec["kind"] == "image":
        return ImageReader(input_spec, source)
    if input_spec["kind"] == "points":
        if input_spec["shape"][1] != 3:
            raise UserError(f"predict samples meshes into x y z clouds; this model reads {input_spec['shape'][1]} "
                            f"values per point")
        return MeshReader(input_spec, source)
    raise UserError(f"predict reads images, volumes and meshes; this model reads {input_spec['kind']}")


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
    return text or type(exc).__name__
