"""The benchmark report: every op family of teachcompute_ext against torch eager
(and torch.compile where it compiles to kernels of its own), on the CPU and on
CUDA when present, in one process.

    python -m teachcompute_ext.bench              # real numbers into ./bench-out
    python -m teachcompute_ext.bench --quick      # small sizes, few repeats (CI)

Each op's result is checked against every baseline before it is timed; a
wrong result is reported (WRONG RESULT in the table, "error" in the JSON, exit
status 1), never timed. The table gives, per case and baseline: our median
time, the baseline's, the ratio (baseline time / our time: above 1x we are
faster), our GB/s (TFLOP/s for compute-bound ops) and its percentage of the
bound measured in the same run (the copy bandwidth: a cache-resident case can
pass 100%). --out receives <family>-<device>.json and, per device,
speedup-<device>.png and pct_of_bound-<device>.png.

    python -m teachcompute_ext.bench --sweep      # every op over a grid of sizes (sweep.py)
"""

import argparse
import json
import logging
import os
import sys
import time

import torch

import teachcompute_ext

from . import FAMILIES, family, harness


class Progress:
    """A progress bar on stderr, one per family and device; plain lines when
    stderr is not a terminal (CI logs), where a redrawn line would pile up."""

    def __init__(self, stream=None, width=24):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.width = width
        self.title = ""

    def start(self, name, device):
        self.title = f"{name} {device}"

    def __call__(self, case, index, total):
        what = f"{case.op} {case.shape} {str(case.dtype).replace('torch.', '')}"
        if self.tty:
            done = self.width * index // max(total, 1)
            bar = "#" * done + "." * (self.width - done)
            self.stream.write(f"\r\033[K{self.title} [{bar}] {index + 1}/{total} {what}")
        else:
            self.stream.write(f"  {self.title} {index + 1}/{total}: {what}\n")
        self.stream.flush()

    def close(self):
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()


def default_devices():
    devices = ["cpu"]
    if torch.cuda.is_available():
        if "CUDA" in teachcompute_ext.compiled_backends():
            devices.append("cuda")
        else:
            print(
                "a GPU is visible but this build has no CUDA kernels: CPU only (rebuild with TEACHCOMPUTE_EXT_CUDA=1)",
                file=sys.stderr,
            )
    return devices


def parser(description, default_out, families):
    # Under -m, argv[0] is this file's path: show the command a user types instead.
    prog = "python -m teachcompute_ext.bench" if os.path.basename(sys.argv[0]) == "__main__.py" else None
    p = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, few repeats, no torch.compile baselines: well under a minute on a CPU (CI)",
    )
    p.add_argument(
        "--device",
        action="append",
        choices=["cpu", "cuda"],
        help="device to run on (repeatable); default: cpu, and cuda when a GPU is visible "
        "and the build has CUDA kernels",
    )
    p.add_argument("--family", action="append", choices=list(families), help="op family (repeatable); default: all")
    p.add_argument(
        "--op",
        metavar="REGEX",
        help="only the cases whose op name matches (re.search), e.g. 'softmax' or '^reduce_sum'",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add torch.compile baselines where torch.compile generates kernels of its own; "
        "compiling takes seconds per case, so the default is on, off with --quick",
    )
    p.add_argument("--out", default=default_out, help=f"folder for the JSON and the plots (default: {default_out})")
    p.add_argument(
        "--cold-allocator",
        action="store_true",
        help="leave glibc returning large blocks to the OS (each big output page-faults anew, "
        "for ours and torch's alike); default: freed memory is reused, as in a training loop",
    )
    p.add_argument(
        "--replot",
        action="store_true",
        help="measure nothing: print the table and redraw the plots from the JSON already in --out",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="instead of the report: every op, forward and forward+backward, over a log-spaced grid "
        "of sizes (one row to the report's shapes), float32 and bfloat16; writes "
        "sweep-<family>-<device>.json and .png and prints the worst ratio per op "
        "(torch.compile with dynamic=True when compiling)",
    )
    return p


def set_options(args):
    harness.OPTIONS = harness.Options(
        allocator="default" if args.cold_allocator else harness.keep_allocator_warm(),
        compile=(not args.quick) if args.compile is None else args.compile,
        compile_dynamic=args.sweep,
        op_filter=args.op,
    )


def measure(args, families):
    """Runs the families; returns their JSON documents as written."""
    set_options(args)
    progress = Progress()
    docs = []
    for device in args.device or default_devices():
        for name in args.family or list(families):
            progress.start(name, device)
            t0 = time.perf_counter()
            try:
                results, bound, path = families[name](device, args.quick, args.out, progress=progress)
            finally:
                progress.close()
            if path is None:
                continue
            with open(path) as f:
                doc = json.load(f)
            bounds = ", ".join(f"{k} {v:.1f}" for k, v in doc["bounds"].items())
            print(
                f"{name} on {device}: {len(results)} cases in {time.perf_counter() - t0:.1f} s ({bounds}) -> {path}",
                flush=True,
            )
            docs.append(doc)
    return docs


def main(argv=None, default_out="bench-out", families=None, description=None):
    """The report's command line; returns the exit status (1 when a result is wrong)."""
    if families is None:
        families = {name: family(name).run for name in FAMILIES}
    args = parser(description or __doc__, default_out, families).parse_args(argv)
    # torch.compile's C++ backend, on a machine with the CUDA toolkit and no GPU
    # (CI's), warns "No CUDA runtime is found": true, and no business of a report
    # that only measures; its output is its progress and its table.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    if args.sweep:
        from . import sweep

        if not args.replot:
            set_options(args)
            args.device = args.device or default_devices()
        return sweep.main(args, args.family or list(families), Progress())
    start = time.perf_counter()
    if args.replot:
        docs = harness.load_docs(args.out, families)
        if not docs:
            print(f"no benchmark JSON in {args.out}", file=sys.stderr)
            return 1
    else:
        docs = measure(args, families)
    results = [r for doc in docs for r in doc["results"]]
    print(harness.format_table(results))

    from . import plots

    try:
        paths = plots.plot_all(docs, args.out)
    except ImportError as e:  # matplotlib is a benchmark extra, not a dependency of the ops
        print(f"no plots ({e}): pip install matplotlib", file=sys.stderr)
        paths = []
    for path in paths:
        print(f"wrote {path}")
    errors = sum("error" in r for r in results)
    print(
        f"{len(results)} cases in {time.perf_counter() - start:.1f} s"
        + (f", {errors} WRONG RESULT(S)" if errors else ""),
        file=sys.stderr,
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
