"""The recipe: a YAML file with sections task, model, data, optim, train, loaded into typed config objects.

Each value has exactly one home: its type, default and help live here, and a task's own keys (its
`task:` section) in its file under tasks/. `--set a.b=value` overrides are parsed as YAML scalars
and validated like the file. Unknown keys name the nearest valid key.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from .errors import UserError
from .section import Section
from .tasks import TASKS


def _shipped_recipes_dir() -> Path:
    """Where the shipped recipes are: inside the installed package (a wheel carries them as
    perceiver_cli/recipes/, see setup.py), else recipes/ at the root of a checkout (an editable install)."""
    from importlib.resources import files

    packaged = files("perceiver_cli") / "recipes"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "recipes"


RECIPES_DIR = _shipped_recipes_dir()
DEFAULT_RECIPE = "digits.yaml"


Beta = Annotated[float, Field(ge=0, lt=1)]  # an Adam/LAMB moment decay rate


class ModelConfig(Section):
    num_latents: int = Field(64, gt=0, description="N, rows of the latent array")
    latent_dim: int = Field(128, gt=0, description="D, channels of each latent")
    cross_attends: int = Field(1, gt=0, description="how many times the latents cross-attend to the input")
    latent_blocks: int = Field(4, gt=0, description="self-attention blocks in the latent Transformer after each cross-attend")
    cross_heads: int = Field(1, gt=0, description="heads of the cross-attention (paper: 1)")
    latent_heads: int = Field(8, gt=0, description="heads of the latent self-attention")
    cross_head_dim: Optional[int] = Field(None, gt=0, description="channels per cross-attention head (default latent_dim / cross_heads)")
    latent_head_dim: Optional[int] = Field(None, gt=0, description="channels per self-attention head (default latent_dim / latent_heads)")
    activation: Literal["gelu", "geglu"] = Field("gelu", description="MLP non-linearity")
    widening_factor: int = Field(4, gt=0, description="MLP hidden channels = widening_factor * dim")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout after attention and MLP outputs")
    attention_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on attention weights")
    share_weights: bool = Field(True, description="cross-attends after the first share weights; latent Transformers share (paper)")
    share_first_latent: bool = Field(True, description="with share_weights: the first latent Transformer is shared too (paper); false gives the first cross-attend + latent Transformer block its own weights and the later blocks one shared set (lucidrains' weight_tie_layers)")
    position_encoding: Literal["fourier", "learned"] = Field("fourier", description="how positions are given to the model")
    num_bands: int = Field(6, gt=0, description="Fourier frequency bands per axis")
    max_freq: float = Field(10.0, gt=0, description="Fourier maximum frequency (Nyquist of the grid, e.g. its size)")
    learned_dim: int = Field(64, gt=0, description="channels of a learned position encoding")
    patch_size: int = Field(1, gt=0, description="images: 1 = one token per pixel (paper); p > 1 = one token per p x p patch (Perceiver IO)")
    conv_stem: int = Field(0, ge=0, description="images: 0 = off (paper); k > 0 = conv 3x3 to k channels + GELU + maxpool 2 before tokenising (Perceiver IO)")
    conv_stem_stages: int = Field(1, ge=1, le=4, description="images with conv_stem: stages of conv 3x3 + maxpool 2, channels doubling from conv_stem; past 1, each conv is followed by BatchNorm (tokens then cover 2^stages x patch_size pixels)")
    permute_pixels: bool = Field(False, description="apply one fixed, seeded permutation to the input positions")
    permute_seed: int = Field(42, ge=0, description="seed of that permutation")
    output: Literal["mean", "cls", "query"] = Field("mean", description="classify: mean over latents (paper), a CLS latent, or a Perceiver IO query")
    decoder_dim: Optional[int] = Field(None, gt=0, description="segment/masked_image: channels of the output queries of the Perceiver IO decoder (default latent_dim)")
    decoder_heads: int = Field(1, gt=0, description="segment/masked_image: heads of the decoder's cross-attention to the latents")
    decoder_chunk: Optional[int] = Field(None, gt=0, description="segment/masked_image: decode this many output queries at a time (the same outputs in less memory, e.g. a large mask at inference); null = all at once")


# the `task:` section: the keys of the task its `name` gives (each task's own, in tasks/)
TaskSection = Annotated[Union[tuple(task.Config for task in TASKS.values())], Field(discriminator="name")]
DEFAULT_TASK = "classify"


class AugmentConfig(Section):
    random_crop_padding: int = Field(0, ge=0, description="pad by this many pixels and crop back at random (a random shift); 0 = off")
    padding_mode: Literal["reflect", "zeros"] = Field("reflect", description="what the crop and the affine augmentation fill in from outside the image: mirrored pixels, or black (digits on a black background)")
    horizontal_flip: bool = Field(False, description="flip images left-right with probability 0.5")
    affine_degrees: float = Field(0.0, ge=0, le=180, description="images: rotate each by a random angle in [-d, d] degrees (bilinear, sub-pixel); 0 = off")
    affine_scale: float = Field(0.0, ge=0, lt=1, description="images: scale each by a random factor in [1 - s, 1 + s]; 0 = off")
    affine_translate: float = Field(0.0, ge=0, le=0.5, description="images: shift each by up to this fraction of its size, in sub-pixel steps; 0 = off")
    mixup: float = Field(0.0, ge=0, description="mix pairs of training samples and their labels with a Beta(a, a) weight (Zhang et al. 2018); a = this value, 0 = off")
    point_scale: Optional[tuple[float, float]] = Field(None, description="points: scale each point by its own random factor in [low, high] (paper: [0.99, 1.01]); null = off")
    rotate: bool = Field(False, description="points: rotate each cloud by a random angle about the up axis")
    up_axis: Literal["x", "y", "z"] = Field("z", description="points: the up axis for rotate (ModelNet40's OFF files: z)")
    translate: float = Field(0.0, ge=0, description="points: shift each cloud by a random offset in [-t, t] per axis; 0 = off")
    jitter: float = Field(0.0, ge=0, description="points: add Gaussian noise of this std to every coordinate (clipped at 5 std); 0 = off")
    point_dropout: float = Field(0.0, ge=0, lt=1, description="points: replace a random share (up to this fraction) of each cloud's points by copies of its other points; 0 = off")

    @field_validator("point_scale")
    @classmethod
    def _scale_range(cls, value):
        if value is not None and not 0 < value[0] <= value[1]:
            raise ValueError("give [low, high] with 0 < low <= high, e.g. [0.99, 1.01]")
        return value


class DataConfig(Section):
    dataset: str = Field("digits", description="name of the prepared dataset (digits, mnist, cifar10, or your own)")
    root: Optional[str] = Field(None, description="prepared dataset directory (default data/<dataset>; digits needs none)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of train carved out (seeded) as validation when the data has no val split")
    residency: Literal["auto", "device", "host", "stream"] = Field("auto", description="where training data lives: device = the whole dataset on the training device (fastest); stream = memory-mapped from the prepared files, each batch gathered by background threads (pinned, prefetched), for data larger than memory; host = streamed from the same files; auto = device when the data takes at most half the free device memory, else stream (train.log says which)")
    num_points: Optional[int] = Field(None, gt=0, description="points: use this many of the prepared points per cloud (a random subset per training step, the first ones in evaluation); null = all")
    point_scaling: Literal["sphere", "cube"] = Field("sphere", description="points: unit sphere (as prepared) or unit cube (max |coordinate| = 1, the paper's choice)")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="training augmentations")


class OptimConfig(Section):
    name: Literal["adamw", "adam", "sgd", "lamb"] = Field("adamw", description="optimiser")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="weight decay (decoupled for adamw/lamb)")
    betas: tuple[Beta, Beta] = Field((0.9, 0.999), description="Adam/LAMB betas, each in [0, 1)")
    momentum: float = Field(0.9, ge=0, description="SGD momentum")
    scheduler: Literal["constant", "cosine", "multistep", "step", "exponential"] = Field("constant", description="learning-rate schedule (per epoch, smooth per step for cosine)")
    warmup_epochs: float = Field(0.0, ge=0, description="linear warmup from 0, in epochs (fractions allowed)")
    milestones: list[int] = Field(default_factory=list, description="multistep: epochs at which lr is multiplied by gamma")
    step_size: int = Field(30, gt=0, description="step: multiply lr by gamma every step_size epochs")
    gamma: float = Field(0.1, gt=0, description="multistep/step/exponential decay factor")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine: final lr as a fraction of lr")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing")
    grad_clip: Optional[float] = Field(None, gt=0, description="clip the gradient norm to this value")


class TrainConfig(Section):
    epochs: int = Field(10, gt=0, description="training epochs")
    batch_size: int = Field(64, gt=0, description="samples per optimizer step, over all ranks together (the global batch: each of N ranks takes batch_size / N)")
    grad_accum: int = Field(1, gt=0, description="split each rank's share of a batch into this many forward/backward passes before the optimizer step (less memory, the same training)")
    eval_batch_size: int = Field(256, gt=0, description="samples per evaluation step")
    seed: int = Field(0, ge=0, description="seed for initialisation, data split, shuffling and augmentation")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when available")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto = bf16 autocast on CUDA and on CPUs with bf16 matrix units, else fp32")
    compile: bool = Field(False, description="torch.compile the model (the first steps compile it; bench reports that time apart)")
    cuda_graphs: bool = Field(True, description="on CUDA, capture the training forward and backward once and replay them as CUDA graphs: one launch instead of thousands of small ones per step (ignored on CPU and with activation_checkpointing)")
    activation_checkpointing: bool = Field(False, description="recompute each block's activations in the backward pass instead of storing them: less memory for very large inputs, about a third more compute")
    checkpoint_every_steps: Optional[int] = Field(None, gt=0, description="also write checkpoints/last.pt every this many steps inside an epoch, with the position in it, so that a run killed mid-epoch resumes at the batch it had reached; null = after each epoch only (under torchrun: every 100 steps)")
    save_attention_maps: bool = Field(False, description="capture the cross-attention of a fixed probe batch (a few validation samples per class) into attention/epoch_NNNN.npz")
    attention_interval: int = Field(10, gt=0, description="capture every this many epochs (and after the last one)")
    attention_samples: int = Field(2, gt=0, description="probe samples per class for the attention captures")
    tensorboard: bool = Field(False, description="also write TensorBoard scalars (and attention images) into the run directory: tensorboard --logdir runs/ (the same as tensorboard in train.loggers)")
    loggers: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(default_factory=list, description="experiment trackers that also get the run: the training loss and learning rate every 10 steps, every epoch's metrics and the best checkpoint; tensorboard (events in the run directory, attention images too), mlflow (a file store in runs/<name>/mlruns unless MLFLOW_TRACKING_URI is set; pip install 'perceiver-cli[mlflow]'), wandb (offline into runs/<name>/wandb unless WANDB_MODE is set; pip install 'perceiver-cli[wandb]'), e.g. [tensorboard, mlflow]")
    ema_decay: Optional[float] = Field(None, gt=0, lt=1, description="keep an exponential moving average of the weights (e.g. 0.99, updated every step); validation, best.pt/last.pt and perceiver eval use the averaged weights, resume continues both")
    best_metric: Optional[str] = Field(None, description="which epoch best.pt (what perceiver eval reads) keeps: a validation figure of the task's epoch row (classify: val_accuracy or val_loss; segment: val_dice, val_accuracy or val_loss; masked_image: val_loss), or last = simply the last epoch (for a small val split under a schedule that decays to zero, where the best val score often falls on an early epoch by chance); null = the task's own choice (the first of those)")
    init: Optional[str] = Field(None, description="start from another run's weights (runs/<name> or a .pt): every parameter of the encoder (and any other part) whose name and shape match is loaded, e.g. a masked_image run's encoder to fine-tune a classifier")
    name: Optional[str] = Field(None, description="run name (default: the recipe's file name); runs/<name>, suffixed -2, -3 ... if taken")
    runs_dir: str = Field("runs", description="where run directories are created")

    @field_validator("loggers", mode="before")
    @classmethod
    def _one_logger(cls, value):
        """--set train.loggers=mlflow (or mlflow,wandb) means the list of those."""
        return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value

    def trackers(self) -> list[str]:
        """The loggers the run writes to, each once: train.loggers, and tensorboard when train.tensorboard asks."""
        return list(dict.fromkeys((["tensorboard"] if self.tensorboard else []) + list(self.loggers)))


class Recipe(Section):
    task: TaskSection = Field(default_factory=lambda: TASKS[DEFAULT_TASK].Config())
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="before")
    @classmethod
    def _task_section(cls, data):
        """A task section without a name is classify's; one key of another task's is named as such."""
        task = data.get("task") if isinstance(data, dict) else None
        if not isinstance(task, dict):
            return data
        name = task.get("name", DEFAULT_TASK)
        if name not in TASKS:
            raise ValueError(f"task.name={name!r} is not a task; known: {', '.join(TASKS)}")
        own = TASKS[name].Config.model_fields
        for key in task:
            if key not in own:
                owners = [other for other, t in TASKS.items() if key in t.Config.model_fields]
                raise ValueError(f"task.{key} is a key of task.name={' / '.join(owners) or '?'}, and this recipe's "
                                 f"task.name is {name}: drop it, or set task.name")
        return {**data, "task": {**task, "name": name}}

    @model_validator(mode="after")
    def _task_defaults(self):
        """best.pt keeps what the task measures best, unless the recipe says otherwise."""
        choices = TASKS[self.task.name].best_metrics
        if self.train.best_metric is None:
            object.__setattr__(self.train, "best_metric", next(iter(choices)))
        elif self.train.best_metric != "last" and self.train.best_metric not in choices:
            raise ValueError(f"train.best_metric={self.train.best_metric}: a task.name={self.task.name} run measures "
                             f"{', '.join(choices)}; use one of them or last")
        return self

    @model_validator(mode="after")
    def _heads_divide(self):
        m = self.model
        for heads, head_dim, what in ((m.cross_heads, m.cross_head_dim, "cross"), (m.latent_heads, m.latent_head_dim, "latent")):
            if head_dim is None and m.latent_dim % heads:
                raise ValueError(
                    f"model.latent_dim={m.latent_dim} is not divisible by model.{what}_heads={heads}; "
                    f"set model.{what}_head_dim"
                )
        return self

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


# --- loading -------------------------------------------------------------------------------------

def _known_keys(model: type[BaseModel], prefix: str = "") -> dict[str, type[BaseModel] | None]:
    """Every dotted key of the schema -> its sub-model (for sections) or None (for values)."""
    keys = {}
    for name, field in model.model_fields.items():
        sub = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) else None
        keys[prefix + name] = sub
        if sub is not None:
            keys.update(_known_keys(sub, prefix + name + "."))
    return keys


KNOWN_KEYS = {key: sub for key, sub in _known_keys(Recipe).items()}
KNOWN_KEYS["task"] = TASKS[DEFAULT_TASK].Config
for _task in TASKS.values():
    KNOWN_KEYS.update(_known_keys(_task.Config, "task."))


def _nearest_key(key: str) -> str | None:
    """The known key a mistyped one most likely means, matched on its last part within its section
    first ('optim.learning_rate' -> 'optim.lr' by initials, 'model.latents' -> 'model.num_latents'),
    then on the whole key ('trian.epochs' -> 'train.epochs'), then on the last part anywhere."""
    section, _, leaf = key.rpartition(".")
    siblings = {k.rsplit(".", 1)[-1]: k for k in KNOWN_KEYS if k.rpartition(".")[0] == section and "." in k}
    initials = "".join(word[0] for word in leaf.split("_") if word)
    if len(leaf.split("_")) > 1 and initials in siblings:
        return siblings[initials]
    near = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
    if near:
        return siblings[near[0]]
    close = difflib.get_close_matches(key, KNOWN_KEYS, n=1, cutoff=0.5)
    if close:
        return close[0]
    leaves = {k.rsplit(".", 1)[-1]: k for k in KNOWN_KEYS}
    near = difflib.get_close_matches(leaf, leaves, n=1, cutoff=0.5)
    return leaves[near[0]] if near else None


def keys_ending_in(leaf: str) -> list[str]:
    """The recipe keys (not sections) whose last part is `leaf`: 'epochs' -> ['train.epochs']."""
    return [key for key, sub in KNOWN_KEYS.items() if sub is None and key.rsplit(".", 1)[-1] == leaf]


def _unknown_key_error(key: str, source: str) -> UserError:
    nearest = _nearest_key(key)
    hint = f"; did you mean '{nearest}'?" if nearest else f"; valid sections: {', '.join(Recipe.model_fields)}"
    return UserError(f"{source}: unknown key '{key}'{hint}")


def _check_keys(data: dict, source: str, prefix: str = "") -> None:
    for key, value in data.items():
        dotted = prefix + str(key)
        if dotted not in KNOWN_KEYS:
            raise _unknown_key_error(dotted, source)
        if KNOWN_KEYS[dotted] is not None:
            if not isinstance(value, dict):
                raise UserError(f"{source}: '{dotted}' is a section and needs keys under it, got {value!r}")
            _check_keys(value, source, dotted + ".")


def apply_override(data: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise UserError(f"--set '{assignment}': expected KEY=VALUE, e.g. --set optim.lr=5e-4")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    if key not in KNOWN_KEYS:
        raise _unknown_key_error(key, "--set")
    if KNOWN_KEYS[key] is not None:
        raise UserError(f"--set {key}: '{key}' is a section; set one of its keys, e.g. {key}.{next(iter(KNOWN_KEYS[key].model_fields))}=...")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: '{part}' in the recipe is not a section")
    node[parts[-1]] = value


def _describe_type(field_error: dict) -> str:
    msg = field_error["msg"].removeprefix("Value error, ")
    return msg[0].lower() + msg[1:] if msg else "invalid value"


def validate(data: dict, source: str, overridden: frozenset[str] = frozenset()) -> Recipe:
    """A Recipe from nested dicts. An invalid value is named with where it came from: `source`,
    or `source (with --set)` when its key is one of the `overridden` ones."""
    _check_keys(data, source)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        parts = [str(p) for p in err["loc"] if not isinstance(p, int)]
        if parts[:1] == ["task"] and len(parts) > 2 and parts[1] in TASKS:
            del parts[1]  # the union's tag: task.segment.output_stride is task.output_stride
        loc = ".".join(parts)
        if not loc:  # model-level check
            raise UserError(f"{source}: {err['msg'].removeprefix('Value error, ')}") from None
        value = _value_at(data, loc.split("."), err.get("input"))
        where = f"{source} (with --set)" if loc in overridden else source
        raise UserError(f"{where}: {loc}={value!r} is invalid: {_describe_type(err)}") from None


def _value_at(data: dict, keys: list[str], fallback):
    """The whole value of the key an error points into (betas=[2, 3], not just its 2)."""
    node = data
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return fallback
        node = node[key]
    return node


class _RecipeLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error: YAML keeps the
    last one silently, so a `train:` section written twice would drop the first one's keys unseen."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' appears twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); keep one",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _read_recipe_file(path: Path) -> dict:
    if path.is_dir():
        raise UserError(f"{path} is a directory; give a recipe YAML file (e.g. {path / 'recipe.yaml'}) or the name of a shipped recipe")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read recipe: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark from a Windows editor is fine
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                        f"a recipe is a YAML text file: save it as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_RecipeLoader)  # a SafeLoader: no tags that build Python objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise UserError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        raise UserError(f"{path} is empty: write the keys to change (e.g. 'train: {{epochs: 5}}'), "
                        f"or run `perceiver train` without a recipe for the defaults")
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe is a mapping with sections model, data, optim, train; got {type(data).__name__}")
    return data


def resolve_path(recipe: str | Path | None) -> Path:
    """A recipe argument -> file: a path, or the name of a shipped recipe (with or without .yaml)."""
    if recipe is None:
        return RECIPES_DIR / DEFAULT_RECIPE
    path = Path(recipe)
    if path.exists():  # a folder given as a recipe is refused by name when read
        return path
    for candidate in (RECIPES_DIR / path.name, RECIPES_DIR / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate
    names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    near = difflib.get_close_matches(path.stem, names, n=1, cutoff=0.6)
    hint = f"did you mean '{near[0]}'? " if near else ""
    raise UserError(f"recipe '{recipe}' not found: {hint}give a YAML file path or one of the shipped recipes "
                    f"({', '.join(names)}; `perceiver recipes` describes them)")


def load_recipe(recipe: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> tuple[Recipe, Path]:
    path = resolve_path(recipe)
    data = read_with_bases(path)
    _check_keys(data, str(path))
    for assignment in overrides:
        apply_override(data, assignment)
    return validate(data, str(path), overridden_keys(overrides)), path


def read_with_bases(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """A recipe file's keys over those of its `base:` (a shipped recipe's name, or a path relative to
    the file), and so on down: a recipe says only what differs from the one it starts from."""
    data = _read_recipe_file(path)
    if "base" not in data:
        return data
    base = data.pop("base")
    if not isinstance(base, str) or not base.strip():
        raise UserError(f"{path}: 'base' names the recipe this one starts from, e.g. 'base: cifar10_cpu'; got {base!r}")
    nearby = path.parent / base
    try:
        base_path = nearby if nearby.is_file() else resolve_path(base)
    except UserError as exc:
        raise UserError(f"{path}: base: {exc}") from None
    if base_path.resolve() in [p.resolve() for p in (*chain, path)]:
        loop = " -> ".join(str(p) for p in (*chain, path, base_path))
        raise UserError(f"{path}: 'base: {base}' leads back to itself ({loop}); remove one of the bases")
    return _merged(read_with_bases(base_path, (*chain, path)), data)


def _merged(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        merged[key] = _merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def resolved_yaml(recipe: Recipe) -> str:
    """The recipe with every key's value (the file's, its bases', --set's and the defaults) as YAML."""
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False, default_flow_style=False)


def overridden_keys(overrides) -> frozenset[str]:
    """The dotted keys that `--set KEY=VALUE` assignments name."""
    return frozenset(assignment.split("=", 1)[0].strip() for assignment in overrides)


def recipe_from_dict(data: dict, source: str = "checkpoint", overridden: frozenset[str] = frozenset()) -> Recipe:
    """A recipe stored by a run (its checkpoint or config.yaml). Runs written before tasks had
    sections of their own stored every task's keys in `task:`; those of other tasks are dropped."""
    task = data.get("task")
    if isinstance(task, dict) and task.get("name", DEFAULT_TASK) in TASKS:
        own = TASKS[task.get("name", DEFAULT_TASK)].Config.model_fields
        data = {**data, "task": {key: value for key, value in task.items() if key in own or f"task.{key}" in overridden}}
    return validate(data, source, overridden)


def reference_markdown() -> str:
    """The README's recipe reference, generated from the schema (a test keeps the README in sync)."""
    lines = []
    for section_name, section_field in Recipe.model_fields.items():
        lines += [f"`{section_name}`", "", "| key | default | meaning |", "|---|---|---|"]
        if section_name == "task":
            names = "; ".join(f"{name} = {task.summary}" for name, task in TASKS.items())
            lines.append(f"| `task.name` | `{DEFAULT_TASK}` | what is learned: {names}; each task has the keys below that name it |")
            fields = [(key, field) for task in TASKS.values() for key, field in _flat_fields(task.Config) if key != "name"]
        else:
            fields = list(_flat_fields(section_field.annotation))
        for key, field in fields:
            default = field.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                continue
            shown = "null" if default is None else (list(default) if isinstance(default, tuple) else default)
            if isinstance(shown, bool):
                shown = str(shown).lower()
            lines.append(f"| `{section_name}.{key}` | `{shown}` | {field.description} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _flat_fields(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            yield from _flat_fields(sub, prefix + name + ".")
        else:
            yield prefix + name, field
