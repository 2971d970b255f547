"""What was built, and the other ways to build: setup.py's decisions and the CMake library."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
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
    # The caller's own build choice (e.g. SEGOPS_FORCE_CPU=1 ./scripts/test.sh) must not mix into these requests.
    inherited = {k: v for k, v in os.environ.items() if k not in ("SEGOPS_FORCE_CPU", "FORCE_CUDA")}
    env = {**inherited, **env_overrides}
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
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            os.environ.get("SEGOPS_EXPECT_CUDA_BUILD") != "1", reason="CUDA CMake build only where FORCE_CUDA=1 builds"
        ),
    ),
]


@pytest.mark.slow
@pytest.mark.skipif(CMAKE is None, reason="needs cmake")
@pytest.mark.parametrize("variant", CMAKE_VARIANTS)
def test_cmake_builds_the_library(tmp_path, variant):
    """CMakeLists.txt configures and builds csrc/ against LibTorch, the library's ops run, and it installs as a
    CMake package that another project links."""
    build = tmp_path / "cmake"
    # An uninstrumented library, built and loaded in child processes: without the sanitizer runtimes that
    # scripts/sanitize.sh preloads for segops._C (CMake's compiler checks fail under them).
    env = {name: value for name, value in os.environ.items() if name != "LD_PRELOAD"}
    configure = [
        CMAKE,
        "-S",
        str(ROOT),
        "-B",
        str(build),
        f"-DPython3_EXECUTABLE={sys.executable}",
        f"-DSEGOPS_WITH_CUDA={'ON' if variant == 'cuda' else 'OFF'}",
    ]
    subprocess.run(configure, check=True, capture_output=True, timeout=600, env=env)
    subprocess.run(
        [CMAKE, "--build", str(build), "-j", str(os.cpu_count() or 1)],
        check=True,
        capture_output=True,
        timeout=1200,
        env=env,
    )
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
    subprocess.run([sys.executable, "-c", check], check=True, timeout=300, env=env)
    _install_and_link(build, tmp_path, env)


CONSUMER_CMAKE = """
cmake_minimum_required(VERSION 3.25)
project(consumer CXX)
find_package(segops {version} EXACT REQUIRED)
add_executable(consumer main.cpp)
target_link_libraries(consumer PRIVATE segops::segops)
"""


def _install_and_link(build, tmp_path, env):
    """`cmake --install` gives a package config: a project elsewhere finds segops::segops, links it, and runs."""
    prefix, consumer = tmp_path / "prefix", tmp_path / "consumer"
    subprocess.run(
        [CMAKE, "--install", str(build), "--prefix", str(prefix)], check=True, capture_output=True, timeout=300, env=env
    )
    (library,) = prefix.glob("lib*/libsegops.so")
    consumer.mkdir()
    (consumer / "CMakeLists.txt").write_text(CONSUMER_CMAKE.format(version=segops.__version__))
    (consumer / "main.cpp").write_text("int main() { return 0; }\n")  # loading libsegops.so is what is tested
    subprocess.run(
        [CMAKE, "-S", str(consumer), "-B", str(consumer / "build"), f"-DCMAKE_PREFIX_PATH={prefix}"],
        check=True,
        capture_output=True,
        timeout=300,
        env=env,
    )
    subprocess.run([CMAKE, "--build", str(consumer / "build")], check=True, capture_output=True, timeout=300, env=env)
    linked = subprocess.run(["ldd", str(consumer / "build" / "consumer")], capture_output=True, text=True, env=env)
    assert str(library.resolve()) in linked.stdout or "libsegops.so" in linked.stdout, linked.stdout
    # The installed library finds LibTorch by itself (its install RPATH) and registers the ops as it loads.
    subprocess.run([str(consumer / "build" / "consumer")], check=True, timeout=120, env=env)
    check = f"""
