"""The MNIST, CIFAR-10 and image-folder readers, on small fixtures in the real formats and on the real data when present."""

from __future__ import annotations

import gzip
import os
import pickle
import re
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from perceiver_cli.data import prepared
from perceiver_cli.data.cifar10 import read_cifar10
from perceiver_cli.data.imagefolder import read_image_folder
from perceiver_cli.data.mnist import read_mnist
from perceiver_cli.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# ---------------------------------------------------------------- MNIST

def write_idx(path: Path, array: np.ndarray, magic: int, compress: bool = True) -> Path:
    """An idx file as published: big-endian int32 magic and dims, then uint8 data."""
    raw = struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape) + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw, mtime=0)
    path.write_bytes(raw)
    return path


def make_mnist(folder: Path, splits=("train", "t10k"), counts={"train": 20, "t10k": 10}, compress=True) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix in splits:
        x = rng.integers(0, 256, (counts[prefix], 28, 28), dtype=np.uint8)
        y = np.arange(counts[prefix], dtype=np.uint8) % 10
        write_idx(folder / f"{prefix}-images-idx3-ubyte", x, 2051, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", y, 2049, compress)
        arrays[prefix] = (x, y)
    return arrays


def test_mnist_reads_train_and_test(tmp_path):
    arrays = make_mnist(tmp_path)
    ds = read_mnist(tmp_path, verify_md5=False)
    assert ds.name == "mnist" and ds.classes == [str(d) for d in range(10)]
    assert ds.input_spec == {"kind": "image", "shape": [28, 28, 1]}
    assert list(ds.splits) == ["train", "test"]
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = arrays[prefix]
        assert ds.splits[split].x.shape == (len(x), 28, 28, 1) and ds.splits[split].x.dtype == np.uint8
        assert np.array_equal(ds.splits[split].x[..., 0], x)
        assert ds.splits[split].y.dtype == np.int64 and np.array_equal(ds.splits[split].y, y)
    assert ds.normalization == prepared.channel_stats(ds.splits["train"].x)
    assert ds.source["files"] == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                  "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_mnist_one_pair_is_enough_and_uncompressed_files_work(tmp_path):
    arrays = make_mnist(tmp_path, splits=("t10k",), compress=False)
    ds = read_mnist(tmp_path)  # md5 applies to the published .gz files only
    assert list(ds.splits) == ["test"]
    assert np.array_equal(ds.splits["test"].y, arrays["t10k"][1])
    assert ds.normalization == prepared.channel_stats(ds.splits["test"].x)


def test_mnist_md5_mismatch_names_file_and_md5s(tmp_path):
    make_mnist(tmp_path, splits=("t10k",))
    with pytest.raises(UserError) as err:
        read_mnist(tmp_path, verify_md5=True)
    message = str(err.value)
    assert "t10k-images-idx3-ubyte.gz" in message and "9fb629c4189551a2d022fa330f9573f3" in message
    assert "download it again" in message and "\n" not in message


def _swap_magic(folder):
    write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((10, 28, 28)), 2049)


def _truncate(folder):
    path = folder / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))


def _fewer_labels(folder):
    write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(9), 2049)


def _drop_labels(folder):
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()


def _not_gzip(folder):
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")


@pytest.mark.parametrize("damage, names", [
    (_swap_magic, "t10k-images-idx3-ubyte.gz"),
    (_truncate, "t10k-images-idx3-ubyte.gz"),
    (_fewer_labels, "t10k-labels-idx1-ubyte.gz"),
    (_drop_labels, "t10k-labels-idx1-ubyte"),
    (_not_gzip, "t10k-images-idx3-ubyte.gz"),
])
def test_mnist_bad_files_are_one_line_user_errors(tmp_path, damage, names):
    make_mnist(tmp_path, splits=("t10k",))
    damage(tmp_path)
    with pytest.raises(UserError) as err:
        read_mnist(tmp_path, verify_md5=False)
    assert names in str(err.value) and "\n" not in str(err.value)


