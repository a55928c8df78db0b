"""Builds the native library with CMake (CMakeLists.txt holds the one source list)
and places it in the package as teachcompute_ext/_C*.so, with the ops' public
functions (their argument parsing) as teachcompute_ext/_fastcall*.so.

    pip install --no-build-isolation -e .     # editable, against the installed torch
    pip install --no-build-isolation .

Environment:
    TEACHCOMPUTE_EXT_CUDA=1/0   force the CUDA kernels on or off (default: on when
                                nvcc is found and torch is a CUDA build)
    TORCH_CUDA_ARCH_LIST        GPU architectures, torch's syntax (default "8.0;9.0+PTX")
    MAX_JOBS                    parallel compile jobs (default: all cores)
    TEACHCOMPUTE_EXT_BUILD_TYPE Release (default) or Debug / RelWithDebInfo
    TEACHCOMPUTE_EXT_CPP_TESTS=1 also build the GoogleTest suite in the same tree
                                (build/py<ver>-<type>; run it with ctest --test-dir there)
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _cmake_executable():
    # CUDA as C++20 needs CMake >= 3.27 (the PyPI `cmake` package is preferred over an older system one).
    try:
        import cmake

        return os.path.join(cmake.CMAKE_BIN_DIR, "cmake")
    except ImportError:
        return shutil.which("cmake") or "cmake"


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import torch.utils  # the torch we build against: the one installed

        build_type = os.environ.get("TEACHCOMPUTE_EXT_BUILD_TYPE", "Release")
        # A persistent build tree (not pip's temporary one): rebuilds are incremental.
        tag = f"py{sys.version_info.major}{sys.version_info.minor}-{build_type.lower()}"
        build_dir = ROOT / "build" / tag
        build_dir.mkdir(parents=True, exist_ok=True)
        cuda = os.environ.get("TEACHCOMPUTE_EXT_CUDA", "AUTO")
        # The C++ tests (GoogleTest) in the same build tree: `ctest --test-dir build/<tag>`.
        cpp_tests = os.environ.get("TEACHCOMPUTE_EXT_CPP_TESTS", "0") == "1"
        cmake = _cmake_executable()
        configure = [
            cmake,
            "-S",
            str(ROOT),
            "-B",
            str(build_dir),
            "-G",
            "Ninja",
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DTORCH_CMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DTEACHCOMPUTE_EXT_CUDA={cuda}",
            f"-DTEACHCOMPUTE_EXT_TESTS={'ON' if cpp_tests else 'OFF'}",
        ]
        subprocess.check_call(configure)
        # _C is the operator library; _fastcall the public functions' argument parsing
        # (csrc/python/fastcall.cpp), configured only where Python's headers are.
        if ext.name.endswith("_fastcall"):
            marker = build_dir / "fastcall_module.txt"
            if not marker.exists():
                print(
                    "teachcompute_ext: _fastcall is not part of this build (no Python headers); "
                    "the ops' public functions will be torch.ops' entry points"
                )
                return
            cmake_target, built = "tce_fastcall", build_dir / marker.read_text().strip()
        else:
            cmake_target, built = "teachcompute_ext", build_dir / "libteachcompute_ext.so"
        build = [cmake, "--build", str(build_dir)]
        if not cpp_tests:
            build += ["--target", cmake_target]
        if os.environ.get("MAX_JOBS"):
            build += ["-j", os.environ["MAX_JOBS"]]
        subprocess.check_call(build)
        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built, target)


setup(
    ext_modules=[CMakeExtension("teachcompute_ext._C"), CMakeExtension("teachcompute_ext._fastcall")],
    cmdclass={"build_ext": CMakeBuild},
)
