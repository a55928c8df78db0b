"""The size sweep: python -m teachcompute_ext.bench --sweep [--quick].

The report times each op at one large shape; a script calls it at many
others (one row at inference, a batch of 32, a 64-wide embedding, a hidden
layer of 128 units). The sweep runs every op, forward and forward+backward,
over a log-spaced grid per family, from one row (one bag, one index) to the
report's large shapes, in float32 and bfloat16, through the report's harness:
each result is checked before it is timed, the timings are interleaved
against torch (and torch.compile where it generates its own kernel) in the
same process, and medians are kept.

Each family module defines sweep_cases(device, quick), a list of Case built
with point() below, and SWEEP_SIZE, what its x-axis counts. Per family and
device this writes sweep-<family>-<device>.json (one entry per point) and
sweep-<family>-<device>.png (the ratio against the size, one panel per op),
and prints, per op and pass, the worst ratio where torch's call takes
SMALL_US or more, and the worst difference ours - torch in microseconds
below that.
"""

import json
import os
import sys
import time
import types

import torch

from . import harness

SMALL_US = harness.SMALL_US

# Timing per point. Full: up to 9 rounds, stopping after 4 once stable within
# 3% or after 2 s, so that the whole CPU sweep fits in about 10 minutes on 2
# cores. Quick: a smoke run for CI, whose figures mean little.
FULL = dict(rounds=9, min_rounds=4, rel_tol=0.03, max_s=2.0, min_batch_s=0.005, warmup=1)
QUICK = dict(rounds=3, min_batch_s=0.002, warmup=1)


# The values axis: what the inputs hold. "normal": standard normal values (uniform indices),
# the grid's; the others come from each family's values_cases, at a few sizes of the grid.
VALUES = {
    "normal": "standard normal values, uniform indices",
    "outliers": "values of scale 30 (LLM activations' outliers)",
    "unscaled layer": "pre-activations of a layer with W from randn, no 1/sqrt(K) (standard deviation ~ sqrt(K))",
    "half masked": "softmax rows with half their entries -inf (causal attention masks)",
    "masked rows": "one row in 8 entirely -inf (fully masked)",
    "zipf": "indices drawn from a Zipf law (exponent 1.1): a few rows take most lookups, unsorted",
    "zipf sorted": "the same, sorted",
    "all equal": "every index the same row",
    "zipf bags": "bag lengths from a Zipf law: many short bags, a few very long",
}


def point(op, pass_, params, size, values="normal", **case):
    """A sweep Case: op names the variant ("softmax", "reduce_sum dim1"),
    pass_ is "fwd" or "fwd+bwd", params the shape parameters, size the
    x-axis figure (in the family's SWEEP_SIZE), values the inputs' distribution
    (VALUES). The Case's op gets the report's " fwd+bwd" suffix, so that --op
    selects as in the report."""
    assert pass_ in ("fwd", "fwd+bwd"), pass_
    assert values in VALUES, values
    shape = ", ".join(f"{k}={v}" for k, v in params.items())
    return harness.Case(
        op=op if pass_ == "fwd" else f"{op} fwd+bwd",
        shape=shape if values == "normal" else f"{shape}, {values}",
        sweep={"variant": op, "pass": pass_, "params": dict(params), "size": size, "values": values},
        **case,
    )


def zipf(n, num, generator, a=1.1):
    """n indices into num rows drawn from a Zipf law (rank r with weight 1/r^a), the ranks
    spread over the table by a fixed permutation: a few rows take most lookups."""
    ranks = torch.arange(1, num + 1, dtype=torch.float64)
    w = ranks.pow(-a)
    ids = torch.multinomial(w / w.sum(), n, replacement=True, generator=generator)
    return torch.randperm(num, generator=generator)[ids]


def zipf_lengths(bags, mean, generator, a=1.1):
    """bags lengths from a Zipf law scaled to about `mean` on average: many short bags, a few long."""
    raw = zipf(bags, 1000, generator, a).double() + 1
    return (raw * (mean / raw.mean())).round().clamp_min(0).long()


def masked_check(dtype, exact=None):
    """For masked rows: NaN and infinities where the baseline has them, and the other entries
    within the dtype's tolerance of the baseline's (default_check), or of exact(), the float64
    result, where the two differ (check_near_exact)."""

    def finite(t):
        t = t[0] if isinstance(t, tuple) else t
        return torch.as_tensor(t).double().cpu()

    def check(ours, theirs):
        a, b = finite(ours), finite(theirs)
        if not (torch.equal(a.isnan(), b.isnan()) and torch.equal(a.isinf(), b.isinf())):
            raise AssertionError("NaN or infinities elsewhere than the baseline's")
        a, b = a.nan_to_num(0, 0, 0), b.nan_to_num(0, 0, 0)
        if exact is None:
            harness.default_check(a, b, dtype)
        else:
            harness.check_near_exact(a, b, lambda: finite(exact()).nan_to_num(0, 0, 0), dtype)

    return check