def test_mnist_no_pair_says_which_files(tmp_path):
    (tmp_path / "README").write_text("nothing here")
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz.*t10k-labels-idx1-ubyte.gz"):
        read_mnist(tmp_path)


def test_mnist_real_t10k():
    folder = SHARED_DATA / "mnist-t10k"
    if not (folder / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip(f"real MNIST t10k not present at {folder}")
    ds = read_mnist(folder, verify_md5=True)
    test = ds.split("test")
    assert test.x.shape == (10000, 28, 28, 1) and test.x.dtype == np.uint8
    assert sorted(np.unique(test.y)) == list(range(10))
    assert list(test.y[:5]) == [7, 2, 1, 0, 4]  # the well-known first test digits
    assert ds.source["md5_verified"] is True


# ---------------------------------------------------------------- CIFAR-10

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def cifar_pickle(obj, old_numpy_names: bool = True) -> bytes:
    """Protocol 2 like the real files; they were written by numpy 1.x, whose arrays name numpy.core.multiarray."""
    data = pickle.dumps(obj, protocol=2)
    return data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n") if old_numpy_names else data


def make_cifar_batches(folder: Path, n: int = 4) -> dict:
    """A cifar-10-batches-py/ with the real keys and layouts, n images per batch."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    batches = {}
    for i, name in enumerate(CIFAR_BATCHES):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        batch = {b"batch_label": f"{name} of 5".encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img_{i}_{k}.png".encode() for k in range(n)]}
        (folder / name).write_bytes(cifar_pickle(batch, old_numpy_names=i % 2 == 0))
        batches[name] = (data, labels)
    meta = {b"num_cases_per_batch": n, b"label_names": [c.encode() for c in CIFAR_NAMES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(cifar_pickle(meta))
    (folder / "readme.html").write_text("<html></html>")
    return batches


def make_cifar_tar(tmp_path: Path) -> tuple[Path, dict]:
    batches = make_cifar_batches(tmp_path / "src" / "cifar-10-batches-py")
    tar_path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return tar_path, batches


def test_cifar10_batches_folder(tmp_path):
    batches = make_cifar_batches(tmp_path / "cifar-10-batches-py")
    ds = read_cifar10(tmp_path / "cifar-10-batches-py", verify_md5=False)
    assert ds.name == "cifar10" and ds.classes == CIFAR_NAMES
    assert ds.input_spec == {"kind": "image", "shape": [32, 32, 3]}
    train, test = ds.split("train"), ds.split("test")
    assert train.x.shape == (20, 32, 32, 3) and test.x.shape == (4, 32, 32, 3) and train.x.dtype == np.uint8
    assert train.y.dtype == np.int64
    assert list(train.y) == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert list(test.y) == batches["test_batch"][1]
    # rows are channel-major: R plane, G plane, B plane, each 32 x 32 row by row
    row = batches["data_batch_1"][0][2]
    assert list(train.x[2, 0, 0]) == [row[0], row[1024], row[2048]]
    assert list(train.x[2, 1, 3]) == [row[35], row[1024 + 35], row[2048 + 35]]
    assert ds.normalization == prepared.channel_stats(train.x)


def test_cifar10_tarball_and_parent_folder_read_the_same(tmp_path):
    tar_path, _ = make_cifar_tar(tmp_path)
    from_tar = read_cifar10(tar_path, verify_md5=False)
    from_parent = read_cifar10(tmp_path / "src", verify_md5=False)  # the folder that holds cifar-10-batches-py/
    for split in ("train", "test"):
        assert np.array_equal(from_tar.splits[split].x, from_parent.splits[split].x)
        assert np.array_equal(from_tar.splits[split].y, from_parent.splits[split].y)
    assert from_tar.source["kind"] == "cifar10-tar" and from_tar.classes == CIFAR_NAMES


def test_cifar10_md5_mismatch(tmp_path):
    tar_path, _ = make_cifar_tar(tmp_path)
    with pytest.raises(UserError, match=r"cifar-10-python\.tar\.gz: md5 .* c58f30108f718f92721af3b95e74349a"):
        read_cifar10(tar_path)
    with pytest.raises(UserError, match=r"data_batch_1: md5 .* c99cafc152244af753f735de768cd75f; download"):
        read_cifar10(tmp_path / "src")


def test_cifar10_missing_batch(tmp_path):
    make_cifar_batches(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(UserError, match="data_batch_3 is missing"):
        read_cifar10(tmp_path, verify_md5=False)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_cifar10_corrupt_tar(tmp_path, damage):
    tar_path, _ = make_cifar_tar(tmp_path)
    raw = tar_path.read_bytes()
    tar_path.write_bytes(b"\x00" * 1000 if damage == "garbage" else raw[: len(raw) // 2])
    with pytest.raises(UserError) as err:
        read_cifar10(tar_path, verify_md5=False)
    assert "cifar-10-python.tar.gz" in str(err.value) and "\n" not in str(err.value)


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("pickled", ["reduce", "protocol0"])
def test_cifar10_pickle_cannot_run_code(tmp_path, pickled):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar_batches(folder)
    marker = tmp_path / "pwned"
    if pickled == "reduce":
        payload = pickle.dumps({b"data": RunsCode(marker), b"labels": []}, protocol=2)
    else:
        payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    (folder / "data_batch_2").write_bytes(payload)
    with pytest.raises(UserError, match=r"data_batch_2: refers to (os|posix)\.system"):
        read_cifar10(folder, verify_md5=False)
    assert not marker.exists()


def test_cifar10_corrupt_pickle(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar_batches(folder)
    (folder / "test_batch").write_bytes((folder / "test_batch").read_bytes()[:200])
    with pytest.raises(UserError, match="test_batch: not a readable CIFAR-10 batch"):
        read_cifar10(folder, verify_md5=False)


# ---------------------------------------------------------------- image folders

COLORS = {"bird": (200, 30, 30), "cat": (30, 200, 30), "dog": (30, 30, 200), "fox": (200, 200, 30)}


def save_image(path: Path, color=(0, 0, 0), size=(6, 8), mode="RGB", fmt=None) -> None:
    """A solid image of `size` (H, W) with one varying pixel, so images differ."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new(mode, (size[1], size[0]), color if mode == "RGB" else color[0])
    mark = zlib.crc32(path.name.encode()) % 256
    img.putpixel((0, 0), (mark,) * 3 if mode == "RGB" else mark)
    img.save(path, format=fmt)


def make_class_folder(root: Path, per_class: int = 10) -> Path:
    """<root>/<class>/*.png for bird, cat, dog, plus one corrupt image and files to ignore."""
    for cls in ("dog", "cat", "bird"):
        for i in range(per_class):
            save_image(root / cls / f"{i:03d}.PNG" if i == 0 else root / cls / f"{i:03d}.png", COLORS[cls])
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "cat" / ".hidden.png").write_bytes(b"junk")
    save_image(root / "__MACOSX" / "cat" / "._000.png", COLORS["cat"])
    (root / "README.txt").write_text("cats and dogs")
    return root


