"""The check of the CUDA kernels' machine code (benchmarks/sass_check.py), on this machine,
without a GPU: it reads the library's sm_90 kernels, catches a planted per-element 64-bit
division (and passes a kernel written to the rules), and holds the kernels listed as
rebuilt to the bandwidth-bound rules."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import teachcompute_ext

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import sass_check  # noqa: E402

CUOBJDUMP = sass_check.find_cuobjdump()
needs_cuobjdump = pytest.mark.skipif(CUOBJDUMP is None, reason="no cuobjdump (triton or the CUDA toolkit)")
needs_cuda_build = pytest.mark.skipif(
    "CUDA" not in teachcompute_ext.compiled_backends(), reason="the library was built without its CUDA kernels"
)

PLANTED = r"""
#include <cstdint>
// A per-element 64-bit division and remainder: a gathered flat index split into (row,
// column), as the kernels that divide an element's index by the dims did. (A grid-stride
// loop's own index nvcc strength-reduces: its division leaves the loop.)
extern "C" __global__ void __launch_bounds__(256)
    divides(const float* x, const int64_t* flat, float* y, int64_t n, int64_t cols, int64_t ld) {
  for (int64_t i = blockIdx.x * 256LL + threadIdx.x; i < n; i += int64_t(gridDim.x) * 256) {
    const int64_t f = flat[i], r = f / cols, c = f % cols;
    y[i] = x[r * ld + c] * 2.0f;
  }
}
// The rules: addresses advanced by a stride, 16-byte loads and stores.
extern "C" __global__ void __launch_bounds__(256) streams(const float4* x, float4* y, int64_t n4) {
  for (int64_t i = blockIdx.x * 256LL + threadIdx.x; i < n4; i += int64_t(gridDim.x) * 256) {
    float4 v = x[i];
    v.x *= 2.0f; v.y *= 2.0f; v.z *= 2.0f; v.w *= 2.0f;
    y[i] = v;
  }
}
"""


@needs_cuobjdump
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc")
def test_the_check_catches_a_planted_per_element_division(tmp_path):
    src, cubin = tmp_path / "planted.cu", tmp_path / "planted.cubin"
    src.write_text(PLANTED)
    subprocess.run(["nvcc", "-cubin", "-arch=sm_90", "-O3", "-o", str(cubin), str(src)], check=True, timeout=300)
    kernels = {k.demangled: k for k in sass_check.read(str(cubin), CUOBJDUMP).values()}
    assert set(kernels) == {"divides", "streams"}
    bad, good = kernels["divides"], kernels["streams"]
    assert bad.calls_in_loop >= 1, "the 64-bit division is a subroutine call inside the loop"
    assert any("division" in p for p in bad.problems()) and "no 128-bit global access" in bad.problems()
    assert good.problems() == [] and good.vector128 >= 2 and good.loops
    assert sass_check.main([str(cubin), "--check", "--require", "divides"]) == 1
    assert sass_check.main([str(cubin), "--check", "--require", "streams"]) == 0


@needs_cuobjdump
@needs_cuda_build
def test_the_librarys_kernels_are_read_and_the_rebuilt_ones_keep_the_rules(capsys):
    kernels = sass_check.read(sass_check.library_path(), CUOBJDUMP)
    counts = sass_check.summary(kernels)
    assert counts["kernels"] > 100, counts
    print(counts)  # the figures the issue tracks: division in a loop, 128-bit access, local memory
    rebuilt = [k for k in kernels.values() if any(__import__("re").search(p, k.demangled) for p in sass_check.REBUILT)]
    assert [(k.demangled, k.problems()) for k in rebuilt if k.problems()] == []


def test_the_summary_counts_what_it_says():
    text = """
        Function : k
        /*0000*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0010*/                   CALL.REL.NOINC 0x100 ;
        /*0020*/                   LDL R5, [R1] ;
        /*0030*/              @!P0 BRA 0x0000 ;
        /*0040*/                   STG.E.64 desc[UR4][R2.64], R4 ;
        /*0050*/                   EXIT ;
    """
    (k,) = sass_check.parse_sass(text).values()
    assert k.loops == [(0, 0x30)] and k.calls_in_loop == 1 and k.loads == {128: 1} and k.stores == {64: 1}
    assert k.spills and len(k.problems()) == 2  # the call in the loop, the spill; it has 128-bit access
    assert os.path.basename(__file__) == "test_sass.py"
