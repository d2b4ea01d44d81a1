"""perceiver: prepare data for, train, evaluate and inspect Perceiver models.

    import perceiver_cli
    perceiver_cli.list_recipes()                      # the shipped recipes' names
    run = perceiver_cli.train("digits", epochs=3)     # runs/digits, as `perceiver train` makes it
    net = perceiver_cli.create_model("cifar10_cpu")   # a recipe's model, untrained
    model = perceiver_cli.load("runs/cifar10_cpu")   # a run directory, a checkpoint .pt or an export folder
    model.predict(["cat.jpg", pil_image, array])      # classes and probabilities, preprocessing included
    logits = model(batch)                             # the nn.Module underneath
    class Mine(perceiver_cli.Callback): ...           # your own hooks: perceiver_cli.train(..., callbacks=[Mine()])
"""

__version__ = "0.1.0"


def load(path, device: str = "auto"):
    """A trained model ready to predict on files (perceiver_cli.predict.LoadedModel)."""
    from .predict import load as load_model  # torch loads only when a model is asked for

    return load_model(path, device)


def train(recipe=None, **options):
    """Train a recipe into runs/<name>/ and return its TrainResult (perceiver_cli.api.train)."""
    from .api import train as train_recipe

    return train_recipe(recipe, **options)


def list_recipes() -> list[str]:
    """The shipped recipes' names (perceiver_cli.api.list_recipes)."""
    from .api import list_recipes as names

    return names()


def create_model(recipe, **overrides):
    """A recipe's model, freshly initialised (perceiver_cli.api.create_model)."""
    from .api import create_model as build

    return build(recipe, **overrides)


def __getattr__(name: str):
    """perceiver_cli.Callback (engine.callbacks.Callback), imported when first asked for: the package
    itself loads no torch."""
    if name == "Callback":
        from .api import callback_class

        return callback_class()
    raise AttributeError(f"module 'perceiver_cli' has no attribute {name!r}")
