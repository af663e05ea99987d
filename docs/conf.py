"""Sphinx configuration: the Markdown pages of docs/ (MyST) and an API reference from the docstrings.

Build: ``python -m sphinx -W --keep-going -b html docs build/docs`` (``bash ci/matrix.sh docs``).
"""

import sys
from importlib.metadata import version as _version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import charts  # noqa: E402  (benchmarks/ is not a package)

charts.main()  # docs/data/*.json -> docs/_charts/*.svg

project = "glimpse-pools"
author = "The glimpse-pools developers"
copyright = "2026, The glimpse-pools developers"
release = _version("glimpse-pools")

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "data"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
nitpicky = False

html_theme = "furo"
html_title = "glimpse-pools"
