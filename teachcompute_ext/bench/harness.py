"""The benchmark harness every op family uses.

For each case: check our result against torch's (a wrong result is reported,
never timed), then time ours and torch's in the same process, interleaved in
rounds so that machine noise hits both alike, and report medians, the ratio
(torch time / our time: > 1 means we are faster), the achieved GB/s (or
TFLOP/s) and its percentage of the bound measured in the same run (the copy
bandwidth, or the matmul rate). CPU times come from perf_counter, CUDA times
from CUDA events. Results go to JSON with the device, versions and sizes.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

import teachcompute_ext


@dataclass
class Case:
    op: str                              # our op, e.g. "vector_sum"
    shape: str                           # human-readable sizes, e.g. "1e8"
    dtype: torch.dtype
    device: str
    ours: Callable[[], object]
    baselines: dict                      # label -> callable, e.g. {"torch.sum": ...}
    bytes_moved: Optional[int] = None    # fewest bytes the op must move (for GB/s)
    flops: Optional[float] = None        # for TFLOP/s
    check: Optional[Callable[[object, object], None]] = None  # raises if ours != baseline
    note: str = ""


@dataclass
class Timing:
    median_s: float
    runs: int
    samples: list = field(default_factory=list)


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time_batch(fn, device, iters):
    """Mean seconds per call over `iters` back-to-back calls."""
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / iters
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def time_interleaved(fns: dict, device: str, rounds: int = 15, min_batch_s: float = 0.02, warmup: int = 3):
    """Times every callable of `fns` in alternating rounds; returns label -> Timing."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    # Calls per batch so that one batch lasts about min_batch_s (timer resolution, launch noise).
    iters = {}
    for label, fn in fns.items():
        once = max(_time_batch(fn, device, 1), 1e-7)
        iters[label] = max(1, min(1000, int(min_batch_s / once)))
    samples = {label: [] for label in fns}
    for r in range(rounds):
        order = list(fns) if r % 2 == 0 else list(reversed(fns))
        for label in order:
            samples[label].append(_time_batch(fns[label], device, iters[label]))
    return {label: Timing(statistics.median(s), rounds * iters[label], s) for label, s in samples.items()}


def keep_allocator_warm() -> str:
    """Stops glibc from returning large blocks to the OS between calls.

    By default every tensor over 32 MB is a fresh mmap, so each call of an op
    with a 64 MB output first page-faults 16K pages (about 20 ms here, five
    times the kernel), for us and for torch alike; the ratio then measures the
    OS. With mmap off and no trimming, freed memory is reused as in a training
    loop's steady state. Returns what was done, for the JSON."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
        return "warm (glibc: no mmap, no trim)" if ok else "default (mallopt refused)"
    except OSError:
        return "default (not glibc)"


def copy_bandwidth(device: str, nbytes: int = 256 << 20, rounds: int = 15) -> float:
    """Bytes/s of a large tensor copy (bytes read + bytes written): the memory bound."""
    n = nbytes // 4
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    t = time_interleaved({"copy": lambda: dst.copy_(src)}, device, rounds=rounds)["copy"]
    return 2 * nbytes / t.median_s


def matmul_rate(device: str, dtype=torch.bfloat16, n: int = 4096, rounds: int = 10) -> float:
    """FLOP/s of torch.matmul on square matrices: the compute bound."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = time_interleaved({"mm": lambda: a @ b}, device, rounds=rounds)["mm"]
    return 2 * n**3 / t.median_s


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()})"


ALLOCATOR = "default"


def environment(device: str) -> dict:
    return {
        "cpu_allocator": ALLOCATOR,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "teachcompute_ext": teachcompute_ext.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }


def default_check(ours, theirs, dtype):
    """Relative error in the norm against the baseline, within the dtype's tolerance."""
    a = torch.as_tensor(ours).double().cpu()
    b = torch.as_tensor(theirs).double().cpu()
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    denom = max(b.norm().item(), 1e-30)
    err = (a - b).norm().item() / denom
    if not (err <= tol):
        raise AssertionError(f"relative error {err:.3e} > {tol:.0e}")


