"""A Perceiver next to the standard baseline of its field: same data, same split, same wall clock.

    python benchmarks/baselines.py digits                       # vs scikit-learn's SVC (RBF)
    python benchmarks/baselines.py cifar10 --minutes 20         # vs torchvision's resnet18 adapted to 32x32
    python benchmarks/baselines.py knee-seg --minutes 30        # vs MONAI's UNet with DiceCELoss (pip install monai)
    [--perceiver-run runs/X]   use a finished run's eval instead of training the recipe again
    [--json out.json]          every figure, for benchmarks/RESULTS.md

The Perceiver is the dataset's shipped recipe, trained by `perceiver train` and scored like `perceiver
eval`; the baseline reads the same prepared arrays (the run's train split; the test split where there
is one, else the same val split) and trains until the Perceiver's wall time (or --minutes) is spent.
Each row names the split it scored, so a baseline that wins is seen winning.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from perceiver_cli.console import set_quiet
from perceiver_cli.data.sources import load_for_recipe
from perceiver_cli.data.splits import split_train_val
from perceiver_cli.engine.train import start_run
from perceiver_cli.evaluate import evaluate
from perceiver_cli.recipe import load_recipe
from perceiver_cli.seeds import machine
from perceiver_cli.tasks import TASKS

RECIPES = {"digits": "digits", "cifar10": "cifar10_cpu", "knee-seg": "knee_seg"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=sorted(RECIPES))
    parser.add_argument("--minutes", type=float, default=None, help="the baseline's budget [default: the Perceiver's time]")
    parser.add_argument("--perceiver-run", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    set_quiet(True)
    torch.manual_seed(args.seed)

    recipe, path = load_recipe(RECIPES[args.dataset], [f"train.seed={args.seed}"])
    dataset = load_for_recipe(recipe.data)
    perceiver = perceiver_row(recipe, path, dataset, args.perceiver_run)
    budget = args.minutes * 60 if args.minutes else perceiver["seconds"]
    (x_train, y_train), (x_val, y_val) = split_train_val(dataset, recipe.data.val_fraction, recipe.train.seed)
    if "test" in dataset.splits:
        scored, x_eval, y_eval = "test", dataset.split("test").x, dataset.split("test").y
    else:
        scored, x_eval, y_eval = "val", x_val, y_val
    baseline = BASELINES[args.dataset](np.asarray(x_train), np.asarray(y_train), np.asarray(x_eval), np.asarray(y_eval),
                                       budget, len(dataset.classes))
    baseline["evaluated_on"] = f"{dataset.name} {scored} split"
    rows = [perceiver, baseline]
    print(f"{'model':<40} {'metric':>10} {'seconds':>8}  split")
    for row in rows:
        print(f"{row['model']:<40} {row['value']:>10.4f} {row['seconds']:>8.1f}  {row['evaluated_on']} ({row['metric']})")
    if args.json:
        args.json.write_text(json.dumps({"dataset": args.dataset, "recipe": path.stem, "machine": machine(), "rows": rows}, indent=2) + "\n")


def perceiver_row(recipe, path, dataset, run: Path | None) -> dict:
    started = time.perf_counter()
    if run is None:
        recipe.train.name = f"{path.stem}-baseline-seed{recipe.train.seed}"
        trainer = start_run(recipe, path, dataset, quiet=True)
        trainer.fit()
        run = trainer.run_dir
        seconds = time.perf_counter() - started
    else:
        rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line.strip()]
        seconds = rows[-1]["elapsed_s"]
    report = evaluate(run).report
    metric = TASKS[recipe.task.name].headline
    return {"model": f"Perceiver ({path.stem})", "metric": metric, "value": report[metric], "seconds": round(seconds, 1),
            "evaluated_on": report["evaluated_on"], "run": str(run)}


# --- baselines ---------------------------------------------------------------------------------------

def svc(x_train, y_train, x_eval, y_eval, budget, classes) -> dict:
    from sklearn.svm import SVC

    started = time.perf_counter()
    flat = lambda x: x.reshape(len(x), -1).astype(np.float64) / 255.0  # noqa: E731
    model = SVC(kernel="rbf", C=10.0, gamma="scale").fit(flat(x_train), y_train)
    accuracy = float((model.predict(flat(x_eval)) == y_eval).mean())
    return {"model": "scikit-learn SVC (RBF, C=10)", "metric": "accuracy", "value": accuracy,
            "seconds": round(time.perf_counter() - started, 1)}


def resnet18(x_train, y_train, x_eval, y_eval, budget, classes) -> dict:
    """torchvision's resnet18 with the usual CIFAR stem (3x3 conv, stride 1, no maxpool), SGD with
    nesterov momentum and a one-cycle schedule sized to the budget, crop + flip, label smoothing."""
    import torchvision

    model = torchvision.models.resnet18(num_classes=classes)
    model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = torch.nn.Identity()
    model = model.to(memory_format=torch.channels_last)
    x_train = torch.from_numpy(x_train).permute(0, 3, 1, 2).contiguous()
    y_train = torch.from_numpy(y_train)
    mean = x_train[:4096].float().mean((0, 2, 3), keepdim=True)
    std = x_train[:4096].float().std((0, 2, 3), keepdim=True)
    normalise = lambda x: ((x.float() - mean) / std).contiguous(memory_format=torch.channels_last)  # noqa: E731
    batch = 128
    started = time.perf_counter()
    step_time = _time_one_step(model, normalise(x_train[:batch]), y_train[:batch])
    steps = max(1, int((budget - (time.perf_counter() - started)) * 0.9 / step_time))  # 10 %: eval and slack
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=0.1, total_steps=steps, pct_start=0.25)
    generator = torch.Generator().manual_seed(0)
    model.train()
    step = 0
    while step < steps:
        for index in torch.randperm(len(x_train), generator=generator).split(batch):
            if step == steps:
                break
            images = _crop_and_flip(x_train[index], generator)
            loss = F.cross_entropy(model(normalise(images)), y_train[index], label_smoothing=0.1)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            step += 1
    model.eval()
    x_eval = torch.from_numpy(x_eval).permute(0, 3, 1, 2)
    with torch.no_grad():
        predicted = torch.cat([model(normalise(chunk)).argmax(1) for chunk in x_eval.split(500)])
    accuracy = float((predicted.numpy() == y_eval).mean())
    return {"model": f"torchvision resnet18 (CIFAR stem, {steps:,} steps)", "metric": "accuracy", "value": accuracy,
            "seconds": round(time.perf_counter() - started, 1)}


def _time_one_step(model, x, y) -> float:
    optimiser = torch.optim.SGD(model.parameters(), lr=0.0)
    for _ in range(2):
        started = time.perf_counter()
        F.cross_entropy(model(x), y).backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def _crop_and_flip(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    n, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4, mode="reflect")
    dy, dx = torch.randint(0, 2 * padding + 1, (2,), generator=generator).tolist()  # one shift per batch: cheap
    out = padded[:, :, dy:dy + h, dx:dx + w]
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def unet(x_train, y_train, x_eval, y_eval, budget, classes) -> dict:
    """MONAI's 2D UNet trained with DiceCELoss on the same slices, scored as `perceiver eval` scores
    segmentation: mean Dice over the foreground classes, over the whole split."""
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    model = UNet(spatial_dims=2, in_channels=x_train.shape[-1], out_channels=classes, channels=(16, 32, 64, 128),
                 strides=(2, 2, 2), num_res_units=2)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    x_train = torch.from_numpy(x_train).permute(0, 3, 1, 2).float() / 255.0
    y_train = torch.from_numpy(y_train.astype(np.int64))
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3)
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    model.train()
    while time.perf_counter() - started < budget * 0.9:
        for index in torch.randperm(len(x_train), generator=generator).split(16):
            loss = loss_fn(model(x_train[index]), y_train[index].unsqueeze(1))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if time.perf_counter() - started >= budget * 0.9:
                break
    model.eval()
    x_eval = torch.from_numpy(x_eval).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        predicted = torch.cat([model(chunk).argmax(1) for chunk in x_eval.split(32)]).numpy()
    dice = [_dice(predicted == c, y_eval == c) for c in range(1, classes)]
    return {"model": "MONAI UNet (DiceCELoss)", "metric": "mean_dice", "value": float(np.mean(dice)),
            "per_class_dice": dice, "seconds": round(time.perf_counter() - started, 1)}


def _dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    total = predicted.sum() + truth.sum()
    return float(2 * (predicted & truth).sum() / total) if total else 1.0


BASELINES = {"digits": svc, "cifar10": resnet18, "knee-seg": unet}


if __name__ == "__main__":
    main()
