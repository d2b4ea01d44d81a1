"""perceiver: prepare data for, train, evaluate and inspect Perceiver models.

    import perceiver_cli
    model = perceiver_cli.load("runs/cifar10_cpu")   # a run directory, a checkpoint .pt or an export folder
    model.predict(["cat.jpg", "dog.png"])             # classes and probabilities, preprocessing included
    logits = model(batch)                             # the nn.Module underneath
"""

__version__ = "0.1.0"


def load(path, device: str = "auto"):
    """A trained model ready to predict on files (perceiver_cli.predict.LoadedModel)."""
    from .predict import load as load_model  # torch loads only when a model is asked for

    return load_model(path, device)