_COMPILED = {}


def compiled(key, fn):
    """harness.compile_fn(fn) once per key (None when the run does not
    compile): a variant's points share one compiled function, hence its
    Dynamo cache, and with dynamic=True one kernel for every size (plus the
    ones Dynamo specializes for sizes 0 and 1, and one per dtype)."""
    if not harness.OPTIONS.compile:
        return None
    if key not in _COMPILED:
        # Dynamo keeps its cache per code object, and a lambda written in a
        # loop is one code object for every variant: their entries would add
        # up to the recompile limit and be searched on every call. A copy of
        # the code per key keeps each variant's cache its own.
        code = fn.__code__.replace(co_name=f"sweep_{len(_COMPILED)}")
        own = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
        _COMPILED[key] = harness.compile_fn(own)
    return _COMPILED[key]


def near_exact(dtype, exact):
    """A Case check: harness.check_near_exact against exact(), the float64
    result. Half-type gradients that sum duplicates (embedding tables,
    weights) round at every add in torch, which then misses the tolerance
    on its own."""
    return lambda ours, theirs: harness.check_near_exact(ours, theirs, exact, dtype)


def to_point(case, row, threads):
    """One JSON entry from a Case and its harness result row, timed on `threads` threads."""
    meta = case.sweep
    p = {
        "op": meta["variant"],
        "pass": meta["pass"],
        "params": meta["params"],
        "shape": case.shape,
        "size": meta["size"],
        "values": meta.get("values", "normal"),
        "threads": threads,
        "dtype": row["dtype"],
    }
    if "error" in row:  # a wrong (or failing) result: reported, never timed
        p["error"] = row["error"]
        return p
    # The first baseline is torch eager (a Case's convention); check_case made
    # any disagreement with it an error, so it was timed.
    torch_label = next(iter(case.baselines))
    b = row["baselines"][torch_label]
    p.update(torch_label=torch_label, ours_us=row["ours_ms"] * 1e3, torch_us=b["ms"] * 1e3, ratio=b["ratio"])
    c = row["baselines"].get(harness.COMPILED)
    if c is not None:
        if "ms" in c:
            p.update(compile_us=c["ms"] * 1e3, ratio_compile=c["ratio"])
        else:
            p["compile_disagrees"] = c["disagrees"]
    p["rounds"] = row["rounds"]
    return p


def summarize(points):
    """Per (op, pass): the worst ratio where torch takes >= SMALL_US, the
    worst ours - torch (us) below, and where each occurs."""
    out = []
    for op, pass_ in dict.fromkeys((p["op"], p["pass"]) for p in points):
        mine = [p for p in points if p["op"] == op and p["pass"] == pass_]
        ok = [p for p in mine if "error" not in p]
        s = {"op": op, "pass": pass_, "points": len(mine), "errors": len(mine) - len(ok)}
        big = [p for p in ok if p["torch_us"] >= SMALL_US]
        small = [p for p in ok if p["torch_us"] < SMALL_US]
        if big:
            w = min(big, key=lambda p: p["ratio"])
            s["worst_ratio"] = w["ratio"]
            s["worst_ratio_at"] = _where(w)
        if small:
            w = max(small, key=lambda p: p["ours_us"] - p["torch_us"])
            s["worst_small_diff_us"] = w["ours_us"] - w["torch_us"]
            s["worst_small_at"] = _where(w)
        out.append(s)
    return out


def _where(p):
    return {
        "shape": p["shape"],
        "values": p.get("values", "normal"),
        "threads": p.get("threads"),
        "dtype": p["dtype"],
        "size": p["size"],
        "torch_us": p["torch_us"],
        "ours_us": p["ours_us"],
    }


def format_summary(summary, size_unit=""):
    cols = [
        "op",
        "pass",
        "pts",
        f"worst ratio, torch >= {SMALL_US:g} us",
        "at",
        f"worst ours - torch, torch < {SMALL_US:g} us",
        "at",
    ]
    rows = []
    for s in summary:

        def at(w):
            thr = f", {w['threads']} thr" if w.get("threads") else ""
            return f"{w['shape']} {w['dtype']} (size {w['size']:.3g}, torch {w['torch_us']:.1f} us{thr})"

        big = (f"{s['worst_ratio']:.2f}x", at(s["worst_ratio_at"])) if "worst_ratio" in s else ("-", "")
        small = (
            (f"{s['worst_small_diff_us']:+.2f} us", at(s["worst_small_at"]))
            if "worst_small_diff_us" in s
            else ("-", "")
        )
        errors = f" ({s['errors']} WRONG)" if s["errors"] else ""
        rows.append([s["op"], s["pass"], f"{s['points']}{errors}", *big, *small])
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]

    def line(cells):
        return "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths)).rstrip()

    head = line(cols)
    note = f"size: {size_unit}" if size_unit else ""
    return "\n".join([head, "-" * len(head)] + [line(r) for r in rows] + ([note] if note else []))


