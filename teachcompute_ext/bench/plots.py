"""The report's plots, drawn from the family JSON documents alone (so that
--replot can redraw them): per device, the speed-up of each case against each
baseline, and each case's percentage of the bound measured in the same run."""

import os

from .harness import COMPILED, SMALL_US

# Baselines by role: the first one of a case is torch eager, the compiled one
# is harness.COMPILED, the rest are other libraries or other torch ops.
COLORS = {"torch eager": "tab:blue", COMPILED: "tab:orange", "other": "tab:gray"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on CI machines and GPU servers
    import matplotlib.pyplot as plt

    return plt


def _label(r):
    return f"{r['op']}  {r['shape']}  {r['dtype']}"


def _role(index, label):
    if label == COMPILED:
        return COMPILED
    return "torch eager" if index == 0 else "other"


def _log_ticks(ax, lo, hi, fmt):
    candidates = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
    ticks = [t for t in candidates if lo <= t <= hi]
    ax.set_xticks(ticks)
    ax.set_xticklabels([fmt(t) for t in ticks])
    ax.minorticks_off()


def _mark_errors(ax, rows, x):
    for y, r in enumerate(rows):
        if "error" in r:
            ax.text(x, y, "  WRONG RESULT, not timed", color="tab:red", va="center", fontsize=7)


def _figure(plt, n_rows, title):
    fig, ax = plt.subplots(figsize=(10, 1.4 + 0.28 * n_rows))
    ax.set_title(title, fontsize=10)
    ax.invert_yaxis()  # first case on top, as in the table
    return fig, ax


def plot_speedup(rows, device, path):
    plt = _pyplot()
    fig, ax = _figure(
        plt,
        len(rows) * 1.4,
        f"Speed-up of teachcompute_ext on {device}\nbaseline time / our time: right of 1x, we are faster",
    )
    ratios = [b["ratio"] for r in rows if "error" not in r for b in r["baselines"].values() if "ratio" in b]
    ratios = ratios or [1.0]
    lo, hi = min(min(ratios), 1.0) / 3, max(max(ratios), 1.0) * 3  # room for the labels
    seen = set()
    for y, r in enumerate(rows):
        if "error" in r:
            continue
        n = len(r["baselines"])
        height = 0.8 / n
        for i, (label, b) in enumerate(r["baselines"].items()):
            role = _role(i, label)
            if "ratio" not in b:  # a baseline that disagreed with ours was not timed
                ax.text(
                    1.0,
                    y - 0.4 + height * (i + 0.5),
                    f" {label}: differs from ours, not timed",
                    va="center",
                    fontsize=6,
                    color="tab:red",
                )
                continue
            yy = y - 0.4 + height * (i + 0.5)
            # From the 1x line: left of it slower, right of it faster.
            ax.barh(
                yy,
                b["ratio"] - 1.0,
                height=height * 0.9,
                left=1.0,
                color=COLORS[role],
                label=None if role in seen else f"vs {role}" + (" (named)" if role == "other" else ""),
            )
            seen.add(role)
            text = f"{b['ratio']:.2f}x" + (f" {label}" if role == "other" else "")
            # At the outer end of the bar: right of it when faster, left of it when slower.
            faster = b["ratio"] >= 1.0
            ax.text(b["ratio"], yy, f" {text} ", va="center", fontsize=6, ha="left" if faster else "right")
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    _log_ticks(ax, lo, hi, lambda t: f"{t:g}x")
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([_label(r) for r in rows], fontsize=7)
    _mark_errors(ax, rows, lo)
    if seen:
        ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # long case labels must not be cut
    plt.close(fig)
    return path


def _bound_text(doc):
    b = doc.get("bounds", {})
    parts = []
    if "copy_GB_per_s" in b:
        parts.append(f"copy {b['copy_GB_per_s']:.1f} GB/s")
    for k, v in b.items():
        if k != "copy_GB_per_s":
            parts.append(f"{k} {v:.3g}")
    return ", ".join(parts)


def plot_pct_of_bound(rows, bounds, device, path):
    plt = _pyplot()
    fig, ax = _figure(
        plt,
        len(rows),
        f"Percentage of the bound measured in the same run on {device}\n{'; '.join(sorted(set(bounds)))}",
    )
    pcts = [r["pct_of_bound"] for r in rows if "pct_of_bound" in r] or [100.0]
    # A log axis when cache-resident cases (far above 100%) would flatten the rest.
    log = max(pcts) / max(min(pcts), 1e-9) > 10
    lo = min(min(pcts), 100.0) / 1.5 if log else 0.0
    hi = max(max(pcts), 100.0) * (2.0 if log else 1.15)
    for y, r in enumerate(rows):
        if "pct_of_bound" not in r:
            continue
        color = "tab:purple" if "TFLOP_per_s" in r else "tab:green"
        ax.barh(y, r["pct_of_bound"], height=0.7, color=color)
        ax.text(r["pct_of_bound"], y, f" {r['pct_of_bound']:.0f}%", va="center", fontsize=6)
    if log:
        ax.set_xscale("log")
        _log_ticks(ax, lo, hi, lambda t: f"{t:g}%")
    ax.set_xlim(lo, hi)
    ax.axvline(100.0, color="black", linewidth=1)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([_label(r) for r in rows], fontsize=7)
    ax.set_xlabel(
        "% of the bound (above 100%: the data stayed in cache, or reads alone outran a copy's reads and writes)",
        fontsize=8,
    )
    _mark_errors(ax, rows, lo if log else 0.0)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # long case labels must not be cut
    plt.close(fig)
    return path


def plot_all(docs, out_dir):
    """speedup-<device>.png and pct_of_bound-<device>.png for each device in docs; returns the paths."""
    _pyplot()  # ImportError here, before any file is written, when matplotlib is missing
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for device in dict.fromkeys(d["environment"]["device"] for d in docs):
        mine = [d for d in docs if d["environment"]["device"] == device]
        rows = [r for d in mine for r in d["results"]]
        if not rows:
            continue
        paths.append(plot_speedup(rows, device, os.path.join(out_dir, f"speedup-{device}.png")))
        bounds = [_bound_text(d) for d in mine]
        paths.append(plot_pct_of_bound(rows, bounds, device, os.path.join(out_dir, f"pct_of_bound-{device}.png")))
    return paths


# The sweep: one color per (pass, dtype); solid against torch eager, dashed
# against torch.compile; a filled marker where torch's call takes SMALL_US or
# more (target: ratio >= 1x), a hollow one below (target: within 1 us).
SWEEP_COLORS = {
    ("fwd", "float32"): "tab:blue",
    ("fwd", "bfloat16"): "tab:purple",
    ("fwd+bwd", "float32"): "tab:green",
    ("fwd+bwd", "bfloat16"): "tab:olive",
}
SWEEP_OTHER = ["tab:brown", "tab:pink", "tab:gray", "tab:cyan"]
# One marker per distribution of the values axis (sweep.VALUES) other than the grid's normal values.
VALUES_MARKERS = ["^", "s", "D", "v", "P", "X", "*", "<", ">"]


def plot_sweep(doc, path):
    """sweep-<family>-<device>.png: per op, torch time / our time against the
    size (log-log), a line at 1x; returns the path."""
    import math

    from matplotlib.lines import Line2D

    plt = _pyplot()
    points = doc["points"]
    variants = list(dict.fromkeys(p["op"] for p in points)) or ["(no point)"]
    ncols = min(3, len(variants))
    nrows = math.ceil(len(variants) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(5.2 * ncols, 3.3 * nrows + 1.2), squeeze=False, sharey=True, layout="constrained"
    )
    ratios = [p[k] for p in points for k in ("ratio", "ratio_compile") if k in p] or [1.0]
    lo, hi = min(min(ratios), 1.0) / 1.5, max(max(ratios), 1.0) * 1.5
    keys = list(dict.fromkeys((p["pass"], p["dtype"]) for p in points))
    colors = {k: SWEEP_COLORS.get(k) or SWEEP_OTHER[i % len(SWEEP_OTHER)] for i, k in enumerate(keys)}
    compiled_any = False
    all_threads = max((p.get("threads") or 0) for p in points) if points else 0
    others = [v for v in dict.fromkeys(p.get("values", "normal") for p in points) if v != "normal"]
    markers = {v: VALUES_MARKERS[i % len(VALUES_MARKERS)] for i, v in enumerate(others)}
    one_thread_any = False
    for ax, variant in zip(axes.flat, variants):
        mine = [p for p in points if p["op"] == variant]
        for key in keys:
            # The grid on every thread (lines), then on one thread (dotted), then the other
            # distributions (a marker each, no line: a few sizes only).
            for threads, line in ((all_threads, "-"), (1, ":")):
                series = sorted(
                    (
                        p
                        for p in mine
                        if (p["pass"], p["dtype"]) == key
                        and "ratio" in p
                        and p.get("values", "normal") == "normal"
                        and (p.get("threads") or all_threads) == threads
                    ),
                    key=lambda p: p["size"],
                )
                if threads == 1 and all_threads == 1:
                    continue
                for field, style in (("ratio", line), ("ratio_compile", "--")):
                    s = [p for p in series if field in p]
                    if not s:
                        continue
                    compiled_any |= field == "ratio_compile"
                    one_thread_any |= threads == 1
                    xs, ys = [p["size"] for p in s], [p[field] for p in s]
                    ax.plot(xs, ys, style, color=colors[key], linewidth=1.1, alpha=0.9 if style != "--" else 0.6)
                    big = [(x, y) for p, x, y in zip(s, xs, ys) if p["torch_us"] >= SMALL_US]
                    small = [(x, y) for p, x, y in zip(s, xs, ys) if p["torch_us"] < SMALL_US]
                    if big:
                        ax.scatter(*zip(*big), s=14, color=colors[key], zorder=3)
                    if small:
                        ax.scatter(*zip(*small), s=14, facecolors="white", edgecolors=colors[key], zorder=3)
            for v, marker in markers.items():
                s = [p for p in mine if (p["pass"], p["dtype"]) == key and "ratio" in p and p.get("values") == v]
                for p in s:
                    filled = p["torch_us"] >= SMALL_US
                    ax.scatter(
                        [p["size"]],
                        [p["ratio"]],
                        s=22 if (p.get("threads") or all_threads) == all_threads else 12,
                        marker=marker,
                        facecolors=colors[key] if filled else "white",
                        edgecolors=colors[key],
                        zorder=3,
                    )
        wrong = [p for p in mine if "error" in p]
        if wrong:
            ax.scatter([p["size"] for p in wrong], [lo * 1.1] * len(wrong), marker="x", color="tab:red", zorder=4)
            ax.text(
                0.02,
                0.04,
                f"{len(wrong)} WRONG RESULT(S), not timed",
                transform=ax.transAxes,
                color="tab:red",
                fontsize=7,
            )
        ax.axhline(1.0, color="black", linewidth=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(variant, fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(variants) :]:
        ax.set_visible(False)
    ax0 = axes.flat[0]
    ax0.set_ylim(lo, hi)
    ticks = [t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if lo <= t <= hi]
    if len(ticks) < 4:  # a narrow range: finer ticks
        ticks = [t for t in (0.3, 0.5, 0.7, 0.8, 0.9, 1, 1.2, 1.5, 2, 3) if lo <= t <= hi]
    ax0.set_yticks(ticks)
    ax0.set_yticklabels([f"{t:g}x" for t in ticks])
    ax0.yaxis.set_minor_formatter(plt.NullFormatter())
    for row in axes:
        row[0].set_ylabel("torch time / ours", fontsize=8)
    handles = [Line2D([], [], color=colors[k], marker="o", label=f"{k[0]} {k[1]}") for k in keys]
    handles.append(Line2D([], [], color="black", linestyle="-", label="vs torch eager"))
    if compiled_any:
        handles.append(Line2D([], [], color="black", linestyle="--", label="vs torch.compile (dynamic)"))
    if one_thread_any:
        handles.append(Line2D([], [], color="black", linestyle=":", label="1 thread"))
    for v, marker in markers.items():
        handles.append(Line2D([], [], color="gray", marker=marker, linestyle="", label=v))
    handles.append(Line2D([], [], color="gray", marker="o", linestyle="", label=f"torch >= {SMALL_US:g} us"))
    handles.append(
        Line2D(
            [], [], color="gray", marker="o", markerfacecolor="white", linestyle="", label=f"torch < {SMALL_US:g} us"
        )
    )
    env = doc["environment"]
    fig.suptitle(
        f"Sweep of the {doc['family']} family on {env['device']} ({env['device_name']})\n"
        f"torch time / our time against size: above the 1x line we are faster",
        fontsize=10,
    )
    for i, ax in enumerate(axes.flat):  # the last row's panels may be hidden: label the ones above them
        if i >= len(variants) - ncols and i < len(variants):
            ax.set_xlabel(f"size: {doc['size_unit']}", fontsize=8)
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=7)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
