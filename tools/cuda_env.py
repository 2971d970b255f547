"""Where this machine's CUDA pieces are, for setup.py and CMakeLists.txt (one copy of the logic).

A pip-installed CUDA build of torch on a minimal CUDA toolkit needs three things found:
  - the toolkit folder (CUDA_HOME), which torch guesses wrong when the nvcc on PATH is a wrapper script;
  - the headers that torch's CUDA headers include but a minimal toolkit lacks (cusparse.h, cublas_v2.h, ...),
    which the pip `nvidia` packages carry beside their own copy of the runtime headers;
  - libnvrtc, which LibTorch's CMake config asks for, also from the pip packages.

`python tools/cuda_env.py BUILD_DIR` prints them as CMake `set()` lines for CMakeLists.txt.
"""

import re
import shutil
import sys
from pathlib import Path


def is_toolkit(folder):
    return (folder / "bin" / "nvcc").exists() and (folder / "include" / "cuda_runtime_api.h").exists()


def find_cuda_home(environ):
    """CUDA_HOME/CUDA_PATH if set (None if that is not a toolkit: an explicit choice is not second-guessed);
    else the toolkit behind the nvcc on PATH, following symlinks and `exec /path/to/cuda/bin/nvcc "$@"` wrapper
    scripts; else /usr/local/cuda. None if there is none."""
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if environ.get(variable):
            folder = Path(environ[variable])
            return folder.resolve() if is_toolkit(folder) else None
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = Path(nvcc).resolve()
        candidates.append(real.parent.parent)
        if real.stat().st_size < 65536:
            candidates += [Path(match) for match in re.findall(r"(/\S+)/bin/nvcc\b", real.read_text(errors="ignore"))]
    candidates.append(Path("/usr/local/cuda"))
    return next((folder.resolve() for folder in candidates if is_toolkit(folder)), None)


def _pip_nvidia_folders(subfolder):
    try:
        import nvidia
    except ImportError:
        return []
    return [folder for base in nvidia.__path__ for folder in sorted(Path(base).glob(f"*/{subfolder}"))]


def pip_header_overlay(cuda_home, overlay):
    """Fills `overlay` with links to the pip nvidia packages' headers that the toolkit lacks (so the toolkit's
    own headers keep precedence) and returns it, or None when nothing is missing."""
    shutil.rmtree(overlay, ignore_errors=True)
    for include in _pip_nvidia_folders("include"):
        for entry in include.iterdir():
            if not (cuda_home / "include" / entry.name).exists() and not (overlay / entry.name).exists():
                overlay.mkdir(parents=True, exist_ok=True)
                (overlay / entry.name).symlink_to(entry)
    return overlay if overlay.exists() else None


def nvrtc_library(cuda_home):
    """libnvrtc from the toolkit, else from the pip nvidia packages; None if neither has it."""
    folders = [cuda_home / "lib64", cuda_home / "lib"] + _pip_nvidia_folders("lib")
    return next((lib for folder in folders for lib in sorted(folder.glob("libnvrtc.so*"))), None)


def main(build_dir):
    import os

    import torch.utils

    print(f'set(SEGOPS_TORCH_PREFIX "{torch.utils.cmake_prefix_path}")')
    cuda_home = find_cuda_home(os.environ)
    if cuda_home is None:
        return
    print(f'set(SEGOPS_CUDA_HOME "{cuda_home}")')
    overlay = pip_header_overlay(cuda_home, Path(build_dir) / "pip_cuda_include")
    if overlay:
        print(f'set(SEGOPS_CUDA_HEADER_OVERLAY "{overlay}")')
    nvrtc = nvrtc_library(cuda_home)
    if nvrtc:
        print(f'set(SEGOPS_NVRTC_LIBRARY "{nvrtc}")')


if __name__ == "__main__":
    main(sys.argv[1])
