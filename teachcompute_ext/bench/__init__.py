"""The benchmark report: every op family against torch, in the same process.

    python -m teachcompute_ext.bench --help

It lives in the package, not only in benchmarks/, so that it runs from an
installed wheel as well as from a checkout.
"""
import importlib

# The report's op families, in the order it runs them. Each is a module of this
# package with run(device, quick, out_dir, progress=None) -> (results, bound, json_path);
# adding a family is adding its module and its name here.
FAMILIES = ("reduce", "scatter_nd", "embedding")


def family(name):
    """The module of one op family."""
    if name not in FAMILIES:
        raise ValueError(f"unknown op family {name!r}; known: {', '.join(FAMILIES)}")
    return importlib.import_module(f"{__name__}.{name}")
