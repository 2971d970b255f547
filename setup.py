"""Builds segops._C (CPU kernels always, CUDA kernels when decided below) and, on request, the test-only
segops._emulation (the CUDA kernels compiled for the host).

Environment:
  SEGOPS_FORCE_CPU=1        CPU-only build, even when CUDA is available.
  FORCE_CUDA=1              build the CUDA kernels without a visible GPU (an error if torch or nvcc lacks CUDA).
  TORCH_CUDA_ARCH_LIST      CUDA architectures; without a GPU the default is DEFAULT_ARCH_LIST.
  CUDA_HOME                 the CUDA toolkit; otherwise found from the nvcc on PATH (through wrapper scripts).
  SEGOPS_BUILD_EMULATION=1  also build segops._emulation for the kernel-emulation tests.
  SEGOPS_SANITIZE=1         instrument the C++ (CPU kernels and emulation) with AddressSanitizer and UBSan; used by
                            scripts/sanitize.sh, which also preloads the runtimes.
  SEGOPS_TSAN=1             build segops._emulation alone, each launch on several OS threads, with ThreadSanitizer;
                            used by scripts/tsan.sh, which builds it outside the tree's own build and preloads libtsan.
  MAX_JOBS                  parallel compile jobs (default: the machine's cores).
"""

import glob
import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent.resolve()
sys.path.insert(0, str(ROOT / "tools"))
from cuda_env import find_cuda_home, pip_header_overlay  # noqa: E402

VERSION = (ROOT / "version.txt").read_text().strip()
DEFAULT_ARCH_LIST = "7.5;8.0;8.6;8.9;9.0+PTX"


def log(message):
    print(f"segops setup: {message}", file=sys.stderr, flush=True)


def env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def decide_cuda(torch):
    """Returns the CUDA toolkit folder to build against, or None for a CPU-only build."""
    force_cpu, force_cuda = env_flag("SEGOPS_FORCE_CPU"), env_flag("FORCE_CUDA")
    if force_cpu and force_cuda:
        raise SystemExit("segops setup: SEGOPS_FORCE_CPU=1 and FORCE_CUDA=1 contradict each other; set one")
    if force_cpu:
        log("SEGOPS_FORCE_CPU=1: CPU-only build")
        return None
    cuda_home = find_cuda_home(os.environ)
    if force_cuda:
        if torch.version.cuda is None:
            raise SystemExit(f"segops setup: FORCE_CUDA=1 but torch {torch.__version__} is a CPU-only build")
        if cuda_home is None:
            raise SystemExit(
                "segops setup: FORCE_CUDA=1 but no CUDA toolkit was found (CUDA_HOME="
                f"{os.environ.get('CUDA_HOME', '<unset>')}): set CUDA_HOME to a folder with bin/nvcc or put nvcc "
                "on PATH"
            )
        return cuda_home
    if torch.version.cuda is None or cuda_home is None:
        log(f"CPU-only build (torch CUDA: {torch.version.cuda}, CUDA toolkit: {cuda_home})")
        return None
    if not torch.cuda.is_available():
        log("CPU-only build: no GPU visible (set FORCE_CUDA=1 to build the CUDA kernels anyway)")
        return None
    return cuda_home


def emulation_extension(CppExtension, compile_args, link_args, define_macros=()):
    """segops._emulation: the CUDA kernels compiled for the host (csrc/common/emulation.h), for tests."""
    return CppExtension(
        "segops._emulation",
        ["csrc/emulation/emulated_ops.cpp", "csrc/python_module.cpp"]
        + sorted(set(glob.glob("csrc/common/*.cpp") + glob.glob("csrc/*/*_checks.cpp"))),
        include_dirs=[str(ROOT / "csrc")],
        define_macros=list(define_macros),
        extra_compile_args={"cxx": compile_args},
        extra_link_args=link_args,
    )


