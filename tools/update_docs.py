"""Regenerate the recipe reference in docs/recipes.md from the schema: python tools/update_docs.py"""

import re
from pathlib import Path

from perceiver_cli.recipe import reference_markdown

RECIPES_PAGE = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"
START, END = "<!-- recipe-reference:start -->", "<!-- recipe-reference:end -->"

text = RECIPES_PAGE.read_text()
pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
RECIPES_PAGE.write_text(pattern.sub(lambda _: f"{START}\n{reference_markdown()}{END}", text))
