"""The benchmark harness every op family uses.

For each case: check our result against every baseline's (a wrong result is
reported, never timed), then time ours and the baselines in the same process,
interleaved in rounds so that machine noise hits all alike, and report
medians, the ratio (baseline time / our time: > 1 means we are faster), the
achieved GB/s (or TFLOP/s) and its percentage of the bound measured in the
same run (the copy bandwidth, or the matmul rate). CPU times come from
perf_counter, CUDA times from CUDA events. Results go to JSON with the
device, versions and sizes.

A family module builds a list of Case and hands it to run_family (or to
run_cases and write_json when its bound is not the copy bandwidth); see
teachcompute_ext/bench/__init__.py for the registry.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import platform
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

import teachcompute_ext

# The line between the sweep's two targets: from 20 us up, at least as fast as
# torch (ratio >= 1); below, where call overhead dominates, no more than 1 us
# slower (forward) and no slower (forward+backward).
SMALL_US = 20.0


@dataclass
class Case:
    op: str  # our op, e.g. "vector_sum"
    shape: str  # human-readable sizes, e.g. "1e8"
    dtype: torch.dtype
    device: str
    ours: Callable[[], object]
    baselines: dict  # label -> callable, e.g. {"torch.sum": ...}
    bytes_moved: Optional[int] = None  # fewest bytes the op must move (for GB/s)
    flops: Optional[float] = None  # for TFLOP/s
    check: Optional[Callable[[object, object], None]] = None  # raises if ours != baseline
    note: str = ""
    sweep: Optional[dict] = None  # a sweep point's variant, pass, parameters and size (sweep.point)


@dataclass
class Options:
    """What the command line chose for this run; families read it through OPTIONS."""

    allocator: str = "default"  # what keep_allocator_warm did, for the JSON
    compile: bool = False  # add torch.compile baselines (compiled_baseline)
    compile_dynamic: bool = False  # torch.compile(dynamic=...): the sweep reuses one kernel across sizes
    op_filter: Optional[str] = None  # regular expression on Case.op; None: every case
    bounds: dict = field(default_factory=dict)  # bounds measured so far in this run (shared_bound)


OPTIONS = Options()

# The label of the compiled-torch baseline: the plots and the table key on it.
COMPILED = "torch.compile"


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


def _stable(samples, rel_tol):
    """Every label's median absolute deviation within rel_tol of its median."""
    for s in samples.values():
        med = statistics.median(s)
        if statistics.median(abs(v - med) for v in s) > rel_tol * med:
            return False
    return True


def time_interleaved(
    fns: dict,
    device: str,
    rounds: int = 15,
    min_batch_s: float = 0.02,
    warmup: int = 3,
    min_rounds: Optional[int] = None,
    rel_tol: float = 0.0,
    max_s: Optional[float] = None,
):
    """Times every callable of `fns` in alternating rounds; returns label -> Timing.

    With min_rounds, the rounds may stop early, once at least min_rounds are
    done and either every label's samples are stable (median absolute
    deviation within rel_tol of the median) or max_s seconds have gone: a
    sweep of hundreds of points spends its time where the noise is."""
    start = time.perf_counter()
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
        if min_rounds is not None and r + 1 >= min_rounds and r + 1 < rounds:
            if (rel_tol > 0 and _stable(samples, rel_tol)) or (
                max_s is not None and time.perf_counter() - start > max_s
            ):
                break
    return {label: Timing(statistics.median(s), len(s) * iters[label], s) for label, s in samples.items()}


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


def shared_bound(key, measure: Callable[[], float]) -> float:
    """measure() once per run and key: every family of a device is then rated
    against the same figure, and the bound costs one measurement, not one per family."""
    if key not in OPTIONS.bounds:
        OPTIONS.bounds[key] = measure()
    return OPTIONS.bounds[key]


def compile_fn(fn):
    """fn through torch.compile, or None when the run has no compile baselines.

    Static shapes (dynamic=False) in the report: each case gets kernels
    specialised to its sizes, as a model with fixed sizes would. The sweep
    sets OPTIONS.compile_dynamic: one kernel per op and dtype serves every
    size, as for a script whose batch varies (and hundreds of points do not
    each pay a compilation of a second or more). The cases share a few Python
    functions and Dynamo keeps its compiled variants per code object; past its
    recompile limit it would fall back to eager without a word and the
    torch.compile column would time eager torch, hence the raised limit and
    the error if it is hit anyway. Compilation happens on the first call, which
    run_cases makes while checking the result: outside the timing."""
    if not OPTIONS.compile:
        return None
    import torch._dynamo

    cfg = torch._dynamo.config
    limit = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, limit, max(getattr(cfg, limit), 256))
    if hasattr(cfg, "fail_on_recompile_limit_hit"):
        cfg.fail_on_recompile_limit_hit = True
    return torch.compile(fn, dynamic=OPTIONS.compile_dynamic)