import torch
torch.ops.load_library({str(library)!r})
x = torch.arange(24.0).reshape(1, 1, 4, 6)
assert torch.ops.segops.roi_pool(x, torch.tensor([[0, 0.0, 0.0, 5.0, 3.0]]), 1.0, 1, 1)[0].item() == 23.0
"""
    subprocess.run([sys.executable, "-c", check], check=True, timeout=300, env=env)


# Files whose code runs on the CUDA path: the .cu launchers, the kernel headers, the ops' shared headers (math,
# drivers) and checks, and everything in common/ and roi_common/ they use.
CUDA_PATH_SOURCES = sorted(
    [
        *ROOT.glob("csrc/*/*_cuda.cu"),
        *ROOT.glob("csrc/*/*.cuh"),
        *ROOT.glob("csrc/*/*.h"),
        *ROOT.glob("csrc/*/*_checks.cpp"),
        *ROOT.glob("csrc/common/*.cpp"),
    ]
)
HOST_SYNC = re.compile(
    r"\.item\s*(<[^>]*>)?\s*\(|\.cpu\s*\(|\bnonzero\s*\(|_local_scalar_dense|\.tolist\s*\(|"
    r"cudaDeviceSynchronize|cudaStreamSynchronize|\.to\s*\(\s*(at::)?kCPU"
)


def test_cuda_path_sources_do_not_synchronise_with_the_host():
    # A copy to the host on the CUDA path stalls every call and breaks CUDA graph capture; rois values are checked in
    # the kernels there. (On a GPU, tests/test_roi_*.py also run forward and backward under sync debug mode "error"
    # and capture them in a CUDA graph.)
    assert CUDA_PATH_SOURCES
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in CUDA_PATH_SOURCES
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if HOST_SYNC.search(line.split("//")[0])
    ]
    assert not offenders, "host synchronisation on the CUDA path:\n" + "\n".join(offenders)


def test_the_sync_check_sees_synchronising_code():
    for line in ["rois.any().item<bool>()", "x.item()", "t.cpu()", "mask.nonzero()", "t.to(at::kCPU)"]:
        assert HOST_SYNC.search(line), line
    assert not HOST_SYNC.search("const int64_t items = 3; tensor.contiguous();")


# Mangled template arguments of the kernels' scalar type, after any integer or bool arguments (roi_align's kernels
# are <bool kMultiLevel, typename scalar_t>: ILb1EfE).
# A kernel's data type: its first template argument after any leading constants (Lb0E...), followed by the end of the
# list or by another argument (an index type, i or l; a constant, L...).
_KERNEL_DTYPE = re.compile(r"I(?:L\w+?E)*(f|d|N3c104HalfE|N3c108BFloat16E)(?:E|i|l|L)")


def ptx_functions(ptx: str):
    """(mangled name, body) of every .entry and .func of a PTX file."""
    heads = list(re.finditer(r"^\.(?:visible |weak )*\.(?:entry|func)\s+(?:\([^)]*\)\s*)?(\w+)", ptx, re.MULTILINE))
    for head, following in zip(heads, heads[1:] + [None]):
        yield head.group(1), ptx[head.start() : following.start() if following else len(ptx)]


def float64_in_lower_precision_kernels(ptx: str):
    """Names of the segops functions for float, float16 or bfloat16 data whose PTX has a float64 instruction."""
    found = []
    for name, body in ptx_functions(ptx):
        dtype = _KERNEL_DTYPE.search(name)
        if "segops" in name and dtype and dtype.group(1) != "d" and ".f64" in body:
            found.append(name)
    return found


def test_float64_scan_of_ptx_finds_float64_code():
    ptx = (
        ".visible .entry _ZN6segops6kernelIfEEvPT_(\n{\n.reg .f64 %fd<2>;\ncvt.f64.f32 %fd1, %f1;\n}\n"
        ".visible .entry _ZN6segops6kernelIdEEvPT_(\n{\nmul.f64 %fd2, %fd1, %fd1;\n}\n"
        ".visible .entry _ZN6segops6kernelIN3c104HalfEEEvPT_(\n{\nmul.f32 %f2, %f1, %f1;\n}\n"
        ".visible .entry _ZN6segops6kernelILb1EN3c108BFloat16EEEvPT_(\n{\ncvt.f64.f32 %fd1, %f1;\n}\n"
        ".visible .entry _ZN6segops6kernelILb0EdEEvPT_(\n{\nmul.f64 %fd2, %fd1, %fd1;\n}\n"
        ".visible .entry _ZN6segops6kernelIfiLb1EEEvPT_(\n{\ncvt.f64.f32 %fd1, %f1;\n}\n"
        ".visible .entry _ZN6segops6kernelIdiLb1EEEvPT_(\n{\nmul.f64 %fd2, %fd1, %fd1;\n}\n"
    )
    assert float64_in_lower_precision_kernels(ptx) == [
        "_ZN6segops6kernelIfEEvPT_",
        "_ZN6segops6kernelILb1EN3c108BFloat16EEEvPT_",
        "_ZN6segops6kernelIfiLb1EEEvPT_",
    ]


def demangle(names):
    """C++ names of mangled symbols (binutils' c++filt)."""
    result = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def int64_division_in_32bit_index_kernels(ptx: str):
    """(the 32-bit index instantiations of segops' kernels, the ones of them whose PTX divides 64-bit integers): a
    kernel templated on its index type (common/kernel.h's with_index_type) has `int` as its last template argument."""
    functions = [(name, body) for name, body in ptx_functions(ptx) if "segops" in name]
    kernels, dividing = [], []
    for (name, body), readable in zip(functions, demangle([name for name, _ in functions])):
        template = readable.split("(")[0].removeprefix("void ")
        if re.search(r"[<,] ?int[,>]", template):
            kernels.append(template)
            if re.search(r"\b(?:div|rem)\.[su]64\b", body):
                dividing.append(template)
    return kernels, dividing


def test_int64_division_scan_of_ptx_finds_64bit_divisions():
    ptx = (
        ".visible .entry _ZN6segops6kernelIfiEEvPT_(\n{\ndiv.s32 %r3, %r1, %r2;\n}\n"
        ".visible .entry _ZN6segops6kernelIdiEEvPT_(\n{\nrem.u64 %rd3, %rd1, %rd2;\n}\n"
        ".visible .entry _ZN6segops6kernelIflEEvPT_(\n{\ndiv.s64 %rd3, %rd1, %rd2;\n}\n"
        ".visible .entry _ZN6segops6kernelIfiLb1EEEvPT_(\n{\nrem.s64 %rd3, %rd1, %rd2;\n}\n"
    )
    assert int64_division_in_32bit_index_kernels(ptx) == (
        ["segops::kernel<float, int>", "segops::kernel<double, int>", "segops::kernel<float, int, true>"],
        ["segops::kernel<double, int>", "segops::kernel<float, int, true>"],
    )


@pytest.mark.skipif(
    os.environ.get("SEGOPS_EXPECT_CUDA_BUILD") != "1",
    reason="reads the PTX that the test command's CUDA build embeds (an architecture with +PTX)",
)
def test_kernels_on_32bit_indices_divide_in_32_bits():
    # A GPU divides 64-bit integers in a subroutine about 4x the length of a 32-bit division, and the elementwise
    # kernels split every flat index into coordinates by division: where the tensors allow 32-bit indices (ATen's
    # rule), none is left.
    expected = {
        "flow_warp_cuda": {
            "flow_warp_forward_kernel",
            "flow_warp_backward_flow_kernel",
            "flow_warp_cell_key_kernel",
            "flow_warp_backward_feature_atomic_kernel",
            "flow_warp_backward_feature_gather_kernel",
        },
        "max_unpool_cuda": {"max_unpool_winner_kernel", "max_unpool_forward_kernel", "max_unpool_backward_kernel"},
        "dilated_conv_cuda": {
            "dilated_conv_im2col_kernel",
            "dilated_conv_col2im_kernel",
            "dilated_conv_depthwise_kernel",
            "dilated_conv_depthwise_input_grad_kernel",
            "dilated_conv_depthwise_weight_partial_kernel",
        },
    }
    for modules in embedded_ptx_by_arch().values():
        for stem, names in expected.items():
            # The module compiled from <stem>.cu: the one holding its kernels.
            scanned = [int64_division_in_32bit_index_kernels(ptx) for ptx in modules]
            found = [
                (kernels, dividing)
                for kernels, dividing in scanned
                if any(kernel.split("<")[0].removeprefix("segops::") in names for kernel in kernels)
            ]
            assert len(found) == 1, (stem, [kernels for kernels, _ in scanned])
            ((kernels, dividing),) = found
            assert {kernel.split("<")[0].removeprefix("segops::") for kernel in kernels} == names, (stem, kernels)
            assert dividing == [], (stem, dividing)


# What each float32/float16/bfloat16 kernel may use on sm_90: 64 registers (256-thread blocks then keep at least
# half of an SM's warps resident) and 64 bytes of stack (per-thread arrays that spill to local memory).
REGISTER_BUDGET, STACK_BUDGET = 64, 64
# The kernels over budget today, each to be brought within it (issue 24: the deterministic RoI gather, bucketed by level
# and image; the lattice embedding's per-point arrays). The test fails when this list is wrong either way.
OVER_BUDGET = {
    # The embedding for d > 8 features (kLatticeUnrolledFeatures): its 17-element arrays take 127 registers; d <= 8,
    # the dense CRF's, has kernels of its own within the budget.
    "segops::lattice_embed_kernel<float, 0>",
    # The deterministic RoIAlign gather: 109 registers (64-bit sample geometry); held to 64 it would spill 144 bytes.
    *(
        f"segops::roi_gather_kernel<segops::RoIAlignGather<{t}>, float>"
        for t in ("float", "c10::Half", "c10::BFloat16")
    ),
}


def cuobjdump(*args: str) -> str:
    """What `cuobjdump <args> segops/_C*.so` prints. torch's dependency triton ships cuobjdump; the CUDA toolkit here
    does not."""
    import segops._C

    triton = importlib.util.find_spec("triton")
    assert triton is not None, "triton (installed with torch) is needed for its cuobjdump"
    tool = Path(triton.origin).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return subprocess.run([str(tool), *args, segops._C.__file__], capture_output=True, text=True, check=True).stdout


def ptx_modules_by_arch(cuobjdump_output: str):
    """{architecture: [PTX text of each module]} from `cuobjdump -ptx`: one module per .cu file and architecture
    built with +PTX (TORCH_CUDA_ARCH_LIST)."""
    modules = {}
    for section in cuobjdump_output.split("Fatbin ptx code:")[1:]:
        arch = re.search(r"^arch = (\w+)$", section, re.MULTILINE)
        assert arch, section[:200]
        modules.setdefault(arch.group(1), []).append(section)
    return modules


def embedded_ptx_by_arch():
    """The PTX the built segops._C carries: the full test command builds sm_90 with +PTX (torch adds +PTX to the
    architecture it detects on a GPU machine too). Read from the library, not from nvcc's intermediates, because a
    compile that ccache serves writes no intermediates."""
    modules = ptx_modules_by_arch(cuobjdump("-ptx"))
    assert modules, "the CUDA build embeds no PTX: its TORCH_CUDA_ARCH_LIST has no architecture with +PTX"
    return modules


def test_ptx_modules_are_split_by_architecture():
    sample = (
        "\nFatbin elf code:\n================\narch = sm_90\n"
        "\nFatbin ptx code:\n================\narch = sm_90\ncode version = [9,0]\n.entry a\n"
        "\nFatbin ptx code:\n================\narch = sm_80\n.entry b\n"
        "\nFatbin ptx code:\n================\narch = sm_90\n.entry c\n"
    )
    modules = ptx_modules_by_arch(sample)
    assert sorted(modules) == ["sm_80", "sm_90"]
    assert [".entry a" in m for m in modules["sm_90"]] == [True, False]
    assert [".entry c" in m for m in modules["sm_90"]] == [False, True]
    assert ".entry b" in modules["sm_80"][0]


def kernel_resources(cuobjdump_output: str, arch: str = "sm_90"):
    """{demangled kernel name without its parameters: (registers, stack bytes)} of one architecture's kernels, from
    `cuobjdump -res-usage`."""
    sections = re.split(r"\narch = ", cuobjdump_output)
    rows = [
        row
        for section in sections
        if section.startswith(arch + "\n")
        for row in re.findall(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+)", section)
    ]
    names = subprocess.run(["c++filt"], input="\n".join(r[0] for r in rows), capture_output=True, text=True, check=True)
    return {
        name.split("(")[0].removeprefix("void "): (int(reg), int(stack))
        for name, (_, reg, stack) in zip(names.stdout.splitlines(), rows)
    }


def test_kernel_resources_are_read_from_cuobjdump_output():
    sample = (
        "\narch = sm_90\n Function _ZN6segops4testIfEEvv:\n  REG:72 STACK:8 SHARED:0\n"
        "\narch = sm_80\n Function _ZN6segops4testIfEEvv:\n  REG:40 STACK:0 SHARED:0\n"
    )
    assert kernel_resources(sample) == {"segops::test<float>": (72, 8)}
    assert kernel_resources(sample, "sm_80") == {"segops::test<float>": (40, 0)}


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SEGOPS_EXPECT_CUDA_BUILD") != "1", reason="reads the sm_90 CUDA build's kernels")
def test_float_kernels_stay_within_the_register_and_stack_budget():
    resources = kernel_resources(cuobjdump("-res-usage"))
    if not resources:
        pytest.skip("the CUDA build has no sm_90 code (TORCH_CUDA_ARCH_LIST)")
    lower_precision = {name: used for name, used in resources.items() if "double" not in name}
    assert len(lower_precision) > 30, sorted(resources)
    over = {
        name
        for name, (registers, stack) in lower_precision.items()
        if registers > REGISTER_BUDGET or stack > STACK_BUDGET
    }
    report = {name: lower_precision.get(name) for name in sorted(over ^ OVER_BUDGET)}
    assert over == OVER_BUDGET, f"over budget, or no longer: (registers, stack bytes) {report}"


@pytest.mark.skipif(
    os.environ.get("SEGOPS_EXPECT_CUDA_BUILD") != "1",
    reason="reads the PTX that the test command's CUDA build embeds (an architecture with +PTX)",
)
def test_float_kernels_have_no_float64_instructions():
    # Consumer GPUs run float64 at 1/32 to 1/64 of the float32 rate: a float, float16 or bfloat16 kernel must not
    # compute in double anywhere (the RoIAlign tap pruning once did).
    sources = sorted(ROOT.glob("csrc/**/*.cu"))
    for arch, modules in embedded_ptx_by_arch().items():
        assert len(modules) == len(sources), (arch, len(modules), sources)  # one module per .cu file
        for ptx in modules:
            assert _KERNEL_DTYPE.search(ptx), f"a {arch} PTX module without segops kernels"
            assert float64_in_lower_precision_kernels(ptx) == [], arch


def test_sdist_holds_every_source_the_build_reads(tmp_path):
    # `pip install` of the sdist compiles from what MANIFEST.in lists; a header or .inc left out fails only there.
    result = subprocess.run(
        [
            sys.executable,
            "setup.py",
            "-q",
            "egg_info",
            "--egg-base",
            str(tmp_path),
            "sdist",
            "--dist-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (archive,) = tmp_path.glob("segops-*.tar.gz")
    with tarfile.open(archive) as tar:
        packed = {Path(*Path(name).parts[1:]).as_posix() for name in tar.getnames()}
    sources = [
        p.relative_to(ROOT).as_posix()
        for folder in ("csrc", "tools", "cmake")
        for p in (ROOT / folder).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    assert any(source.endswith(".inc") for source in sources)
    missing = sorted(set(sources) - packed)
    assert not missing, f"files under csrc/, tools/ and cmake/ missing from the sdist: {missing}"
    for required in ("LICENSE", "setup.py", "pyproject.toml", "version.txt", "CMakeLists.txt", "segops/__init__.py"):
        assert required in packed, f"{required} missing from the sdist"
    assert "BSD 3-Clause" in (ROOT / "LICENSE").read_text()


def _build_stamp_module():
    spec = importlib.util.spec_from_file_location("build_stamp", ROOT / "tools" / "build_stamp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_build_is_reused_only_from_the_same_sources_with_the_parts_asked_for(tmp_path, monkeypatch):
    """tools/build_stamp.py, which lets test.sh and bench.sh share one build: a recorded build serves a command while
    the sources and torch are those it was built from, it has every part asked for, and the build settings the
    command sets match."""
    stamp = _build_stamp_module()
    monkeypatch.setattr(stamp, "STAMP", tmp_path / "segops-build.json")
    for name in stamp.SETTINGS:
        monkeypatch.delenv(name, raising=False)
    assert stamp.check({"cuda": False, "emulation": False}) == "no build recorded"

    def record(**changes):
        recorded = {
            "fingerprint": stamp.fingerprint(),
            "settings": {"TORCH_CUDA_ARCH_LIST": "9.0"},
            "cuda": True,
            "emulation": False,
            **changes,
        }
        stamp.STAMP.write_text(json.dumps(recorded))

    record()
    assert stamp.check({"cuda": False, "emulation": False}) == ""  # bench.sh: any build serves
    assert stamp.check({"cuda": True, "emulation": False}) == ""
    assert stamp.check({"cuda": True, "emulation": True}) == "the last build lacks: emulation"
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")  # a command that asks for other architectures rebuilds
    assert "TORCH_CUDA_ARCH_LIST" in stamp.check({"cuda": True, "emulation": False})
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    assert stamp.check({"cuda": True, "emulation": False}) == ""
    record(fingerprint="0" * 64)  # a source under csrc/ (or setup.py, tools/, torch) changed since
    assert stamp.check({"cuda": False, "emulation": False}) == "sources or torch changed since the last build"


def test_the_fingerprint_follows_the_compiled_sources_only(tmp_path, monkeypatch):
    stamp = _build_stamp_module()
    copy = tmp_path / "tree"
    for relative in ("setup.py", "pyproject.toml", "version.txt", "tools/cuda_env.py", "csrc/common/checks.h"):
        (copy / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / relative, copy / relative)
    monkeypatch.setattr(stamp, "ROOT", copy)
    before = stamp.fingerprint()
    (copy / "segops").mkdir()
    (copy / "segops" / "__init__.py").write_text("# Python is read at run time: no rebuild\n")
    assert stamp.fingerprint() == before
    (copy / "csrc" / "common" / "checks.h").write_text("// changed\n")
    assert stamp.fingerprint() != before
