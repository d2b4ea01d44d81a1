"""`perceiver prepare DATASET`: one subcommand per dataset, each with only the options its reader takes;
any other name is a labelled image folder or zip of the user's own (the NAME subcommand)."""

from __future__ import annotations

import difflib
import re
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UserError
from . import tables
from .errors import click_errors, user_errors

IMAGE_FOLDER = "NAME"  # the subcommand that stands for every name that is not a known dataset


class DatasetGroup(typer.core.TyperGroup):
    """A name that is not a known dataset is the name of the user's own image folder dataset, unless
    it is a near miss of a known one (`cifr10`): that is a typo, said so; `prepare imagefolder --name`
    still prepares a folder under any name."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.suggest_commands = False  # typer's "Did you mean" would repeat what get_command says

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None and not name.startswith("-"):
            known = [n for n in super().list_commands(ctx) if n not in (IMAGE_FOLDER, "imagefolder")]
            near = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.75)
            if near and name.lower() != near[0]:
                raise click_errors.UsageError(
                    f"'{name}' is not a dataset perceiver knows: did you mean `perceiver prepare {near[0]}`? "
                    f"For an image folder of your own under that name: "
                    f"`perceiver prepare imagefolder --name {name} --from <folder or zip>`", ctx)
            return super().get_command(ctx, IMAGE_FOLDER)
        return command


class DatasetCommand(typer.core.TyperCommand):
    """An option that another dataset takes is refused naming that dataset, not as a typo."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click_errors.NoSuchOption as exc:
            group = ctx.parent.command
            takers = [name for name in group.list_commands(ctx)
                      if any(exc.option_name in param.opts for param in group.get_command(ctx, name).params)]
            if not takers:
                raise
            shown = [f"`prepare {name}`" + (" (an image folder)" if name == IMAGE_FOLDER else "") for name in takers]
            where = f"{shown[0]} only" if len(shown) == 1 else ", ".join(shown)
            raise click_errors.UsageError(f"{exc.option_name} applies to {where}, not to {ctx.info_name}", ctx) from None