def one_thread_subset(cases, quick):
    """The points timed again on one thread (DataLoader workers, one process per core): per
    variant, pass, dtype and values, the larger half of its sizes (quick: the largest)."""
    groups = {}
    for c in cases:
        m = c.sweep
        groups.setdefault((m["variant"], m["pass"], str(c.dtype), m.get("values", "normal")), []).append(c)
    out = []
    for group in groups.values():
        group = sorted(group, key=lambda c: c.sweep["size"])
        out += group[-1:] if quick else group[len(group) // 2 :]
    return out


def run_family(name, module, device, quick, out_dir, progress=None):
    """Checks and times one family's sweep (on every thread, then a subset on one thread on
    the CPU); writes its JSON; returns the document and its path."""
    values = getattr(module, "values_cases", None)
    cases = harness.select(module.sweep_cases(device, quick) + (values(device, quick) if values else []))
    if not cases:
        return None, None
    timing = QUICK if quick else FULL
    threads = torch.get_num_threads()
    rows = harness.run_cases(cases, progress=progress, **timing)
    points = [to_point(c, r, threads) for c, r in zip(cases, rows)]
    if device == "cpu" and threads > 1:
        # Checked on every thread above (a wrong case is not timed again).
        wrong = {id(c) for c, r in zip(cases, rows) if "error" in r}
        one = [c for c in one_thread_subset(cases, quick) if id(c) not in wrong]
        torch.set_num_threads(1)
        try:
            rows = harness.run_cases(one, progress=progress, check=False, **timing)
        finally:
            torch.set_num_threads(threads)
        points += [to_point(c, r, 1) for c, r in zip(one, rows)]
    doc = {
        "kind": "sweep",
        "family": name,
        "environment": harness.environment(device),
        "settings": {"quick": quick, **timing},
        "size_unit": module.SWEEP_SIZE,
        "values": {v: VALUES[v] for v in dict.fromkeys(p["values"] for p in points)},
        "small_us": SMALL_US,
        "ratio": "torch time / our time: above 1 we are faster",
        "points": points,
        "summary": summarize(points),
    }
    path = os.path.join(out_dir, f"sweep-{name}-{device}.json")
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    return doc, path


def main(args, names, progress):
    """--sweep: measures (or, with --replot, reloads) and plots; returns the exit status."""
    from . import family, plots
    from .harness import load_docs

    start = time.perf_counter()
    if args.replot:
        docs = load_docs(args.out, names, sweep=True)
        if not docs:
            print(f"no sweep JSON in {args.out}", file=sys.stderr)
            return 1
    else:
        docs = []
        for device in args.device:
            for name in names:
                try:
                    module = family(name)
                except ValueError:  # a family without a module (a test's) has no sweep
                    print(f"{name}: no sweep", file=sys.stderr)
                    continue
                progress.start(f"sweep {name}", device)
                t0 = time.perf_counter()
                try:
                    doc, path = run_family(name, module, device, args.quick, args.out, progress)
                finally:
                    progress.close()
                if doc is None:
                    continue
                print(
                    f"sweep {name} on {device}: {len(doc['points'])} points in "
                    f"{time.perf_counter() - t0:.1f} s -> {path}",
                    flush=True,
                )
                docs.append(doc)
    for doc in docs:
        device = doc["environment"]["device"]
        print(f"\n{doc['family']} on {device} ({doc['environment']['device_name']}): worst per op")
        print(format_summary(doc["summary"], doc["size_unit"]))
    try:
        for doc in docs:
            path = plots.plot_sweep(
                doc, os.path.join(args.out, f"sweep-{doc['family']}-{doc['environment']['device']}.png")
            )
            print(f"wrote {path}")
    except ImportError as e:  # matplotlib is a benchmark extra
        print(f"no plots ({e}): pip install matplotlib", file=sys.stderr)
    points = [p for d in docs for p in d["points"]]
    errors = sum("error" in p for p in points)
    for p in points:
        if "error" in p:
            print(
                f"WRONG RESULT, not timed: {p['op']} {p['pass']} {p['shape']} {p['dtype']}: "
                f"{harness._one_line(p['error'])}"
            )
    took = "" if args.replot else f" in {time.perf_counter() - start:.1f} s"
    print(f"{len(points)} sweep points{took}" + (f", {errors} WRONG RESULT(S)" if errors else ""), file=sys.stderr)
    return 1 if errors else 0
