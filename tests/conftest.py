import os

import pytest
import torch

CUDA_AVAILABLE = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs a CUDA device")

# The tests judge float32 results by float32's rounding: cuDNN's TF32 (on by default, and followed by segops'
# convolutions as by F.conv2d) is off but where a test turns it on (test_cuda_follows_cudnns_tf32_switch_as_conv2d).
torch.backends.cudnn.allow_tf32 = False

# Devices every op test runs on; CUDA is listed always so the GPU tests are written, and skipped here.
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, requires_cuda])]


# scripts/tsan.sh: the emulation runs each launch on several OS threads, so float atomic adds sum in an order that
# changes from run to run, as on a GPU (tests compare such sums with a tolerance, not bit for bit).
CONCURRENT_EMULATION = bool(os.environ.get("SEGOPS_EMULATION_LIBRARY"))


def emulation_module():
    """segops._emulation (the CUDA kernels emulated on the host), or a skip; a failure when the test command
    promised it (SEGOPS_REQUIRE_EMULATION=1), so CI cannot silently drop these tests. Under scripts/tsan.sh, the
    library SEGOPS_EMULATION_LIBRARY names (the concurrent emulation, with ThreadSanitizer) in its place."""
    library = os.environ.get("SEGOPS_EMULATION_LIBRARY")
    if library:
        library = os.path.realpath(library)  # as load_library records it
        if library not in torch.ops.loaded_libraries:
            torch.ops.load_library(library)
        return torch.ops.segops_emulation
    try:
        import segops._emulation  # noqa: F401
    except ImportError:
        if os.environ.get("SEGOPS_REQUIRE_EMULATION") == "1":
            pytest.fail("segops._emulation is missing: build with SEGOPS_BUILD_EMULATION=1")
        pytest.skip("segops._emulation not built (SEGOPS_BUILD_EMULATION=1)")
    return torch.ops.segops_emulation
