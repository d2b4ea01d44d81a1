"""The README and docs/ stay true: the recipe reference is the schema's, the test command is the one
CI runs, the Python example runs as written, and every link leads somewhere."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from perceiver_cli.recipe import RECIPES_DIR, reference_markdown

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PAGES = {path: path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
RECIPES_PAGE = (ROOT / "docs" / "recipes.md").read_text()


def test_recipe_reference_matches_the_schema():
    assert reference_markdown() in RECIPES_PAGE, "run python tools/update_docs.py"


def test_ci_runs_exactly_the_readme_test_command():
    block = re.search(r"## Run the tests\s+```bash\n(.+?)\n```", README, re.S).group(1).strip()
    assert block in (ROOT / ".ci" / "run").read_text()


def test_every_shipped_recipe_is_documented():
    for recipe in RECIPES_DIR.glob("*.yaml"):
        assert f"`{recipe.name}`" in RECIPES_PAGE, recipe.name


def test_readme_results_table_is_written_from_the_measurements_json():
    import importlib.util

    spec = importlib.util.spec_from_file_location("results_table", ROOT / "tools" / "results_table.py")
    results_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(results_table)
    assert results_table.updated(README) == README, "run python tools/results_table.py"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", list(PAGES), ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_link_leads_to_a_file_and_heading_that_exist(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", PAGES[page]):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
            assert anchor in {_anchor(h) for h in headings}, f"{page.name}: {target}"


def test_readme_is_for_a_newcomer_and_keeps_the_depth_in_docs():
    assert len(README.splitlines()) < 250
    for internal in ("renameat2", "fsync", "seed 000", "per-axis", "MFU counts"):
        assert internal not in README, internal
    for page in ("commands", "recipes", "performance", "reliability", "design"):
        assert f"(docs/{page}.md)" in README, page


def test_the_readme_python_example_runs_as_written(tmp_path):
    example = re.search(r"## Python\s+```python\n(.+?)\n```", README, re.S).group(1)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ran = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=600)
    assert ran.returncode == 0, ran.stderr[-2000:]
    lines = ran.stdout.splitlines()
    assert "'digits'" in lines[0]
    assert [line.split(":")[0] for line in lines[1:3]] == ["epoch 1", "epoch 2"]  # the user's callback ran
    assert (tmp_path / "runs" / "digits" / "checkpoints" / "best.pt").is_file()
    assert lines[4] in [str(d) for d in range(10)]  # the predicted class of the array
    assert int(lines[5]) > 100_000  # the untrained cifar10_cpu model's parameters
