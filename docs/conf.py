"""Sphinx configuration of segops' documentation: Markdown pages (myst-parser) and an API reference from the
docstrings (autodoc + napoleon, Google style). Built with warnings as errors by tests/test_docs.py."""

import pathlib
import sys

REPOSITORY_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Document the segops of this checkout (its extension built in place by `pip install -e .`).
sys.path.insert(0, str(REPOSITORY_ROOT))

project = "segops"
copyright = "the segops authors"
release = (REPOSITORY_ROOT / "version.txt").read_text().strip()
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown"}
myst_heading_anchors = 3  # `page.md#a-heading` links to headings of levels 1-3

autodoc_member_order = "bysource"
# The docstrings give types and shapes; the annotations (TorchScript's BroadcastingList2 reads as None) would not.
autodoc_typehints = "none"
# The Functions' forward/backward docstrings would be torch.autograd.Function's generic ones.
autodoc_inherit_docstrings = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# "Attributes:" as fields of the class, not as separate objects that would clash with autodoc's members.
napoleon_use_ivar = True

html_theme = "alabaster"
html_title = f"segops {release}"
exclude_patterns = ["_build"]
