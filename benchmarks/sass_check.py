"""What the built CUDA kernels' machine code shows, without a GPU: cuobjdump (shipped in the
triton package torch installs, or the CUDA toolkit's) disassembles the sm_90 kernels of
the library (or of any cubin / shared object given), and this prints, per kernel:

- instructions, and loops (a branch to a lower address closes one);
- subroutine calls (a 64-bit integer division or remainder is a call to a software routine
  of about a hundred instructions; device printf is a call too, on the assert path) and
  32-bit integer divisions (inlined: the I2F.U32.RP / MUFU.RCP idiom), inside loops;
- global loads and stores by width (128-bit: LDG.E.128 / STG.E.128);
- local memory: register spills (a load from local memory, LDL: a spill is stored and
  reloaded) and other local stores (device printf's argument buffer);
- registers (cuobjdump -res-usage).

    python benchmarks/sass_check.py                 # the installed library, a summary
    python benchmarks/sass_check.py --table         # one line per kernel
    python benchmarks/sass_check.py --check         # exit 1 when a checked kernel breaks the rules
    python benchmarks/sass_check.py path/to/x.cubin --check --require '.*'

--check applies the rules of a bandwidth-bound kernel (no division or subroutine call
inside a loop, some 128-bit global access, no spill) to the kernels whose demangled name
matches a pattern of REBUILT below (or --require): those rebuilt on the designs of issue 21.
The rest are reported, not failed.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

# Kernels held to the bandwidth-bound rules: a regex on the demangled name, one per kernel
# rebuilt to them (none yet: the CUDA kernels have not been rebuilt on issue 21's designs).
REBUILT = []


def find_cuobjdump():
    """cuobjdump from the triton package that torch installs, else the CUDA toolkit's."""
    try:
        import triton

        path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        if os.path.exists(path):
            return path
    except ImportError:
        pass
    for cand in (shutil.which("cuobjdump"), "/usr/local/cuda/bin/cuobjdump"):
        if cand and os.path.exists(cand):
            return cand
    return None


def library_path():
    import teachcompute_ext

    return teachcompute_ext._loader._library_path()


@dataclass
class Kernel:
    name: str  # mangled
    demangled: str = ""
    instructions: int = 0
    loops: list = field(default_factory=list)  # (start, end) addresses of each back edge's body
    calls_in_loop: int = 0  # subroutine calls (CALL.REL) inside a loop body: 64-bit divisions and the like
    idiv32_in_loop: int = 0  # inlined 32-bit integer divisions inside a loop body
    calls: int = 0
    printf_calls: int = 0  # CALL.ABS (vprintf)
    loads: dict = field(default_factory=dict)  # width -> count
    stores: dict = field(default_factory=dict)
    local_loads: int = 0  # LDL: spills reloaded
    local_stores: int = 0  # STL: spills or printf's arguments
    registers: int = 0

    @property
    def vector128(self):
        return self.loads.get(128, 0) + self.stores.get(128, 0)

    @property
    def spills(self):
        return self.local_loads > 0

    def problems(self):
        out = []
        if self.calls_in_loop or self.idiv32_in_loop:
            out.append(
                f"integer division or subroutine call inside a loop ({self.calls_in_loop} calls, "
                f"{self.idiv32_in_loop} 32-bit divisions)"
            )
        if self.vector128 == 0:
            out.append("no 128-bit global access")
        if self.spills:
            out.append(f"spills ({self.local_loads} local loads)")
        return out


INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
WIDTH = re.compile(r"^(LDG|STG)\.E(?:\.(128|64|U16|S16|U8|S8))?")


def parse_sass(text):
    kernels = {}
    current = None
    body = []

    def finish():
        if current is not None:
            kernels[current.name] = analyse(current, body)

    for line in text.splitlines():
        if "Function :" in line:
            finish()
            current = Kernel(line.split("Function :", 1)[1].strip())
            body = []
            continue
        if current is None:
            continue
        m = INSTR.search(line)
        if m:
            body.append((int(m.group(1), 16), m.group(3), m.group(4).strip()))
    finish()
    return kernels