def zip_folder(folder: Path, zip_path: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(zip_path, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(folder).as_posix())
    return zip_path


def test_image_folder_class_layout(tmp_path):
    root = make_class_folder(tmp_path / "pets")
    ds = read_image_folder(root, "pets", val_fraction=0)
    assert ds.name == "pets" and ds.classes == ["bird", "cat", "dog"]
    assert list(ds.splits) == ["train"]
    train = ds.split("train")
    assert train.x.shape == (30, 6, 8, 3) and train.x.dtype == np.uint8 and train.y.dtype == np.int64
    assert ds.input_spec == {"kind": "image", "shape": [6, 8, 3]}
    assert np.bincount(train.y).tolist() == [10, 10, 10]
    for image, label, path in zip(train.x, train.y, train.extra["source_files"]):  # labels follow the folders
        assert path.split("/")[0] == ds.classes[label]
        assert tuple(image[3, 3]) == COLORS[ds.classes[label]]
    assert "cat/000.PNG" in train.extra["source_files"]  # extensions are case-insensitive
    assert [s["path"] for s in ds.skipped] == ["dog/broken.png"]
    assert "not a readable image" in ds.skipped[0]["reason"]
    assert ds.source["files"] == 31 and ds.source["layout"] == "<class>"
    assert ds.normalization == prepared.channel_stats(train.x)


def test_image_folder_holds_out_stratified_deterministic_val(tmp_path):
    root = make_class_folder(tmp_path / "pets")
    ds = read_image_folder(root, "pets", val_fraction=0.2, seed=3)
    train, val = ds.split("train"), ds.split("val")
    assert np.bincount(val.y).tolist() == [2, 2, 2] and np.bincount(train.y).tolist() == [8, 8, 8]
    assert not set(train.extra["source_files"]) & set(val.extra["source_files"])
    for image, path in zip(val.x, val.extra["source_files"]):  # a held-out sample traces back to its file
        assert np.array_equal(image, np.asarray(Image.open(root / path).convert("RGB")))
    again = read_image_folder(root, "pets", val_fraction=0.2, seed=3)
    for split in ("train", "val"):
        assert again.splits[split].x.tobytes() == ds.splits[split].x.tobytes()
        assert again.splits[split].extra["source_files"] == ds.splits[split].extra["source_files"]
    other_seeds = [read_image_folder(root, "pets", val_fraction=0.2, seed=s).split("val").extra["source_files"]
                   for s in (4, 5)]
    assert any(files != val.extra["source_files"] for files in other_seeds)
    assert ds.normalization == prepared.channel_stats(train.x)
    assert ds.source["held_out"] == {"split": "val", "from": "train", "fraction": 0.2, "seed": 3}


def test_image_zip_with_wrapper_reads_like_the_folder(tmp_path):
    root = make_class_folder(tmp_path / "pets")
    zip_path = zip_folder(root, tmp_path / "pets.zip", prefix="mydata/")
    from_zip = read_image_folder(zip_path, "pets", val_fraction=0.2)
    from_folder = read_image_folder(root, "pets", val_fraction=0.2)
    assert from_zip.classes == from_folder.classes and from_zip.source["wrapper"] == "mydata"
    assert from_zip.source["kind"] == "image-zip"
    for split in ("train", "val"):
        assert np.array_equal(from_zip.splits[split].x, from_folder.splits[split].x)
        assert np.array_equal(from_zip.splits[split].y, from_folder.splits[split].y)
        assert from_zip.splits[split].extra["source_files"] == [
            "mydata/" + p for p in from_folder.splits[split].extra["source_files"]]
    assert [s["path"] for s in from_zip.skipped] == ["mydata/dog/broken.png"]


def make_split_zip(tmp_path: Path) -> Path:
    """mydata/{train,validation,test}/<class>/*.jpg as JPEGs in a zip, with macOS litter."""
    root = tmp_path / "splits"
    layout = {"train": {"cat": 6, "dog": 4}, "validation": {"cat": 2, "dog": 2}, "test": {"cat": 1, "fox": 3}}
    for split, classes in layout.items():
        for cls, n in classes.items():
            for i in range(n):
                save_image(root / split / cls / f"{i}.jpg", COLORS[cls], size=(16, 16))
    whole = (root / "test" / "fox" / "0.jpg").read_bytes()
    (root / "test" / "fox" / "bad.jpg").write_bytes(whole[: len(whole) // 2])  # a download cut short
    zip_path = zip_folder(root, tmp_path / "splits.zip", prefix="mydata/")
    with zipfile.ZipFile(zip_path, "a") as zf:
        zf.writestr("__MACOSX/mydata/train/cat/._0.jpg", b"junk")
        zf.writestr("mydata/.DS_Store", b"junk")
    return zip_path


def test_image_zip_split_layout(tmp_path):
    ds = read_image_folder(make_split_zip(tmp_path), "animals")
    assert ds.classes == ["cat", "dog", "fox"]  # the union over all splits
    assert list(ds.splits) == ["train", "val", "test"]  # validation/ is val; nothing held out
    assert np.bincount(ds.split("train").y, minlength=3).tolist() == [6, 4, 0]
    assert np.bincount(ds.split("val").y, minlength=3).tolist() == [2, 2, 0]
    assert np.bincount(ds.split("test").y, minlength=3).tolist() == [1, 0, 3]
    assert ds.split("test").x.shape == (4, 16, 16, 3)
    assert ds.split("test").extra["source_files"][0] == "mydata/test/cat/0.jpg"
    assert ds.source["layout"] == "<split>/<class>" and "held_out" not in ds.source
    assert [s["path"] for s in ds.skipped] == ["mydata/test/fox/bad.jpg"]
    assert ds.skipped[0]["reason"].startswith("cannot decode")


def test_image_folder_grayscale_is_one_channel_and_mixed_is_rgb(tmp_path):
    for cls in ("a", "b"):
        for i in range(3):
            save_image(tmp_path / "gray" / cls / f"{i}.png", (90 if cls == "a" else 160,) * 3, mode="L")
    ds = read_image_folder(tmp_path / "gray", "gray", val_fraction=0)
    assert ds.split("train").x.shape == (6, 6, 8, 1) and len(ds.normalization["mean"]) == 1
    assert ds.split("train").x[0, 3, 3, 0] == 90

    save_image(tmp_path / "gray" / "b" / "colour.png", (10, 20, 30))
    mixed = read_image_folder(tmp_path / "gray", "mixed", val_fraction=0)
    x = mixed.split("train").x
    assert x.shape == (7, 6, 8, 3)
    assert tuple(x[0, 3, 3]) == (90, 90, 90)  # gray images become R = G = B


def test_image_folder_resizes_to_most_common_or_given_size(tmp_path):
    for i in range(3):
        save_image(tmp_path / "imgs" / "a" / f"{i}.png", COLORS["cat"], size=(6, 8))
    save_image(tmp_path / "imgs" / "b" / "big.png", COLORS["dog"], size=(12, 16))
    ds = read_image_folder(tmp_path / "imgs", "imgs", val_fraction=0)
    assert ds.split("train").x.shape == (4, 6, 8, 3) and ds.source["resized"] == 1
    assert ds.source["size"] == [6, 8]
    given = read_image_folder(tmp_path / "imgs", "imgs", val_fraction=0, size=(5, 7))  # (H, W)
    assert given.split("train").x.shape == (4, 5, 7, 3) and given.source["resized"] == 4


def test_image_folder_without_images(tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "notes.txt").write_text("no pictures")
    with pytest.raises(UserError) as err:
        read_image_folder(tmp_path / "empty", "empty")
    assert str(err.value) == (f"{tmp_path / 'empty'}: no images found; "
                              "expected <root>/<class>/*.png|jpg or <root>/<split>/<class>/*")


def test_image_folder_bad_sources(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        read_image_folder(tmp_path / "nowhere", "x")
    (tmp_path / "data.tar").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a folder or a .zip"):
        read_image_folder(tmp_path / "data.tar", "x")
    only_bad = tmp_path / "bad"
    (only_bad / "cat").mkdir(parents=True)
    (only_bad / "cat" / "x.png").write_bytes(b"nope")
    with pytest.raises(UserError, match="none of the 1 images could be read"):
        read_image_folder(only_bad, "x")


def test_round_trip_through_write_and_load(tmp_path):
    ds = read_image_folder(make_class_folder(tmp_path / "pets"), "pets", val_fraction=0.2)
    out = prepared.write(ds, tmp_path / "prepared")
    back = prepared.load(out, verify=True)
    assert back.name == "pets" and back.classes == ds.classes and back.input_spec == ds.input_spec
    assert back.normalization == ds.normalization and back.skipped == ds.skipped
    for split in ("train", "val"):
        assert np.array_equal(back.splits[split].x, ds.splits[split].x)
        assert np.array_equal(back.splits[split].y, ds.splits[split].y)
        assert back.splits[split].extra["source_files"] == ds.splits[split].extra["source_files"]

    mnist_dir = tmp_path / "mnist"
    make_mnist(mnist_dir)
    mnist = prepared.load(prepared.write(read_mnist(mnist_dir, verify_md5=False), tmp_path / "mnist-prepared"))
    assert mnist.split("test").x.shape == (10, 28, 28, 1) and mnist.classes[9] == "9"


def make_mixed_folder(root: Path, per_class: int = 40) -> Path:
    """3 classes x `per_class` random 48x48 colour PNGs, a gray one, one cut short (its header reads, its
    pixels do not) and one that is no image: with val held out, a late failure re-plans the split."""
    rng = np.random.default_rng(11)
    for cls in ("bird", "cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(root / cls / f"{i:03d}.png")
    Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(root / "cat" / "gray.png")
    whole = (root / "dog" / "000.png").read_bytes()
    (root / "dog" / "cut.png").write_bytes(whole[: len(whole) // 2])
    (root / "bird" / "junk.png").write_bytes(b"nope")
    return root


# what `prepare` wrote for make_mixed_folder before it streamed (the reader that held every image)
MIXED_DIGESTS = {
    "train": {"x": "55c85152bcd92fd1ed2618746fc907615bac1af00aa5d45d793c0c96250cf21a",
              "y": "6d1338f6966a41a100f4f0c4c753523913c0f2967a925b09595c7ec4f1f33e3a"},
    "val": {"x": "7c749936db82c9400b1556763138b7a60b4d5302ce07037342d96afd92941841",
            "y": "8dceb37014a91bc50c6a245f293ef58c8fd439ad375b8642686202496e886c2e"},
}
MIXED_NORMALIZATION = {"mean": [0.500798, 0.499583, 0.500499], "std": [0.28991, 0.289625, 0.289746]}


def test_prepare_holds_a_chunk_of_an_image_folder_and_writes_what_it_always_wrote(tmp_path, monkeypatch):
    import tracemalloc

    from perceiver_cli.data.sources import read_source  # what `perceiver prepare NAME --from FOLDER` reads with

    def prepare(per_class: int) -> tuple[int, dict]:
        root = tmp_path / f"pets{per_class}"
        if not root.exists():
            make_mixed_folder(root, per_class)
        prepared.write(read_source("pets", root, val_fraction=0.2, seed=1), tmp_path / "warm")  # imports, caches
        tracemalloc.start()
        try:
            dataset = read_source("pets", root, val_fraction=0.2, seed=1)
            out = prepared.write(dataset, tmp_path / f"out{per_class}")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert np.array_equal(dataset.split("val").x, prepared.load(out).split("val").x)  # the written arrays, mapped
        return peak, prepared.read_manifest(out)

    _, manifest = prepare(40)
    assert {split: info["sha256"] for split, info in manifest["splits"].items()} == MIXED_DIGESTS
    assert manifest["normalization"] == MIXED_NORMALIZATION
    assert {split: info["count"] for split, info in manifest["splits"].items()} == {"train": 97, "val": 24}
    assert [s["path"] for s in manifest["skipped"]] == ["bird/junk.png", "dog/cut.png"]
    assert manifest["skipped"][1]["reason"].startswith("cannot decode")  # found only when decoded: val re-planned

    monkeypatch.setattr(prepared, "CHUNK_ELEMENTS", 4 * 48 * 48 * 3, raising=False)  # chunks of 4 images
    few, manifest = prepare(40)
    assert {split: info["sha256"] for split, info in manifest["splits"].items()} == MIXED_DIGESTS  # chunks change no byte
    many, _ = prepare(160)
    more_images = 3 * (160 - 40) * 48 * 48 * 3
    assert many - few < more_images / 4, f"peak {few:,} -> {many:,} bytes for {more_images:,} bytes more of images"


def test_real_cifar10_jpg_zip():
    """All 50,000 real CIFAR-10 training JPEGs (about 15 s)."""
    zip_path = SHARED_DATA / "cifar10-jpg" / "train.zip"
    if not zip_path.is_file():
        pytest.skip(f"real CIFAR-10 JPEG zip not present at {zip_path}")
    ds = read_image_folder(zip_path, "cifar10", val_fraction=0.1, seed=0)
    assert ds.classes == CIFAR_NAMES and ds.skipped == []
    assert ds.input_spec["shape"] == [32, 32, 3] and ds.source["resized"] == 0
    train, val = ds.split("train"), ds.split("val")
    assert np.bincount(train.y).tolist() == [4500] * 10
    assert np.bincount(val.y).tolist() == [500] * 10
    assert len(train.extra["source_files"]) + len(val.extra["source_files"]) == 50000


# ---------------------------------------------------------------- sizes and images too large to decode

def test_prepare_a_size_whose_arrays_cannot_fit_is_refused_before_decoding(cli, workdir, image_folder, monkeypatch):
    import perceiver_cli.data.imagefolder as imagefolder

    def decoded(*args):  # a regression must not allocate 30 GB per image: it fails here instead
        raise AssertionError("decoded an image at a size whose arrays cannot fit")

    monkeypatch.setattr(imagefolder, "_decode", decoded)
    result = cli("prepare", "shapes", "--from", image_folder, "--size", "100000x100000")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    line, = result.stderr.splitlines()
    # prepare streams: what must fit is one chunk (here one image) and its statistics, not all 72
    assert line.startswith("error: --size 100000x100000: 1 image of 100000x100000x3 would need at least")
    assert "GiB of memory to prepare" in line and "give a smaller --size" in line
    assert not (workdir / "data").exists()


def test_a_negative_seed_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"^--seed -1: must be 0 or more$"):
        read_image_folder(make_class_folder(tmp_path / "pets"), "pets", seed=-1)


def test_the_size_check_says_which_size_fits(tmp_path, monkeypatch):
    import perceiver_cli.data.memory as memory

    root = make_class_folder(tmp_path / "pets")  # 31 images, the first in colour
    monkeypatch.setattr(memory, "available_bytes", lambda: 500_000)
    # streamed (as prepare reads): one chunk (here all 31) and its float64 statistics are held at once
    with pytest.raises(UserError, match=r"--size 64x64: 31 images of 64x64x3 would need at least 3.3 MiB") as info:
        read_image_folder(root, "pets", size=(64, 64), stream=True)
    height, width = (int(n) for n in re.search(r"\(about (\d+)x(\d+) fits\)", str(info.value)).groups())
    assert read_image_folder(root, "pets", size=(height, width), stream=True).input_spec["shape"] == [height, width, 3]
    # read into memory (eval --data): the images, once
    with pytest.raises(UserError, match=r"--size 128x128: 31 images of 128x128x3 would need at least 1.5 MiB"):
        read_image_folder(root, "pets", size=(128, 128))


def test_decompression_bombs_are_skipped_images_with_a_clear_reason(tmp_path, monkeypatch, recwarn):
    root = make_class_folder(tmp_path / "pets")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # PIL's limit, scaled down to the test's images
    save_image(root / "cat" / "warned.png", COLORS["cat"], size=(25, 25))  # 625 pixels: PIL only warns
    save_image(root / "dog" / "refused.png", COLORS["dog"], size=(40, 40))  # 1,600: PIL raises
    ds = read_image_folder(root, "pets", val_fraction=0)
    reasons = {item["path"]: item["reason"] for item in ds.skipped}
    assert reasons["cat/warned.png"] == "625 pixels, more than the 500 an image may have (a decompression bomb?); not decoded"
    assert reasons["dog/refused.png"].startswith("1,600 pixels, more than the 500")
    assert len(ds.split("train").y) == 30
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
