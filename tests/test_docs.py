"""The documentation as tests: the Sphinx site builds with warnings as errors, every ```python block of README.md
and docs/*.md runs, every relative link points to a file that exists, and the README stays short."""

import importlib
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPOSITORY_ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = REPOSITORY_ROOT / "docs"
README = REPOSITORY_ROOT / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 200
# The modules whose public names the API reference (docs/api.md) documents, under these public paths.
PUBLIC_MODULES = [
    "segops",
    "segops.models",
    "segops.metrics",
    "segops.losses",
    "segops.pooling",
    "segops.cluster",
    "segops.data",
    "segops.transforms",
    "segops.train",
    "segops.eval",
    "segops.predict",
    "segops.onnx",
]

OPENING_FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`[^`\n]*`")


def page_id(page: pathlib.Path) -> str:
    return str(page.relative_to(REPOSITORY_ROOT))


def fenced_blocks(text: str):
    """(language, first code line's 1-based number, code) of every fenced code block of a Markdown text."""
    blocks = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = OPENING_FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        fence = opening["fence"]
        closing = re.compile(rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$")
        end = index + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        info = opening["info"].strip()
        blocks.append((info.split()[0] if info else "", index + 2, "\n".join(lines[index + 1 : end])))
        index = end + 1
    return blocks


def prose(text: str, keep_inline_code: bool = False) -> str:
    """The text without its fenced code blocks (blanked line by line, so line numbers stay) nor inline code."""
    lines = text.splitlines()
    for _, first_line, code in fenced_blocks(text):
        for number in range(first_line - 2, first_line + code.count("\n") + 2):
            if number < len(lines):
                lines[number] = ""
    text = "\n".join(lines)
    return text if keep_inline_code else INLINE_CODE.sub("", text)


def heading_anchors(page: pathlib.Path) -> set:
    """The anchors of a page's headings as GitHub and myst-parser (myst_heading_anchors) both spell them."""
    anchors = set()
    for line in prose(page.read_text(), keep_inline_code=True).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            title = re.sub(r"[^\w\- ]", "", heading[1].replace("`", "").strip().lower())
            anchors.add(title.replace(" ", "-"))
    return anchors


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; details go to docs/ (at most {README_MAX_LINES})"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_point_to_existing_files(page):
    broken = []
    for number, line in enumerate(prose(page.read_text()).splitlines(), start=1):
        for link in LINK.finditer(line):
            target = link["target"]
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page_id(page)}:{number}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved):
                broken.append(f"{page_id(page)}:{number}: {target} (no heading with that anchor)")
    assert not broken, "broken links:\n" + "\n".join(broken)


PAGES_WITH_PYTHON = [page for page in PAGES if any(lang == "python" for lang, _, _ in fenced_blocks(page.read_text()))]

RUN_BLOCKS = """
import sys
namespace = {"__name__": "__main__"}
for filename, first_line, code in BLOCKS:
    # Blank lines in front, so that a traceback names the page's own line.
    exec(compile("\\n" * (first_line - 1) + code, filename, "exec"), namespace)
"""


@pytest.mark.parametrize("page", PAGES_WITH_PYTHON, ids=page_id)
def test_python_blocks_run(page, tmp_path):
    """A page's ```python blocks run in order in one fresh interpreter, sharing one namespace, as a reader would
    paste them. Blocks that cannot run on a CPU-only machine are ```text instead."""
    blocks = [(str(page), line, code) for lang, line, code in fenced_blocks(page.read_text()) if lang == "python"]
    script = f"BLOCKS = {blocks!r}\n{RUN_BLOCKS}"
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPOSITORY_ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"a python block of {page_id(page)} failed:\n{result.stdout}\n{result.stderr}"


def public_names(module_name: str):
    """The names a module exports: its __all__, or else what it defines itself (not what it imports)."""
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            name
            for name in dir(module)
            if not name.startswith("_") and getattr(getattr(module, name), "__module__", None) == module_name
        ]
    return [name for name in names if name != "__version__"]


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_api_reference_documents_every_public_name(module_name):
    reference = (DOCS / "api.md").read_text()
    documented = set(re.findall(r"^\.\. (?:autofunction|autoclass|autodata|py:data):: (\S+)$", reference, re.M))
    qualified_names = [f"{module_name}.{name}" for name in public_names(module_name)]
    missing = [name for name in qualified_names if name not in documented]
    assert not missing, f"docs/api.md does not document: {missing}"


def table_rows(text: str):
    """The cells of every row of the Markdown tables of a text (header and separator rows included)."""
    rows = [line.strip().strip("|") for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.split("|")] for row in rows]


def test_readme_benchmark_numbers_are_measured_results():
    """Each row of the README's benchmark table is a row of a results table (benchmarks/results/**/latest.md,
    written by `python -m benchmarks`): case, segops (ms), reference, reference (ms), speedup, and where the README
    gives them, the two peak-memory columns that close a results row."""
    readme_benchmarks = README.read_text().split("## Benchmarks", 1)[1].split("\n## ", 1)[0]
    measured_rows = [
        row
        for results in (REPOSITORY_ROOT / "benchmarks" / "results").rglob("latest.md")
        for row in table_rows(results.read_text())
    ]
    measured = {tuple(row[:5]) for row in measured_rows} | {tuple(row[:5] + row[-2:]) for row in measured_rows}
    rows = [tuple(row) for row in table_rows(readme_benchmarks)[2:]]
    assert rows, "the README's Benchmarks section has no table"
    unmeasured = [row for row in rows if row not in measured]
    assert not unmeasured, f"README rows that are no results table's rows: {unmeasured}"


def test_api_reference_states_deeplab_v2_settings():
    import segops

    reference = " ".join((DOCS / "api.md").read_text().split())
    stated = ", ".join(f"{key}={value!r}" for key, value in segops.DEEPLAB_V2.items())
    assert f"``{stated}``" in reference, f"docs/api.md should state DEEPLAB_V2 as ``{stated}``"


def test_docs_build_without_warnings(tmp_path):
    if importlib.util.find_spec("sphinx") is None or importlib.util.find_spec("myst_parser") is None:
        reason = "sphinx or myst-parser is not installed (requirements.txt, its Docs section)"
        if os.environ.get("SEGOPS_REQUIRE_DOCS") == "1":
            pytest.fail(f"{reason}, and SEGOPS_REQUIRE_DOCS=1")
        pytest.skip(f"{reason}; SEGOPS_REQUIRE_DOCS=1 makes this a failure")
    output = tmp_path / "html"
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-d", str(tmp_path / "doctrees")]
    result = subprocess.run(
        command + [str(DOCS), str(output)], cwd=REPOSITORY_ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"sphinx failed (warnings are errors):\n{result.stdout}\n{result.stderr}"
    # autodoc really imported segops and rendered its docstrings (a failed import would leave empty entries).
    api_page = (output / "api.html").read_text()
    assert "Region of Interest (RoI) Align, as in Mask R-CNN" in api_page
    assert "Accumulates the confusion matrix" in api_page