app = typer.Typer(
    cls=DatasetGroup,
    name="prepare",
    help="Read a dataset once into compact arrays + manifest.json under data/<dataset>/ (atomically).\n\n"
         "Each dataset below takes its own options (e.g. `perceiver prepare akoa --help`); any other name reads a "
         "labelled image folder or zip of your own, e.g. `perceiver prepare flowers --from my_photos.zip --size 64x64`.",
    subcommand_metavar="DATASET [OPTIONS]",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

# options several datasets share, with the same meaning. A negative --seed is refused by the readers
# (data.prepared.check_seed), in their words, so no min= here
Out = Annotated[Optional[Path], typer.Option("--out", help="Where to write the prepared dataset.  \\[default: data/<dataset>]")]
ValFraction = Annotated[float, typer.Option("--val-fraction", min=0.0, max=0.9, help="Image folders with a train split only: share of each class held out as the val split.")]
TestFraction = Annotated[float, typer.Option("--test-fraction", min=0.0, max=0.9, help="Image folders with a train split only: share of each class held out as a test split, which training never sees (eval scores it).")]
ImageSeed = Annotated[int, typer.Option("--seed", help="Seed of the held-out val split (image folders).")]
ImageSize = Annotated[Optional[str], typer.Option("--size", help="Image folders: resize every image to HEIGHTxWIDTH.  \\[default: the most common size]")]


def parse_size(size: Optional[str]) -> Optional[tuple[int, int]]:
    if size is None:
        return None
    match = re.fullmatch(r"(\d+)[x×](\d+)", size.strip())
    if not match:
        raise UserError(f"--size {size!r}: expected HEIGHTxWIDTH, e.g. 32x32")
    return int(match.group(1)), int(match.group(2))


def parse_slices(slices: str) -> Optional[int]:
    """--slices N or 'all' (None)."""
    if slices.strip().lower() == "all":
        return None
    if slices.strip().isdigit():
        return int(slices)
    raise UserError(f"--slices {slices!r}: give a number of slices per volume or 'all'")


def parse_split(split: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in split.split(","))
    except ValueError:
        raise UserError(f"--split {split!r}: give three shares train,val,test, e.g. 0.7,0.15,0.15") from None


def _set_slicing(options, slices: Optional[str], size: Optional[str], split: Optional[str]) -> None:
    """The options akoa and knee-seg share, where given, into their reader's options."""
    if slices is not None:
        options.slices = parse_slices(slices)
    if size is not None:
        options.size = parse_size(size)
    if split is not None:
        options.split = parse_split(split)


def _prepare(dataset: str, source: Optional[Path], out: Optional[Path], **reading) -> None:
    """Read `source` with the dataset's reader and write it to `out` atomically; print what was prepared."""
    from ..data import prepared
    from ..data.sources import DOWNLOADS, default_root, download, read_source

    out = out or default_root(dataset)
    prepared.check_target(out)  # leftovers of killed prepares tidied, a foreign --out refused: before the long read
    if source is None and dataset in DOWNLOADS:
        source = download(dataset, Path("data") / "downloads" / dataset)
    started = time.perf_counter()
    result = read_source(dataset, source, **reading)
    prepared.write(result, out)
    tables.prepared(result, out, time.perf_counter() - started)


@app.command("digits", cls=DatasetCommand)
@user_errors("prepare")
def digits(out: Out = None):
    """scikit-learn's 1,797 8×8 digits (embedded: nothing to fetch; train also reads them unprepared)."""
    _prepare("digits", None, out)


@app.command("mnist", cls=DatasetCommand)
@user_errors("prepare")
def mnist(
    source: Optional[Path] = typer.Option(None, "--from", help="Folder of the four idx .gz files (md5s checked).  \\[default: downloaded when the network allows]"),
    out: Out = None,
):
    """MNIST's 70,000 28×28 digits from the idx .gz files."""
    _prepare("mnist", source, out)


@app.command("cifar10", cls=DatasetCommand)
@user_errors("prepare")
def cifar10(
    source: Optional[Path] = typer.Option(None, "--from", help="cifar-10-python.tar.gz, cifar-10-batches-py/ (md5s checked) or an image folder/zip (<split>/<class>/*).  \\[default: downloaded when the network allows]"),
    out: Out = None,
    val_fraction: ValFraction = 0.1,
    test_fraction: TestFraction = 0.0,
    seed: ImageSeed = 0,
    size: ImageSize = None,
):
    """CIFAR-10's 60,000 32×32 images (--val-fraction, --test-fraction, --seed and --size apply when --from is an image folder)."""
    _prepare("cifar10", source, out, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, size=parse_size(size))


@app.command("modelnet40", cls=DatasetCommand)
@user_errors("prepare")
def modelnet40(
    source: Optional[Path] = typer.Option(None, "--from", help="ModelNet40.zip or its extracted ModelNet40/ (<class>/{train,test}/*.off)."),
    out: Out = None,
    seed: int = typer.Option(0, "--seed", help="Seed of the point sampling."),
    points: int = typer.Option(2048, "--points", min=1, help="Points sampled on each mesh's surface."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Worker processes.  \\[default: one per CPU core]"),
):
    """ModelNet40's meshes sampled into point clouds."""
    _prepare("modelnet40", source, out, seed=seed, points=points, workers=workers)


class SplitBy(str, Enum):
    patient = "patient"
    volume = "volume"


@app.command("akoa", cls=DatasetCommand)
@user_errors("prepare")
def akoa(
    source: Optional[Path] = typer.Option(None, "--from", help="A folder or zip of NIfTI volumes (.nii, .nii.gz) and/or AKOA PNG slices."),
    out: Out = None,
    seed: int = typer.Option(0, "--seed", help="Seed of the patient split."),
    size: Optional[str] = typer.Option(None, "--size", help="Resize every slice to HEIGHTxWIDTH.  \\[default: 228x260]"),
    labels: Optional[Path] = typer.Option(None, "--labels", help="CSV with columns file,label and optionally patient,visit; wins over the file name."),
    pattern: Optional[str] = typer.Option(None, "--pattern", help="Regex with named groups patient, label, visit, searched in each file name, e.g. '(?P<patient>\\d+)_(?P<visit>\\d+m)_'.  \\[default: AKOA naming, OAI<patient>_<visit>_..._LEFT|RIGHT]"),
    slices: Optional[str] = typer.Option(None, "--slices", help="Evenly spaced slices per NIfTI volume, or 'all'.  \\[default: 40]"),
    axis: Optional[int] = typer.Option(None, "--axis", min=0, max=2, help="Cut NIfTI volumes along this voxel axis.  \\[default: the sagittal axis, from the affine]"),
    split: Optional[str] = typer.Option(None, "--split", help="Shares of train,val,test.  \\[default: 0.7,0.15,0.15]"),
    split_by: Optional[SplitBy] = typer.Option(None, "--split-by", help="Keep every slice of a patient (all visits, both knees) in one split, or only of a volume (a looser split: the knees of one patient may land in different splits).  \\[default: patient]"),
):
    """Knee MRI (AKOA, OAI): volumes cut into slices, labelled left/right, split by patient."""
    from ..data.akoa import AkoaOptions

    options = AkoaOptions(labels=labels, pattern=pattern, axis=axis, seed=seed)
    _set_slicing(options, slices, size, split)
    if split_by is not None:
        options.split_by = split_by.value
    _prepare("akoa", source, out, seed=seed, akoa=options)


@app.command("knee-seg", cls=DatasetCommand)
@user_errors("prepare")
def knee_seg(
    labels: Optional[Path] = typer.Option(None, "--labels", help="Folder (or zip) of NIfTI label maps (.nii, .nii.gz): one integer label per voxel, 0 the background."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder (or zip) of their MR images. A map belongs to the image of the same file name, else to the one whose name (without .nii/.nii.gz) it contains or that contains it, the closest in length (9014797_00m.nii.gz <- 9014797_00m_seg.nii.gz)."),
    synthesize: int = typer.Option(0, "--synthesize", min=0, help="SynthSeg images made per label map (random intensity per label, blur, bias field, noise, contrast), beside the real image if any; without --images the only images."),
    out: Out = None,
    pattern: Optional[str] = typer.Option(None, "--pattern", help="Regex with named groups patient (and visit), searched in each file name.  \\[default: OAI naming, <patient>_<visit>_... as 9014797_00m_WB01_..., or OAI<patient>_...]"),
    slices: Optional[str] = typer.Option(None, "--slices", help="Evenly spaced sagittal slices per volume, between the first and last slice holding a label (background-only edge slices teach nothing), or 'all' of those.  \\[default: 40]"),
    size: Optional[str] = typer.Option(None, "--size", help="Resize every slice to HEIGHTxWIDTH (images bilinear, label maps nearest).  \\[default: 128x128]"),
    split: Optional[str] = typer.Option(None, "--split", help="Shares of train,val,test, whole patients at a time; 0,0,1 makes all test (to evaluate a run on other patients).  \\[default: 0.7,0.15,0.15]"),
    seed: int = typer.Option(0, "--seed", help="Seed of the patient split and of the synthetic images."),
    names: Optional[str] = typer.Option(None, "--names", help="Names of the label values 0,1,... comma separated, the first 'background', e.g. background,femur,tibia; a value without a name is refused.  \\[default: background and label_<v> for every value found]"),
):
    """Knee MRI segmentation: NIfTI label maps with their images (or SynthSeg images made from them), sliced, split by patient."""
    from ..data.kneeseg import KneeSegOptions

    options = KneeSegOptions(labels=labels, images=images, pattern=pattern, seed=seed, synthesize=synthesize)
    _set_slicing(options, slices, size, split)
    if names is not None:
        options.names = [name.strip() for name in names.split(",")]
    _prepare("knee-seg", None, out, seed=seed, kneeseg=options)


@app.command("text", cls=DatasetCommand)
@user_errors("prepare")
def text(
    source: Optional[Path] = typer.Option(None, "--from", help="A text file, or a folder or zip of them.  \\[default: the Python standard library's own .py files]"),
    out: Out = None,
    glob: str = typer.Option("*", "--glob", help="Read the files whose names match this pattern, e.g. '*.txt'.  \\[default: every file; *.py for the standard library]"),
    split: Optional[str] = typer.Option(None, "--split", help="Shares of train,val,test by bytes, whole files at a time (a single file: cut in order).  \\[default: 0.9,0.05,0.05]"),
    seed: int = typer.Option(0, "--seed", help="Seed of the split by file."),
):
    """Text as bytes for causal_lm: one byte stream per split, split by file, the files' boundaries in the manifest."""
    from ..data.text import TextOptions

    options = TextOptions(glob=glob, seed=seed)
    if split is not None:
        options.split = parse_split(split)
    _prepare("text", source, out, text=options)


FolderSource = Annotated[Optional[Path], typer.Option("--from", help="An image folder or zip: <root>/<class>/* or <root>/<split>/<class>/* (splits train, val/validation, test).")]


@app.command(IMAGE_FOLDER, cls=DatasetCommand)
@user_errors("prepare")
def image_folder(ctx: typer.Context, source: FolderSource = None, out: Out = None, val_fraction: ValFraction = 0.1,
                 test_fraction: TestFraction = 0.0, seed: ImageSeed = 0, size: ImageSize = None):
    """Any other name: your own labelled image folder or zip, prepared under that name (data/NAME/)."""
    _prepare(ctx.info_name, source, out, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
             size=parse_size(size))


@app.command("imagefolder", cls=DatasetCommand)
@user_errors("prepare")
def named_image_folder(
    name: str = typer.Option(..., "--name", help="The dataset's name: data/NAME/, and data.dataset in a recipe."),
    source: FolderSource = None, out: Out = None, val_fraction: ValFraction = 0.1, test_fraction: TestFraction = 0.0,
    seed: ImageSeed = 0, size: ImageSize = None,
):
    """Your own labelled image folder or zip under any --name (also one close to a known dataset's)."""
    _prepare(name, source, out, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
             size=parse_size(size))
