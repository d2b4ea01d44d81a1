"""Which datasets `prepare` knows, and how `train`/`eval` find a prepared one from the recipe."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import UserError
from . import prepared
from .files import special_kind

# any name that is not a known dataset is read as a labelled image folder or zip
IMAGE_FOLDER = "a labelled image folder or zip: <root>/<class>/*.png|jpg or <root>/<split>/<class>/*"


@dataclass(frozen=True)
class Reader:
    """A dataset `perceiver prepare NAME` knows: what it reads (for errors and help), how to prepare it
    (for "no prepared dataset" errors), and its read function, which takes the --from path and only the
    options of its own."""

    source: str  # what --from takes, or what the reader reads without it
    read: Callable[..., prepared.PreparedDataset]
    needs_source: bool = True
    how: str | None = None  # the prepare command, where `perceiver prepare NAME --from <source>` is not it
    default_source: bool = False  # without --from it reads what every machine has: train prepares it when missing


READERS: dict[str, Reader] = {}


def reader(name: str, source: str, needs_source: bool = True, how: str | None = None, default_source: bool = False):
    """Register the decorated function as the reader of dataset `name`."""
    def register(read):
        READERS[name] = Reader(source, read, needs_source, how, default_source)
        return read
    return register


@reader("digits", "embedded in scikit-learn; nothing to fetch", needs_source=False)
def _digits(source):
    from .digits import read_digits
    return read_digits()


@reader("mnist", "a folder with train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
                 "t10k-labels-idx1-ubyte.gz")
def _mnist(source):
    from .mnist import read_mnist
    return read_mnist(source)


@reader("cifar10", "cifar-10-python.tar.gz (or its extracted cifar-10-batches-py/), or an image folder / zip laid out "
                   "<split>/<class>/*.jpg")
def _cifar10(source, val_fraction: float = 0.1, test_fraction: float = 0.0, seed: int = 0, size=None):
    if source.suffix.lower() == ".zip" or (source.is_dir() and not _looks_like_cifar_batches(source)):
        return _image_folder(source, "cifar10", val_fraction, test_fraction, seed, size)
    if test_fraction:
        raise UserError(f"{source}: CIFAR-10's own archive has its test split: drop --test-fraction")
    from .cifar10 import read_cifar10
    return read_cifar10(source)


@reader("modelnet40", "ModelNet40.zip or its extracted ModelNet40/ (<class>/{train,test}/*.off)")
def _modelnet40(source, points: int = 2048, workers: int | None = None, seed: int = 0):
    from .modelnet40 import read_modelnet40
    return read_modelnet40(source, points=points, workers=workers, seed=seed)


@reader("akoa", "a folder or zip of knee MRI volumes (.nii, .nii.gz) or AKOA PNG slices")
def _akoa(source, akoa=None, seed: int = 0):
    from .akoa import AkoaOptions, read_akoa
    return read_akoa(source, akoa or AkoaOptions(seed=seed))


@reader("knee-seg", "a folder of NIfTI label maps (--labels) and their MR images (--images), or --synthesize K images "
                    "per map", needs_source=False,
        how="perceiver prepare knee-seg --labels <label maps> --images <images> (or --synthesize 2)")
def _kneeseg(source, kneeseg=None, seed: int = 0):
    from .kneeseg import KneeSegOptions, read_kneeseg
    return read_kneeseg(kneeseg or KneeSegOptions(seed=seed))


@reader("text", "a text file, or a folder or zip of them (--glob); without --from the Python standard library's own .py "
                "files", needs_source=False, how="perceiver prepare text (or --from <file, folder or zip of text>)",
        default_source=True)
def _text(source, text=None):
    from .text import TextOptions, read_text
    return read_text(source, text or TextOptions())


def _image_folder(source, name: str, val_fraction: float = 0.1, test_fraction: float = 0.0, seed: int = 0, size=None):
    from .imagefolder import read_image_folder
    return read_image_folder(source, name, val_fraction=val_fraction, seed=seed, size=size, stream=True,
                             test_fraction=test_fraction)


DOWNLOADS = {
    "mnist": [
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", name)
        for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    ],
    "cifar10": [("https://www.cs.toronto.edu/~kriz/", "cifar-10-python.tar.gz")],
}


def default_root(dataset: str) -> Path:
    return Path("data") / dataset


def prepared_root(data_config) -> Path:
    """Where a recipe's prepared dataset lives: data.root, else data/<dataset>."""
    return Path(data_config.root) if data_config.root else default_root(data_config.dataset)