def compiled_baseline(fn, *args) -> dict:
    """{COMPILED: fn(*args) compiled} to merge into a Case's baselines, {} when the run has none."""
    cfn = compile_fn(fn)
    return {} if cfn is None else {COMPILED: lambda: cfn(*args)}


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


def environment(device: str) -> dict:
    return {
        "cpu_allocator": OPTIONS.allocator,
        "torch_compile_baselines": OPTIONS.compile,
        "torch_compile_dynamic": OPTIONS.compile_dynamic,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "teachcompute_ext": teachcompute_ext.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }


TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def relative_error(ours, theirs) -> float:
    """|ours - theirs| / |theirs| in the norm, in float64."""
    a = torch.as_tensor(ours).double().cpu()
    b = torch.as_tensor(theirs).double().cpu()
    return (a - b).norm().item() / max(b.norm().item(), 1e-30)


def default_check(ours, theirs, dtype):
    """Relative error in the norm against the baseline, within the dtype's tolerance."""
    err = relative_error(ours, theirs)
    tol = TOLERANCE[dtype]
    if not (err <= tol):
        raise AssertionError(f"relative error {err:.3e} > {tol:.0e}")


def check_near_exact(ours, theirs, exact, dtype):
    """default_check, or else ours at most twice as far from the exact
    (float64) result as the baseline's is: in a half type the baseline's own
    rounding can pass the tolerance (logsumexp's gradient in bfloat16 goes
    through a result rounded to 8 bits), and a result more accurate than
    torch's is not a wrong one. exact() is called only when needed. Tuples
    and lists (several gradients) are checked item by item."""
    if isinstance(ours, (tuple, list)):
        refs = []

        def item(i):
            if not refs:
                refs.append(exact())
            return refs[0][i]

        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            check_near_exact(a, b, lambda i=i: item(i), dtype)
        return
    try:
        default_check(ours, theirs, dtype)
    except AssertionError as e:
        ref = exact()
        err_ours, err_theirs = relative_error(ours, ref), relative_error(theirs, ref)
        if not (err_ours <= max(2 * err_theirs, TOLERANCE[dtype])):
            raise AssertionError(
                f"{e}; from the float64 result: ours {err_ours:.3e}, the baseline {err_theirs:.3e}"
            ) from None


def select(cases):
    """The cases the run asked for (OPTIONS.op_filter)."""
    if not OPTIONS.op_filter:
        return list(cases)
    pattern = re.compile(OPTIONS.op_filter)
    return [c for c in cases if pattern.search(c.op)]


def check_case(case) -> dict:
    """Checks our result against every baseline's before anything is timed.

    Raises when ours fails or differs from the first baseline (torch, the
    reference): that is a wrong result. Another baseline that differs from
    ours is not timed either, since its ratio would compare unlike work; it
    comes back as {label: why} (onnxruntime's ScatterND with duplicate
    indices loses an update now and then, for one)."""
    check = case.check or (lambda a, b: default_check(a, b, case.dtype))
    try:
        ours_out = case.ours()
    except Exception as e:
        raise RuntimeError(f"ours failed: {type(e).__name__}: {e}") from e
    disagree = {}
    for i, (label, baseline) in enumerate(case.baselines.items()):
        try:
            check(ours_out, baseline())
        except Exception as e:
            if i == 0:
                raise AssertionError(f"vs {label}: {type(e).__name__}: {e}") from e
            disagree[label] = f"{type(e).__name__}: {e}"
    return disagree


