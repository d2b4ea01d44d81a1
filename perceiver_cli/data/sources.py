"""Which datasets `prepare` knows, and how `train`/`eval` find a prepared one from the recipe."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from . import prepared
from .files import special_kind

# What `perceiver prepare NAME` reads, and the files a user fetches when there is no network.
SOURCES = {
    "digits": "embedded in scikit-learn; nothing to fetch",
    "mnist": "a folder with train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz",
    "cifar10": "cifar-10-python.tar.gz (or its extracted cifar-10-batches-py/), or an image folder / zip laid out <split>/<class>/*.jpg",
    "modelnet40": "ModelNet40.zip or its extracted ModelNet40/ (<class>/{train,test}/*.off)",
    "akoa": "a folder or zip of knee MRI volumes (.nii, .nii.gz) or AKOA PNG slices",
    "knee-seg": "a folder of NIfTI label maps (--labels) and their MR images (--images), or --synthesize K images per map",
}
# any other name is read as a labelled image folder or zip
IMAGE_FOLDER = "a labelled image folder or zip: <root>/<class>/*.png|jpg or <root>/<split>/<class>/*"

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


def read_source(dataset: str, source: Path, val_fraction: float = 0.1, seed: int = 0,
                size: tuple[int, int] | None = None, points: int = 2048, workers: int | None = None,
                akoa=None, kneeseg=None, test_fraction: float = 0.0) -> prepared.PreparedDataset:
    """Read `source` into a PreparedDataset (not yet written; an image folder's images are decoded
    while prepared.write writes them). `akoa`: an AkoaOptions; `kneeseg`: a KneeSegOptions (its
    folders are in the options, not `source`)."""
    if dataset == "digits":
        from .digits import read_digits
        return read_digits()
    if dataset == "knee-seg":
        from .kneeseg import KneeSegOptions, read_kneeseg
        return read_kneeseg(kneeseg or KneeSegOptions(seed=seed))
    if source is None:
        raise UserError(f"prepare {dataset}: --from is required ({SOURCES.get(dataset, IMAGE_FOLDER)})")
    source = Path(source)
    if not source.exists():
        raise UserError(f"{source}: no such file or folder")
    if not source.is_file() and not source.is_dir():  # reading a FIFO would wait forever, a device never end
        raise UserError(f"{source}: is {special_kind(source)}, not a regular file or a folder; give --from a folder, "
                        f"a zip or an archive")
    if dataset == "mnist":
        from .mnist import read_mnist
        return read_mnist(source)
    if dataset == "modelnet40":
        from .modelnet40 import read_modelnet40
        return read_modelnet40(source, points=points, workers=workers, seed=seed)
    if dataset == "akoa":
        from .akoa import AkoaOptions, read_akoa
        return read_akoa(source, akoa or AkoaOptions(seed=seed))
    is_image_folder = source.suffix.lower() == ".zip" or (source.is_dir() and not _looks_like_cifar_batches(source))
    if dataset == "cifar10" and not is_image_folder:
        if test_fraction:
            raise UserError(f"{source}: CIFAR-10's own archive has its test split: drop --test-fraction")
        from .cifar10 import read_cifar10
        return read_cifar10(source)
    from .imagefolder import read_image_folder
    return read_image_folder(source, dataset, val_fraction=val_fraction, seed=seed, size=size, stream=True,
                             test_fraction=test_fraction)


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
    what = SOURCES.get(data_config.dataset, "your image folder or zip").split(" (")[0].split(", or")[0]
    how = f"perceiver prepare {data_config.dataset} --from <{what}>"
    if data_config.dataset == "knee-seg":
        how = "perceiver prepare knee-seg --labels <label maps> --images <images> (or --synthesize 2)"
    raise UserError(f"no prepared dataset at {root}/ (data.dataset={data_config.dataset}): run `{how}` first, or set data.root")
