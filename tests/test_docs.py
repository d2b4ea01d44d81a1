"""The README stays true: its recipe reference is the schema's, its commands are the ones CI runs."""

import re
from pathlib import Path

from perceiver_cli.recipe import RECIPES_DIR, reference_markdown

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_recipe_reference_matches_the_schema():
    assert reference_markdown() in README, "run python tools/update_readme.py"


def test_ci_runs_exactly_the_readme_test_command():
    block = re.search(r"## Run the tests\s+```bash\n(.+?)\n```", README, re.S).group(1).strip()
    assert block in (ROOT / ".ci" / "run").read_text()


def test_every_shipped_recipe_is_documented():
    for recipe in RECIPES_DIR.glob("*.yaml"):
        assert f"`{recipe.name}`" in README, recipe.name


def test_readme_results_table_is_written_from_the_measurements_json():
    import importlib.util

    spec = importlib.util.spec_from_file_location("results_table", ROOT / "tools" / "results_table.py")
    results_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(results_table)
    assert results_table.updated(README) == README, "run python tools/results_table.py"
