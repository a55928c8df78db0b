"""Runs every op family's benchmarks on the CPU (and CUDA when present): the
same report as `python -m teachcompute_ext.bench`, with the JSON going to
benchmarks/results/ (the committed figures) unless --out says otherwise.

    python benchmarks/run.py              # real numbers into benchmarks/results/
    python benchmarks/run.py --quick      # small sizes, few repeats (CI)

The harness and the cases live in the package (teachcompute_ext/bench/) so that
the report also runs from an installed wheel; this folder keeps the scripts and
the results.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# Benchmark the checkout these scripts sit in, not whichever teachcompute_ext
# another editable install points the interpreter at.
sys.path.insert(0, os.path.dirname(HERE))

from teachcompute_ext.bench.__main__ import main as _main  # noqa: E402


def main(argv=None):
    return _main(sys.argv[1:] if argv is None else argv, default_out=os.path.join(HERE, "results"))


if __name__ == "__main__":
    sys.exit(main())
