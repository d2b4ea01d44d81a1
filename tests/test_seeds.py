"""`perceiver seeds`: one recipe, several seeds, each a real run scored as `perceiver eval` scores it,
and their mean +- std in a table and a JSON file."""

from __future__ import annotations

import json
import statistics

from conftest import set_args


def test_seeds_trains_one_run_per_seed_and_reports_their_mean_and_std(cli, workdir, tiny):
    result = cli("seeds", "--seeds", "2", "--first-seed", "3", *set_args(tiny), "--json", "seeds.json")
    assert result.exit_code == 0, result.output
    summary = json.loads((workdir / "seeds.json").read_text())
    assert [seed["seed"] for seed in summary["seeds"]] == [3, 4]
    for seed in summary["seeds"]:  # each figure is the eval of a real run, trained with its own seed
        run = workdir / seed["run"]
        assert run.name == f"digits-seed{seed['seed']}"
        assert json.loads((run / "eval_test.json").read_text())["accuracy"] == seed["value"]
        assert f"seed: {seed['seed']}" in (run / "config.yaml").read_text()
    values = [seed["value"] for seed in summary["seeds"]]
    assert values[0] != values[1]  # two seeds, two different models
    assert summary["mean"] == statistics.mean(values) and summary["std"] == statistics.stdev(values)
    assert summary["metric"] == "accuracy" and summary["machine"]
    assert f"accuracy {summary['mean']:.2%} ± {summary['std']:.2%} over 2 seeds" in result.output


def test_seeds_refuses_a_seed_override_and_an_unwritable_json_before_training(cli, workdir, tiny):
    result = cli("seeds", *set_args(tiny), "--set", "train.seed=5")
    assert result.exit_code == 2 and "use --first-seed" in result.output
    result = cli("seeds", *set_args(tiny), "--json", "missing/seeds.json")
    assert result.exit_code == 2 and "missing does not exist" in result.output
    assert not (workdir / "runs").exists()  # nothing was trained