def run_cases(
    cases,
    bound_bytes_per_s=None,
    bound_flops_per_s=None,
    rounds=15,
    min_batch_s=0.02,
    progress=None,
    check=True,
    **timing,
):
    """Checks and times each case; returns a list of result dicts, one per selected case, in order.

    progress(case, index, total) is called before each case; timing: more
    arguments of time_interleaved (warmup, min_rounds, rel_tol, max_s). check=False:
    the cases were checked by an earlier run of this process (the sweep's one-thread
    pass): cases that update state in place (scatter_nd_, a training step) would no
    longer start from the same state."""
    cases = select(cases)
    results = []
    for i, case in enumerate(cases):
        if progress:
            progress(case, i, len(cases))
        row = {
            "op": case.op,
            "shape": case.shape,
            "dtype": str(case.dtype).replace("torch.", ""),
            "device": case.device,
            "note": case.note,
        }
        try:
            disagree = check_case(case) if check else {}
        except Exception as e:  # a wrong (or failing) result is reported, not timed
            row["error"] = str(e)
            results.append(row)
            continue
        # "disagrees", not "error": CI fails on "error", which is reserved for our results.
        baselines = {label: fn for label, fn in case.baselines.items() if label not in disagree}
        timings = time_interleaved(
            {"ours": case.ours, **baselines}, case.device, rounds=rounds, min_batch_s=min_batch_s, **timing
        )
        ours_s = timings["ours"].median_s
        row["ours_ms"] = ours_s * 1e3
        row["rounds"] = len(timings["ours"].samples)
        row["baselines"] = {}
        for label in case.baselines:
            if label in disagree:
                row["baselines"][label] = {"disagrees": disagree[label]}
                continue
            t = timings[label].median_s
            # Ratio of medians, and the median of per-round ratios (robust to drift).
            per_round = [b / a for a, b in zip(timings["ours"].samples, timings[label].samples)]
            row["baselines"][label] = {
                "ms": t * 1e3,
                "ratio": t / ours_s,
                "ratio_per_round_median": statistics.median(per_round),
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


def _one_line(text, limit=100) -> str:
    """A message fit for one table line (the JSON keeps it whole)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _rate(r) -> str:
    if "TFLOP_per_s" in r:
        return f"{r['TFLOP_per_s']:.2f} TFLOP/s"
    if "GB_per_s" in r:
        return f"{r['GB_per_s']:.1f} GB/s"
    return ""


def format_table(results) -> str:
    """One line per (case, baseline); the case's own figures on its first line."""
    cols = [
        ("op", "<"),
        ("shape", "<"),
        ("dtype", "<"),
        ("device", "<"),
        ("ours ms", ">"),
        ("baseline", "<"),
        ("ms", ">"),
        ("ratio", ">"),
        ("rate", ">"),
        ("% bound", ">"),
    ]
    rows = []  # lists of cells, or (head cells, error text)
    for r in results:
        head = [r["op"], r["shape"], r["dtype"], r["device"]]
        if "error" in r:
            rows.append((head, f"WRONG RESULT, not timed: {_one_line(r['error'])}"))
            continue
        for i, (label, b) in enumerate(r["baselines"].items()):
            first = i == 0
            if "disagrees" in b:
                rows.append(([""] * 4 + ["", label], "differs from ours, not timed: " + _one_line(b["disagrees"])))
                continue
            pct = f"{r['pct_of_bound']:.1f}%" if first and "pct_of_bound" in r else ""
            rows.append(
                (head if first else [""] * 4)
                + [
                    f"{r['ours_ms']:.4f}" if first else "",
                    label,
                    f"{b['ms']:.4f}",
                    f"{b['ratio']:.2f}x",
                    _rate(r) if first else "",
                    pct,
                ]
            )
    widths = [len(name) for name, _ in cols]
    for row in rows:
        cells = row[0] if isinstance(row, tuple) else row
        widths = [max(w, len(c)) for w, c in zip(widths, cells)] + widths[len(cells) :]

    def line(cells):
        return "  ".join(f"{c:{a}{w}}" for c, (_, a), w in zip(cells, cols, widths)).rstrip()

    out = [line([name for name, _ in cols])]
    out.append("-" * len(out[0]))
    for row in rows:
        out.append(line(row[0]) + "  " + row[1] if isinstance(row, tuple) else line(row))
    return "\n".join(out)


def write_json(path, family, device, results, bounds, settings=None):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    doc = {"family": family, "environment": environment(device), "bounds": bounds, "results": results}
    if settings:
        doc["settings"] = settings
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    return path


def run_family(family, cases, device, quick, out_dir, progress=None, rounds=None):
    """Measures the bound, checks and times `cases`, writes <out_dir>/<family>-<device>.json.

    Returns (results, bound in bytes/s, path); ([], None, None) when the run's
    op filter leaves no case."""
    cases = select(cases)
    if not cases:
        return [], None, None
    rounds = rounds or (5 if quick else 11)
    min_batch_s = 0.01 if quick else 0.05
    nbytes = (64 << 20) if quick else (512 << 20)
    bound = shared_bound(("copy", device, nbytes), lambda: copy_bandwidth(device, nbytes=nbytes))
    results = run_cases(cases, bound_bytes_per_s=bound, rounds=rounds, min_batch_s=min_batch_s, progress=progress)
    path = write_json(
        os.path.join(out_dir, f"{family}-{device}.json"),
        family,
        device,
        results,
        {"copy_GB_per_s": bound / 1e9},
        {"quick": quick, "rounds": rounds, "min_batch_s": min_batch_s},
    )
    return results, bound, path


def load_docs(out_dir, families, sweep=False):
    """The JSON documents of the named families in out_dir, device by device in
    the order of families: the report's ("results"), or with sweep=True the
    sweep's ("kind": "sweep", "points")."""
    docs = []
    for path in glob.glob(os.path.join(out_dir, "sweep-*.json" if sweep else "*.json")):
        with open(path) as f:
            doc = json.load(f)
        if not isinstance(doc, dict) or "family" not in doc:
            continue
        if (doc.get("kind") == "sweep" and doc["family"] in families) if sweep else ("results" in doc):
            docs.append(doc)
    order = {name: i for i, name in enumerate(families)}
    return sorted(docs, key=lambda d: (d["environment"]["device"], order.get(d["family"], len(order)), d["family"]))


def cuda_peak_bytes(fn):
    """Bytes the CUDA allocator held at the peak of fn() beyond what was allocated before."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base