def run_cases(cases, bound_bytes_per_s=None, bound_flops_per_s=None, rounds=15, min_batch_s=0.02,
              progress=None):
    """Checks and times each case; returns a list of result dicts."""
    results = []
    for case in cases:
        if progress:
            progress(case)
        row = {
            "op": case.op, "shape": case.shape, "dtype": str(case.dtype).replace("torch.", ""),
            "device": case.device, "note": case.note,
        }
        first_baseline = next(iter(case.baselines.values()))
        try:
            ours_out = case.ours()
            theirs_out = first_baseline()
            (case.check or (lambda a, b: default_check(a, b, case.dtype)))(ours_out, theirs_out)
        except Exception as e:  # a wrong (or failing) result is reported, not timed
            row["error"] = f"{type(e).__name__}: {e}"
            results.append(row)
            continue
        del ours_out, theirs_out
        timings = time_interleaved({"ours": case.ours, **case.baselines}, case.device,
                                   rounds=rounds, min_batch_s=min_batch_s)
        ours_s = timings["ours"].median_s
        row["ours_ms"] = ours_s * 1e3
        row["baselines"] = {}
        for label in case.baselines:
            t = timings[label].median_s
            # Ratio of medians, and the median of per-round ratios (robust to drift).
            per_round = [b / a for a, b in zip(timings["ours"].samples, timings[label].samples)]
            row["baselines"][label] = {
                "ms": t * 1e3, "ratio": t / ours_s, "ratio_per_round_median": statistics.median(per_round),
            }
        if case.bytes_moved:
            row["GB_per_s"] = case.bytes_moved / ours_s / 1e9
            if bound_bytes_per_s:
                row["pct_of_bound"] = 100 * case.bytes_moved / ours_s / bound_bytes_per_s
        if case.flops:
            row["TFLOP_per_s"] = case.flops / ours_s / 1e12
            if bound_flops_per_s:
                row["pct_of_bound"] = 100 * case.flops / ours_s / bound_flops_per_s
        results.append(row)
    return results


def format_table(results) -> str:
    header = f"{'op':<26}{'shape':<26}{'dtype':<10}{'device':<7}{'ours ms':>10}  {'baseline':<22}{'ms':>10}{'ratio':>8}{'GB/s':>9}{'TF/s':>7}{'%bound':>8}"
    lines = [header, "-" * len(header)]
    for r in results:
        head = f"{r['op']:<26}{r['shape']:<26}{r['dtype']:<10}{r['device']:<7}"
        if "error" in r:
            lines.append(head + f"  WRONG RESULT, not timed: {r['error']}")
            continue
        for i, (label, b) in enumerate(r["baselines"].items()):
            ours = f"{r['ours_ms']:>10.4f}" if i == 0 else " " * 10
            gbs = f"{r['GB_per_s']:>9.1f}" if "GB_per_s" in r and i == 0 else " " * 9
            tfs = f"{r['TFLOP_per_s']:>7.2f}" if "TFLOP_per_s" in r and i == 0 else " " * 7
            pct = f"{r['pct_of_bound']:>7.1f}%" if "pct_of_bound" in r and i == 0 else " " * 8
            lines.append((head if i == 0 else " " * len(head)) + ours
                         + f"  {label:<22}{b['ms']:>10.4f}{b['ratio']:>7.2f}x{gbs}{tfs}{pct}")
    return "\n".join(lines)


def write_json(path, family, device, results, bounds):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    doc = {"family": family, "environment": environment(device), "bounds": bounds, "results": results}
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    return path


def run_family(family, cases, device, quick, out_dir, progress=None, rounds=None):
    """Measures the bound, checks and times `cases`, writes <out_dir>/<family>-<device>.json."""
    rounds = rounds or (5 if quick else 11)
    bound = copy_bandwidth(device, nbytes=(64 << 20) if quick else (512 << 20))
    results = run_cases(cases, bound_bytes_per_s=bound, rounds=rounds, min_batch_s=0.01 if quick else 0.05,
                        progress=progress)
    path = write_json(os.path.join(out_dir, f"{family}-{device}.json"), family, device, results,
                      {"copy_GB_per_s": bound / 1e9})
    return results, bound, path


def family_main(doc, run):
    """Command line of a standalone family script (the report's is teachcompute_ext.bench.__main__)."""
    import argparse

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats (CI)")
    p.add_argument("--out", default="bench-out")
    p.add_argument("--cold-allocator", action="store_true", help="see benchmarks/run.py --help")
    args = p.parse_args()
    global ALLOCATOR
    if not args.cold_allocator:
        ALLOCATOR = keep_allocator_warm()
    results, bound, path = run(args.device, args.quick, args.out)
    print(f"copy bandwidth ({args.device}): {bound / 1e9:.1f} GB/s")
    print(format_table(results))
    print(f"wrote {path}")
