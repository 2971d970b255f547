"""What was built, and the other ways to build: setup.py's decisions and the CMake library."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import segops

ROOT = Path(__file__).resolve().parent.parent


def test_version_comes_from_version_txt():
    assert segops.__version__ == (ROOT / "version.txt").read_text().strip()


def test_build_reports_what_was_compiled():
    assert segops.torch_version() == torch.__version__.split("+")[0]
    has_cuda_kernels = torch._C._dispatch_has_kernel_for_dispatch_key("segops::roi_align", "CUDA")
    if segops.cuda_version() is None:
        assert not has_cuda_kernels
    else:
        assert re.fullmatch(r"\d+\.\d", segops.cuda_version()) and has_cuda_kernels
    # The test command builds with FORCE_CUDA=1 wherever nvcc exists and says so here.
    if os.environ.get("SEGOPS_EXPECT_CUDA_BUILD") == "1":
        assert segops.cuda_version() == torch.version.cuda


def _setup_py(env_overrides):
    env = {**os.environ, **env_overrides}
    return subprocess.run(
        [sys.executable, "setup.py", "--version"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_setup_rejects_contradictory_or_impossible_cuda_requests():
    result = _setup_py({"FORCE_CUDA": "1", "SEGOPS_FORCE_CPU": "1"})
    assert result.returncode != 0 and "SEGOPS_FORCE_CPU=1 and FORCE_CUDA=1 contradict each other" in result.stderr
    result = _setup_py({"FORCE_CUDA": "1", "CUDA_HOME": "/nonexistent-cuda"})
    assert result.returncode != 0
    expected = "FORCE_CUDA=1 but torch" if torch.version.cuda is None else "FORCE_CUDA=1 but no CUDA toolkit was found"
    assert expected in result.stderr


CMAKE = shutil.which("cmake", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
# The CUDA variant compiles every .cu file again (minutes): run where the test command builds CUDA (CI).
CMAKE_VARIANTS = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(
        os.environ.get("SEGOPS_EXPECT_CUDA_BUILD") != "1", reason="CUDA CMake build only where FORCE_CUDA=1 builds")),
]


@pytest.mark.skipif(CMAKE is None, reason="needs cmake")
@pytest.mark.parametrize("variant", CMAKE_VARIANTS)
def test_cmake_builds_the_library(tmp_path, variant):
    """CMakeLists.txt configures and builds csrc/ against LibTorch, and the library's ops run."""
    build = tmp_path / "cmake"
    configure = [CMAKE, "-S", str(ROOT), "-B", str(build), f"-DPython3_EXECUTABLE={sys.executable}",
                 f"-DSEGOPS_WITH_CUDA={'ON' if variant == 'cuda' else 'OFF'}"]
    subprocess.run(configure, check=True, capture_output=True, timeout=600)
    subprocess.run([CMAKE, "--build", str(build), "-j", str(os.cpu_count() or 1)], check=True, capture_output=True,
                   timeout=1200)
    library = build / "libsegops.so"
    assert library.exists()
    # A fresh process: segops._C would already own the `segops` op namespace here.
    check = f"""
import torch, torchvision
torch.ops.load_library({str(library)!r})
x = torch.randn(2, 3, 10, 12)
rois = torch.tensor([[0, 1.0, 1.0, 9.0, 7.0], [1, 0.0, 2.0, 5.0, 9.5]])
torch.testing.assert_close(torch.ops.segops.roi_align(x, rois, 1.0, 3, 4, 2, True),
                           torchvision.ops.roi_align(x, rois, (3, 4), 1.0, 2, True))
assert torch.equal(torch.ops.segops.roi_pool(x, rois, 1.0, 3, 4)[0], torchvision.ops.roi_pool(x, rois, (3, 4), 1.0))
assert (torch.ops.segops._cuda_version() > 0) == {variant == "cuda"}
"""
    subprocess.run([sys.executable, "-c", check], check=True, timeout=300)
