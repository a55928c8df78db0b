"""The benchmark report: every op family against torch, in the same process.

    python -m teachcompute_ext.bench --help

It lives in the package, not only in benchmarks/, so that it runs from an
installed wheel as well as from a checkout.

Adding an op family is one module and one line:

- teachcompute_ext/bench/<family>.py builds a list of harness.Case and defines
  run(device, quick, out_dir, progress=None) -> (results, bound, json_path),
  usually `return harness.run_family("<family>", cases, device, quick, out_dir,
  progress)`; a compute-bound family rates itself against harness.matmul_rate
  with harness.run_cases(..., bound_flops_per_s=...) and harness.write_json.
  Baselines that torch.compile turns into kernels of its own get
  `**harness.compiled_baseline(fn, *args)`, which is empty under --quick.
- for the size sweep (--sweep, sweep.py), the module also defines
  sweep_cases(device, quick): a list of Case built with sweep.point(op, pass,
  params, size, ...) over a log-spaced grid of sizes, and SWEEP_SIZE, what
  its x-axis counts;
- its name goes into FAMILIES below; benchmarks/bench_<family>.py, a copy of
  another family's three-line script, runs it alone.
"""

import importlib

# The report's op families, in the order it runs them.
FAMILIES = ("reduce", "scatter_nd", "embedding", "matmul", "llama", "train")


def family(name):
    """The module of one op family."""
    if name not in FAMILIES:
        raise ValueError(f"unknown op family {name!r}; known: {', '.join(FAMILIES)}")
    return importlib.import_module(f"{__name__}.{name}")
