"""Loads the compiled extension segops._C (which registers torch.ops.segops.*) with an actionable error."""

import torch

try:
    from segops import _C  # noqa: F401  (importing it runs the operator registrations)
except ImportError as error:  # pragma: no cover - exercised only by a broken install
    raise ImportError(
        f"segops: the compiled extension segops._C could not be loaded ({error}). Build it against the torch "
        "you run with `pip install --no-build-isolation .` in the segops source tree (add SEGOPS_FORCE_CPU=1 for a "
        "CPU-only build); see docs/install.md."
    ) from error

_built_torch = torch.ops.segops._torch_version()
_running_torch = torch.__version__.split("+")[0]
if _built_torch != _running_torch:
    raise ImportError(
        f"segops: compiled against torch {_built_torch} but torch {_running_torch} is installed; the C++ ABI differs "
        "between releases, so reinstall segops against this torch (`pip install --no-build-isolation .`)."
    )


def cuda_version():
    """The CUDA runtime version segops was compiled with, as "major.minor" (e.g. "13.0"), or None for a
    CPU-only build."""
    version = torch.ops.segops._cuda_version()
    return None if version < 0 else f"{version // 1000}.{version % 1000 // 10}"


def torch_version():
    """The torch release segops was compiled against, "major.minor.patch"."""
    return _built_torch
