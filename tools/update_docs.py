"""Regenerate the README's recipe reference from the schema: python tools/update_readme.py"""

import re
from pathlib import Path

from perceiver_cli.recipe import reference_markdown

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- recipe-reference:start -->", "<!-- recipe-reference:end -->"

text = README.read_text()
pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
README.write_text(pattern.sub(lambda _: f"{START}\n{reference_markdown()}{END}", text))
