"""The package's structure: what its public modules expose, and that its own modules import each other without a
cycle."""

import ast
import importlib
import importlib.machinery
import pkgutil
import re
from pathlib import Path

import pytest

import segops

PACKAGE_ROOT = Path(segops.__file__).parent


def _public_module_names():
    """segops and every module under it whose dotted name has no private ("_") part: segops.ops, segops.ops.roi_align,
    segops.models, segops.models.deeplab, segops.metrics, segops.onnx, ..."""
    names = ["segops"]
    for info in pkgutil.walk_packages(segops.__path__, "segops."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


PUBLIC_MODULES = _public_module_names()


def test_public_modules_are_found():
    for expected in (
        "segops.ops",
        "segops.ops.dense_crf",
        "segops.ops.permutohedral",
        "segops.models",
        "segops.metrics",
        "segops.losses",
        "segops.pooling",
        "segops.onnx",
    ):
        assert expected in PUBLIC_MODULES


def _internal_name(name: str) -> bool:
    # Argument checks and fake kernels live in each op family's private segops/ops/_<family>_meta.py (see
    # segops/_meta.py); a public module imports what it needs under a private name.
    return name.startswith("check_") or name.endswith("_fake")


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_public_module_exposes_no_checks_or_fake_kernels(module_name):
    # importlib, not attribute access: segops.ops.roi_align (the attribute) is the function, not the module.
    module = importlib.import_module(module_name)
    public = [name for name in dir(module) if not name.startswith("_")]
    assert [name for name in public if _internal_name(name)] == []
    assert [name for name in getattr(module, "__all__", []) if _internal_name(name)] == []


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _top_level_imports(node):
    """The import statements a module runs when it is imported: its body's, also inside if/try/with blocks, not
    those inside functions or classes (run later, when they are called)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, (ast.If, ast.Try, ast.With)) or type(child).__name__ == "TryStar":
            yield from _top_level_imports(child)


def _all_imports(node):
    """Every import statement of a module, also the deferred ones inside functions."""
    return (child for child in ast.walk(node) if isinstance(child, (ast.Import, ast.ImportFrom)))


def _import_graph(imports=_top_level_imports):
    """{segops module: the segops modules it imports}, by the statements `imports` picks. `from package import name`
    counts as an import of package.name where that is a module, else of package. A submodule's import also runs its
    packages' __init__: those edges are left out, as each package would otherwise form a cycle with its own
    submodules."""
    files = {_module_name(path): path for path in PACKAGE_ROOT.rglob("*.py")}
    # The compiled extensions (segops._C, segops._emulation): modules too, which import nothing of segops'.
    extensions = {
        _module_name(path.with_name(path.name[: -len(suffix)] + ".py"))
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
        for path in PACKAGE_ROOT.rglob("*" + suffix)
    }
    graph = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        targets = set()
        for statement in imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(statement, ast.Import):
                targets.update(alias.name for alias in statement.names)
                continue
            base = statement.module or ""
            if statement.level:  # relative: from . import x, from ..ops import y
                anchor = package.split(".")[: len(package.split(".")) - (statement.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in statement.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in files or submodule in extensions else base)
        graph[name] = sorted(target for target in targets if target in files and target != name)
    return graph


def _find_cycle(graph):
    """One import cycle as [a, b, ..., a], or None."""
    state = {}  # module -> "open" while on the DFS path, "done" after
    path = []

    def visit(module):
        state[module] = "open"
        path.append(module)
        for target in graph[module]:
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def test_import_graph_is_read():
    graph = _import_graph()
    assert "segops.ops._checks" in graph["segops.ops._roi_meta"]
    assert "segops.ops.permutohedral" in graph["segops.ops.dense_crf"]
    assert "segops._onnx_translations" not in graph["segops.onnx"]  # imported inside translation_table()
    assert "segops._onnx_translations" in _import_graph(_all_imports)["segops.onnx"]


def test_no_import_cycle_among_segops_modules():
    assert _find_cycle(_import_graph()) is None


def test_no_import_cycle_even_through_deferred_imports():
    # A cycle closed by an import inside a function still ties the two modules together (segops.onnx and its
    # translations were such a pair): the dependency goes one way.
    assert _find_cycle(_import_graph(_all_imports)) is None


def test_find_cycle_reports_one():
    assert _find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None


# The Python side of the ops' CUDA path (front ends, Functions, batching, autocast, FX, fakes): a Python number or
# list turned into a device tensor is a blocking host-to-device copy, which also cannot be captured in a CUDA graph.
# Scalars reach the kernels as arguments, or become tensors by a fill on the device (`like.new_full((), value)`).
OP_PATH_SOURCES = sorted([*(PACKAGE_ROOT / "ops").glob("*.py"), *PACKAGE_ROOT.glob("_*.py")])
SCALAR_TO_DEVICE = re.compile(r"torch\.(as_tensor|tensor|scalar_tensor)\((?:[^()]|\([^()]*\))*\bdevice\s*=|\.cuda\(")


def scalar_to_device_copies(source: str):
    """(line number, line) of each call that copies host values to a device, outside comments."""
    code = re.sub(r"#[^\n]*", "", source)
    return [(code.count("\n", 0, m.start()) + 1, m.group(0)) for m in SCALAR_TO_DEVICE.finditer(code)]


def test_the_scan_sees_scalar_to_device_copies():
    assert [n for n, _ in scalar_to_device_copies("a = 1\nw = torch.as_tensor(w, device=x.device)\n")] == [2]
    assert scalar_to_device_copies("w = torch.tensor([float(a), f(b)],\n  dtype=x.dtype, device=x.device)")
    assert scalar_to_device_copies("w = weights.cuda()")
    assert not scalar_to_device_copies("w = unary.new_full((), float(w))  # torch.tensor(w, device=d) copies\n")
    assert not scalar_to_device_copies("eps = torch.tensor(1e-6, dtype=sizes.dtype)")  # a CPU scalar: no copy


@pytest.mark.parametrize("path", OP_PATH_SOURCES, ids=lambda path: path.relative_to(PACKAGE_ROOT).as_posix())
def test_op_paths_copy_no_scalar_to_a_device(path):
    assert len(OP_PATH_SOURCES) > 15
    assert scalar_to_device_copies(path.read_text()) == []
