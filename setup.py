"""Build hook: the shipped recipes (recipes/ at the project root, where they are written and read in a
checkout) go into the wheel as perceiver_cli/recipes/, where perceiver_cli.recipe finds them with
importlib.resources. Everything else about the build is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

RECIPES = Path(__file__).resolve().parent / "recipes"


class BuildWithRecipes(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads recipes/ in the checkout
            return
        target = Path(self.build_lib) / "perceiver_cli" / "recipes"
        target.mkdir(parents=True, exist_ok=True)
        for recipe in sorted(RECIPES.glob("*.yaml")):
            shutil.copy2(recipe, target / recipe.name)


setup(cmdclass={"build_py": BuildWithRecipes})
