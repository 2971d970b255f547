"""The configured tools agree with the tree: ruff (lint and format, pyproject.toml) and clang-format (.clang-format).
A lint error fails the suite; `pre-commit run --all-files` (.pre-commit-config.yaml) runs the same tools."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The tools requirements.txt installs into the environment that runs the tests.
TOOL_PATH = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
CPP_SUFFIXES = {".h", ".cpp", ".cu", ".cuh"}


def _tool(name):
    path = shutil.which(name, path=TOOL_PATH)
    if path is None:
        if os.environ.get("SEGOPS_TEST_TIER"):  # set by scripts/test.sh, which installed requirements.txt
            pytest.fail(f"{name} is missing: `pip install -r requirements.txt` installs it")
        pytest.skip(f"{name} not installed (requirements.txt)")
    return path


def _run(command):
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(map(str, command))} found:\n{result.stdout}{result.stderr}"


def test_ruff_finds_no_lint_error():
    _run([_tool("ruff"), "check", "--no-cache", "."])


def test_ruff_format_leaves_the_tree_as_it_is():
    _run([_tool("ruff"), "format", "--no-cache", "--check", "."])


def test_clang_format_leaves_csrc_as_it_is():
    sources = sorted(p.relative_to(ROOT) for p in (ROOT / "csrc").rglob("*") if p.suffix in CPP_SUFFIXES)
    assert len(sources) > 20, sources
    _run([_tool("clang-format"), "--dry-run", "--Werror", *sources])
