"""segops.__version__, from the installed package's metadata (which setup.py takes from version.txt), or from
version.txt itself in a source tree that was built in place."""

from importlib import metadata
from pathlib import Path


def _read_version() -> str:
    source_tree_file = Path(__file__).resolve().parent.parent / "version.txt"
    if source_tree_file.exists():
        return source_tree_file.read_text().strip()
    return metadata.version("segops")


__version__ = _read_version()