def read_source(dataset: str, source: Path | None, **options) -> prepared.PreparedDataset:
    """Read `source` with the reader of `dataset` (any other name: an image folder of that name) into a
    PreparedDataset, not yet written (an image folder's images are decoded while prepared.write writes
    them). `options` are that reader's own (see READERS)."""
    known = READERS.get(dataset)
    if known is not None and not known.needs_source:
        return known.read(source, **options)
    if source is None:
        raise UserError(f"prepare {dataset}: --from is required ({known.source if known else IMAGE_FOLDER})")
    source = Path(source)
    if not source.exists():
        raise UserError(f"{source}: no such file or folder")
    if not source.is_file() and not source.is_dir():  # reading a FIFO would wait forever, a device never end
        raise UserError(f"{source}: is {special_kind(source)}, not a regular file or a folder; give --from a folder, "
                        f"a zip or an archive")
    if known is None:
        return _image_folder(source, dataset, **options)
    return known.read(source, **options)


def _looks_like_cifar_batches(path: Path) -> bool:
    return (path / "data_batch_1").exists() or (path / "cifar-10-batches-py").is_dir()


def download(dataset: str, into: Path) -> Path:
    """Fetch the standard files when the network allows; otherwise say exactly what to fetch."""
    from torchvision.datasets.utils import download_url

    into.mkdir(parents=True, exist_ok=True)
    try:
        for base, filename in DOWNLOADS[dataset]:
            if not (into / filename).exists():
                download_url(base + filename, str(into), filename)
    except Exception:  # no network, proxy, DNS...: the user fetches them by hand
        files = ", ".join(base + f for base, f in DOWNLOADS[dataset])
        raise UserError(
            f"cannot download {dataset} (no network?): fetch {files} into {into}/ and run "
            f"`perceiver prepare {dataset} --from {into if dataset == 'mnist' else into / DOWNLOADS[dataset][0][1]}`"
        ) from None
    return into if dataset == "mnist" else into / DOWNLOADS[dataset][0][1]


def load_for_recipe(data_config, mmap: bool = False) -> prepared.PreparedDataset:
    """The prepared dataset a recipe names; digits is built in memory when not prepared. `mmap`: the
    inputs as memory maps of their files (training reads them resident or streamed, data.residency)."""
    root = prepared_root(data_config)
    prepared.restore(root)
    if (root / "manifest.json").is_file():
        return prepared.load(root, mmap=mmap)
    if data_config.dataset == "digits":
        from .digits import read_digits
        return read_digits()
    known = READERS.get(data_config.dataset)
    if known is not None and known.default_source and not data_config.root:  # e.g. text: the standard library
        return _prepare_default(known, root, mmap)
    what = (known.source if known else "your image folder or zip").split(" (")[0].split(", or")[0]
    how = (known.how if known else None) or f"perceiver prepare {data_config.dataset} --from <{what}>"
    raise UserError(f"no prepared dataset at {root}/ (data.dataset={data_config.dataset}): run `{how}` first, or set data.root")


def _prepare_default(known: Reader, root: Path, mmap: bool) -> prepared.PreparedDataset:
    """Prepare a reader's default source into `root` once: the ranks of a torchrun job (or two runs
    started together) take an flock beside it in turn; the first prepares, the others find its manifest."""
    import fcntl

    from ..console import err_console

    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.prepare.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # dropped when the file closes
        if not (root / "manifest.json").is_file():
            err_console.print(f"note: no prepared dataset at {root}/: preparing it now, as `{known.how.split(' (')[0]}` "
                              f"does", highlight=False, soft_wrap=True)
            prepared.write(known.read(None), root)
    return prepared.load(root, mmap=mmap)