def analyse(k, body):
    k.instructions = len(body)
    for addr, op, args in body:
        if op == "BRA" or op.startswith("BRA."):
            target = re.search(r"0x([0-9a-f]+)", args)
            if target and int(target.group(1), 16) < addr:
                k.loops.append((int(target.group(1), 16), addr))
    in_loop = lambda a: any(lo <= a <= hi for lo, hi in k.loops)  # noqa: E731
    for i, (addr, op, args) in enumerate(body):
        if op.startswith("CALL.ABS"):
            k.printf_calls += 1
        elif op.startswith("CALL"):
            k.calls += 1
            if in_loop(addr):
                k.calls_in_loop += 1
        # 32-bit unsigned division, inlined: I2F.U32.RP of the divisor, then MUFU.RCP
        if op.startswith("I2F.U32.RP") and any(o.startswith("MUFU.RCP") for _, o, _ in body[i + 1 : i + 4]):
            if in_loop(addr):
                k.idiv32_in_loop += 1
        w = WIDTH.match(op)
        if w:
            width = {"128": 128, "64": 64, "U16": 16, "S16": 16, "U8": 8, "S8": 8}.get(w.group(2), 32)
            table = k.loads if w.group(1) == "LDG" else k.stores
            table[width] = table.get(width, 0) + 1
        if op.startswith("LDL"):
            k.local_loads += 1
        elif op.startswith("STL"):
            k.local_stores += 1
    return k


def read(path, cuobjdump, arch="sm_90"):
    sass = subprocess.run([cuobjdump, "-sass", "-arch", arch, path], capture_output=True, text=True, check=True).stdout
    kernels = parse_sass(sass)
    res = subprocess.run([cuobjdump, "-res-usage", "-arch", arch, path], capture_output=True, text=True).stdout
    current = None
    for line in res.splitlines():
        if line.strip().startswith("Function "):
            current = line.strip()[len("Function ") :].rstrip(":")
        elif current in kernels and "REG:" in line:
            kernels[current].registers = int(re.search(r"REG:(\d+)", line).group(1))
    names = list(kernels)
    if names and shutil.which("c++filt"):
        demangled = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout
        for n, d in zip(names, demangled.splitlines()):
            kernels[n].demangled = d
    for k in kernels.values():
        k.demangled = k.demangled or k.name
    return kernels


def short(name):
    """A demangled kernel name without its return type, namespaces and parameter list, its
    template arguments kept."""
    if name.endswith(")"):  # drop the parameter list: the parenthesis that closes at depth 0
        depth = 0
        for i in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[i], 0)
            if depth == 0:
                name = name[:i]
                break
    name = re.sub(r"^void ", "", name)
    name = re.sub(r"teachcompute_ext::cuda_kernels::(\(anonymous namespace\)::)?", "", name)
    return name.replace("c10::", "")


def summary(kernels):
    ks = list(kernels.values())
    return {
        "kernels": len(ks),
        "division or call inside a loop": sum(1 for k in ks if k.calls_in_loop or k.idiv32_in_loop),
        "any 128-bit global access": sum(1 for k in ks if k.vector128),
        "any local memory": sum(1 for k in ks if k.local_loads or k.local_stores),
        "spills (local loads)": sum(1 for k in ks if k.spills),
    }


def table(kernels):
    rows = []
    for k in sorted(kernels.values(), key=lambda k: k.demangled):
        loads = " ".join(f"{w}:{n}" for w, n in sorted(k.loads.items(), reverse=True))
        stores = " ".join(f"{w}:{n}" for w, n in sorted(k.stores.items(), reverse=True))
        rows.append(
            f"{short(k.demangled)[:90]:90s} {k.instructions:6d} instr {len(k.loops):3d} loops "
            f"{k.calls_in_loop + k.idiv32_in_loop:3d} div/call-in-loop  regs {k.registers:3d}  "
            f"LDG[{loads}] STG[{stores}] local {k.local_loads}/{k.local_stores}"
        )
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path", nargs="?", help="a cubin or shared object (default: the installed library)")
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--table", action="store_true", help="one line per kernel")
    p.add_argument("--check", action="store_true", help="fail when a checked kernel breaks the rules")
    p.add_argument(
        "--require",
        action="append",
        default=None,
        help="a regex on demangled names to check (default: REBUILT); repeatable",
    )
    args = p.parse_args(argv)
    cuobjdump = find_cuobjdump()
    if cuobjdump is None:
        print("cuobjdump not found (pip install triton, or the CUDA toolkit)", file=sys.stderr)
        return 2
    path = args.path or library_path()
    kernels = read(path, cuobjdump, args.arch)
    if not kernels:
        print(f"no {args.arch} kernel in {path} (built without CUDA, or for other architectures)", file=sys.stderr)
        return 2
    if args.table:
        print(table(kernels))
    print(f"{os.path.basename(path)}, {args.arch}: " + ", ".join(f"{k} {v}" for k, v in summary(kernels).items()))
    if not args.check:
        return 0
    patterns = [re.compile(r) for r in (args.require if args.require is not None else REBUILT)]
    checked = [k for k in kernels.values() if any(p.search(k.demangled) for p in patterns)]
    bad = [(k, k.problems()) for k in checked if k.problems()]
    for k, problems in bad:
        print(f"FAIL {short(k.demangled)}: {'; '.join(problems)}")
    print(f"checked {len(checked)} kernels against the bandwidth-bound rules: {len(bad)} fail")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