def extensions():
    import torch

    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    torch_version = torch.__version__.split("+")[0]
    if env_flag("SEGOPS_TSAN"):
        from torch.utils.cpp_extension import CppExtension

        log("SEGOPS_TSAN=1: building segops._emulation alone, launches on several OS threads, with ThreadSanitizer")
        tsan_args = ["-fsanitize=thread", "-O1", "-g", "-fno-omit-frame-pointer"]
        concurrent = [("SEGOPS_CONCURRENT_EMULATION", None)]
        return [emulation_extension(CppExtension, tsan_args, ["-fsanitize=thread"], concurrent)], torch_version
    cuda_home = decide_cuda(torch)
    if cuda_home is not None:
        os.environ["CUDA_HOME"] = str(cuda_home)  # read when cpp_extension is imported
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    cpp_sources = sorted(
        path for path in glob.glob("csrc/**/*.cpp", recursive=True) if not path.startswith("csrc/emulation/")
    )
    # at::parallel_for is OpenMP inside ATen's headers: without -fopenmp it silently runs serially.
    compile_args = {"cxx": ["-O3", "-fopenmp"]}
    link_args = ["-fopenmp"]
    sanitize_args = []
    if env_flag("SEGOPS_SANITIZE"):
        # float-cast-overflow is not part of -fsanitize=undefined, and hostile boxes are made of such casts. Every
        # finding aborts (no recovery), so a clean run is one that exits 0.
        sanitize_args = [
            "-fsanitize=address,undefined,float-cast-overflow",
            "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer",
            "-g",
        ]
        compile_args["cxx"] = ["-O1", "-fopenmp"] + sanitize_args
        link_args = link_args + sanitize_args
        log("SEGOPS_SANITIZE=1: C++ instrumented with AddressSanitizer and UBSan")
    if cuda_home is None:
        main = CppExtension(
            "segops._C",
            cpp_sources,
            include_dirs=[str(ROOT / "csrc")],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
    else:
        # Headers torch's CUDA headers need but the toolkit lacks, from the pip nvidia packages.
        overlay = pip_header_overlay(cuda_home, ROOT / "build" / "pip_cuda_include")
        include_dirs = [str(ROOT / "csrc")] + ([str(overlay)] if overlay else [])
        compile_args["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
        main = CUDAExtension(
            "segops._C",
            cpp_sources + sorted(glob.glob("csrc/**/*.cu", recursive=True)),
            include_dirs=include_dirs,
            define_macros=[("SEGOPS_WITH_CUDA", None)],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
        log(
            f"CUDA build: toolkit {cuda_home}, "
            f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(detected)')}, "
            f"headers missing from the toolkit taken from the pip nvidia packages via {overlay}"
        )
    modules = [main]
    if env_flag("SEGOPS_BUILD_EMULATION"):
        log("SEGOPS_BUILD_EMULATION=1: also building segops._emulation (CUDA kernels emulated on the host, for tests)")
        if sanitize_args:
            modules.append(emulation_extension(CppExtension, ["-O1"] + sanitize_args, sanitize_args))
        else:
            # The warp memory tracer (emulation/memory_trace.h): gcc's outline KASAN instrumentation calls
            # __asan_{load,store}<N>_noabort before every load and store, which the tracer defines (no sanitizer
            # runtime) and which return at once outside a traced launch. No vectorisation: a GPU thread's accesses
            # are scalar.
            tracer_args = [
                "-O2",
                "-fno-tree-vectorize",
                "-fsanitize=kernel-address",
                "--param=asan-instrumentation-with-call-threshold=0",
                "--param=asan-stack=0",
                "--param=asan-globals=0",
            ]
            modules.append(emulation_extension(CppExtension, tracer_args, [], [("SEGOPS_MEMTRACE", None)]))
    log(
        f"building {[module.name for module in modules]} against torch {torch.__version__} "
        f"with MAX_JOBS={os.environ['MAX_JOBS']}"
    )
    return modules, torch_version


def main():
    ext_modules, torch_version = extensions()  # first: it sets CUDA_HOME before cpp_extension is imported
    from torch.utils.cpp_extension import BuildExtension

    setup(
        version=VERSION,
        packages=find_packages(include=["segops", "segops.*"]),
        ext_modules=ext_modules,
        # The extension's C++ ABI is that of the torch it was compiled against.
        install_requires=[f"torch=={torch_version}"],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )


if __name__ == "__main__":
    main()
