"""The Python API, as timm and Hugging Face users expect it (perceiver_cli/__init__.py re-exports it):

    import perceiver_cli
    perceiver_cli.list_recipes()                                # ['akoa', ..., 'digits', ...]
    run = perceiver_cli.train("digits", epochs=3)               # a run trained into runs/digits
    model = perceiver_cli.create_model("cifar10_cpu")           # an untrained nn.Module of a recipe
    perceiver_cli.load(run.run_dir).predict([image, "x.png"])   # paths, PIL images, arrays, tensors
"""

from __future__ import annotations

from pathlib import Path

from .errors import UserError


def list_recipes() -> list[str]:
    """The names of the shipped recipes (`perceiver recipes` describes them)."""
    from .catalogue import shipped

    return [path.stem for path in shipped()]


def _override_list(overrides: dict) -> list[str]:
    """{'train.epochs': 3, 'optim__lr': 1e-3, 'epochs': 3} -> ['train.epochs=3', ...]: a dotted key, `__`
    for the dot, or a last part that only one key has."""
    from .recipe import keys_ending_in

    assignments = []
    for key, value in overrides.items():
        dotted = key.replace("__", ".")
        if "." not in dotted:
            owners = keys_ending_in(dotted)
            if len(owners) != 1:
                where = f"it is {' and '.join(owners)}" if owners else "no recipe key ends so"
                raise UserError(f"train({key}=...): {where}; name the key whole, e.g. train(**{{'train.epochs': 3}}) "
                                f"or train(train__epochs=3)")
            dotted = owners[0]
        text = value if isinstance(value, str) else _yaml_value(value)
        assignments.append(f"{dotted}={text}")
    return assignments


def _yaml_value(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def train(recipe: str | Path | None = None, *, name: str | None = None, device: str | None = None,
          quiet: bool = True, callbacks=(), **overrides):
    """Train a recipe (a shipped name or a YAML path; default digits) into runs/<name>/, as `perceiver
    train` does, and return what it trained (engine.train.TrainResult: run_dir, rows, best). Keyword
    arguments override recipe values: train("digits", epochs=3, optim__lr=1e-3). `callbacks`:
    engine.callbacks.Callback instances of your own."""
    from .data.sources import load_for_recipe
    from .engine.train import start_run
    from .recipe import load_recipe

    loaded, path = load_recipe(recipe, _override_list(overrides))
    if name is not None:
        loaded.train.name = name
    trainer = start_run(loaded, path, load_for_recipe(loaded.data, mmap=True), quiet=quiet, device=device,
                        callbacks=list(callbacks))
    return trainer.fit()


def callback_class():
    """engine.callbacks.Callback, the base of a user's own callbacks (perceiver_cli.Callback)."""
    from .engine.callbacks import Callback

    return Callback


def create_model(recipe, **overrides):
    """A recipe's model, freshly initialised (an nn.Module): `recipe` is a shipped name, a YAML path or
    a Recipe (perceiver_cli.recipe.load_recipe); its inputs are those of the recipe's dataset."""
    from .catalogue import model_for
    from .recipe import Recipe, load_recipe

    if not isinstance(recipe, Recipe):
        recipe, _ = load_recipe(recipe, _override_list(overrides))
    elif overrides:
        raise UserError("create_model(Recipe, ...): apply overrides to the recipe itself, or give its name")
    return model_for(recipe)
