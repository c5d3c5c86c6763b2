"""Builds twoway_fast._C: the CPU kernels always, the CUDA kernels when torch has CUDA and a toolkit.
It compiles against the torch already installed: `pip install --no-build-isolation .` (see NO_TORCH).

Environment:
  FORCE_CUDA=1 / FORCE_CUDA=0   build the CUDA kernels / never build them (default: auto-detect)
  TORCH_CUDA_ARCH_LIST          target GPUs; defaults to one that includes 9.0 (H100/H200)
  TWOWAY_DEBUG=1                -O0 -g build
  TWOWAY_SANITIZE=1             -fsanitize=address,undefined (CPU build only)
"""
import glob
import os
import sys
from pathlib import Path

from setuptools import setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # an isolated build environment: see NO_TORCH
    torch = cpp_extension = None

NO_TORCH = """
twoway_fast compiles a C++/CUDA extension against the torch it will run with, so its build must see
that torch, and this build cannot import torch. pip's build isolation is the usual cause: it builds in
a fresh environment without your torch. Install torch first, then build without isolation:

    pip install torch
    pip install --no-build-isolation .      (in the source tree; or name the sdist file instead of .)
"""
# Only an sdist needs no torch. Everything else stops at once, even the metadata pip asks for first:
# metadata would let pip resolve and download a torch (perhaps a CUDA build of gigabytes) before failing.
DEPENDENCIES = ["numpy", "tqdm", "matplotlib", "scikit-learn"]
ROOT = Path(__file__).parent.resolve()
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"
STANDARD_CUDA_HOMES = ["/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]


def find_cuda_home():
    """torch's guess, unless it holds no CUDA headers (the nvcc on PATH may be a wrapper script)."""
    candidates = [cpp_extension.CUDA_HOME, os.environ.get("CUDA_HOME"), *STANDARD_CUDA_HOMES]
    for home in candidates:
        if home and (Path(home) / "include" / "cuda_runtime.h").exists():
            return home
    return None


def want_cuda():
    forced = os.environ.get("FORCE_CUDA")
    if forced is not None:
        return forced == "1"
    return torch.version.cuda is not None and find_cuda_home() is not None


def write_build_info():
    """Record the torch this build compiles against; __init__ refuses to load under another one."""
    (ROOT / "twoway_fast" / "_build_info.py").write_text(
        "# Written by setup.py at build time.\n"
        f"TORCH_VERSION = {torch.__version__!r}\n"
        f"WITH_CUDA = {want_cuda()!r}\n"
    )


def extension():
    # setuptools wants source paths relative to setup.py
    sources = sorted(str(p.relative_to(ROOT)) for pattern in ("csrc/*.cpp", "csrc/cpu/*.cpp")
                     for p in ROOT.glob(pattern))
    debug = os.environ.get("TWOWAY_DEBUG") == "1"
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    if os.uname().machine == "x86_64":
        cxx.append("-march=x86-64-v2")  # SSE4.2: every x86_64 server of the last decade
    # -fno-trapping-math: nothing here uses floating-point traps, and without it GCC will not turn the
    # kernels' float selects (LeakyReLU) into vector blends, leaving their loops scalar.
    # -ffp-contract=off: the passes' AVX-512 build (csrc/cpu/cpu_builds.h) may not fuse a * b + c into
    # an FMA that the baseline build rounds twice, so both give the same bits.
    # -fno-math-errno: nothing reads errno; without it GCC keeps a sqrt in a loop (Adam's update) a call
    # that may set errno, and the loop scalar. The square roots round as before (IEEE).
    # The C++ standard is torch's choice (c++17 or c++20 by version).
    cxx += ["-fopenmp", "-fno-trapping-math", "-ffp-contract=off", "-fno-math-errno"]
    ldflags = ["-fopenmp"]
    if os.environ.get("TWOWAY_SANITIZE") == "1":
        cxx += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
        ldflags += ["-fsanitize=address,undefined"]
    include_dirs = [str((ROOT / "csrc").resolve())]
    if not want_cuda():
        return cpp_extension.CppExtension(
            "twoway_fast._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx}, extra_link_args=ldflags, py_limited_api=False,
        )
    cuda_home = find_cuda_home()
    if cuda_home is None:
        raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit with include/cuda_runtime.h was found")
    cpp_extension.CUDA_HOME = cuda_home  # torch may have guessed a wrapper script's folder
    os.environ.setdefault("CUDA_HOME", cuda_home)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
    sources += sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("csrc/cuda/*.cu"))
    nvcc = ["-O3", "-lineinfo"]  # no --use_fast_math: the mask threshold and BN need IEEE sqrt/division
    return cpp_extension.CUDAExtension(
        "twoway_fast._C", sources, include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx + ["-DTWOWAY_WITH_CUDA"], "nvcc": nvcc + ["-DTWOWAY_WITH_CUDA"]},
        extra_link_args=ldflags,
    )


def torch_requirement():
    """A built extension loads only under the torch it was compiled against (twoway_fast/_extension.py),
    so a build pins that torch's release; the sources alone (an sdist) build against torch 2.11 or later."""
    if torch is None or "sdist" in sys.argv[1:]:
        return "torch>=2.11"
    return f"torch=={torch.__version__.split('+')[0]}"


if torch is None:
    if "sdist" not in sys.argv[1:]:
        sys.exit(NO_TORCH)
    setup(install_requires=[torch_requirement(), *DEPENDENCIES])
else:
    write_build_info()
    setup(
        install_requires=[torch_requirement(), *DEPENDENCIES],
        ext_modules=[extension()],
        cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    )
