"""Llama family benchmarks against torch, same process: rms_norm and add_rms_norm
against F.rms_norm (after x + residual); rotary_embedding on q and k against
transformers' formula ``q * cos + rotate_half(q) * sin``; swiglu and geglu
against ``F.silu(g) * u`` and ``F.gelu(g) * u`` (gate and up separate, and the
one-tensor form); one GEMM then swiglu against two F.linear; and the training
step of a one-layer decoder (teachcompute_ext.models) against its pure-torch
twin, with the peak memory of each. Forward and forward+backward, torch eager
and torch.compile.

    python -m teachcompute_ext.bench --family llama [--device cpu|cuda] [--quick] [--out DIR]
"""

import contextlib
import importlib
import os
import sys

import torch
import torch.nn.functional as F

import teachcompute_ext

from . import harness, sweep

EPS = 1e-6


# ---- the torch formulas we are measured against ------------------------------------------
def rotate_half(x):
    """transformers' rotate_half: [x1, x2] -> [-x2, x1]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def torch_rotary(x, cos_full, sin_full):
    """transformers' apply_rotary_pos_emb for one tensor, partial rotary included (GPT-NeoX,
    Phi): cos_full and sin_full are cat(cos, cos) and cat(sin, sin), of last dim rotary_dim."""
    rd = cos_full.shape[-1]
    if rd == x.shape[-1]:
        return x * cos_full + rotate_half(x) * sin_full
    rot, rest = x[..., :rd], x[..., rd:]
    return torch.cat((rot * cos_full + rotate_half(rot) * sin_full, rest), dim=-1)


def torch_rotary_interleaved(x, cos, sin):
    """The GPT-J pairing in torch: (x[2i], x[2i+1]) rotated by cos[i], sin[i]."""
    rd = 2 * cos.shape[-1]
    xe, xo = x[..., 0:rd:2], x[..., 1:rd:2]
    rot = torch.stack((xe * cos - xo * sin, xo * cos + xe * sin), dim=-1).flatten(-2)
    return torch.cat((rot, x[..., rd:]), dim=-1) if rd < x.shape[-1] else rot


def full_table(cos, sin):
    """cos, sin [..., rd/2] -> cat(cos, cos), cat(sin, sin): the table transformers'
    rotary module hands every layer, built once per forward, so outside the timing."""
    return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)


def torch_add_rms_norm(x, r, w, eps=EPS):
    h = x + r
    return F.rms_norm(h, (h.shape[-1],), w, eps), h


def _rms_norm(x, w, eps=EPS):
    return F.rms_norm(x, (x.shape[-1],), w, eps)


GLUS = {
    # variant: (ours(gate, up), torch's(gate, up)); up None: the one-tensor form
    "swiglu": (lambda g, u: teachcompute_ext.swiglu(g, u), lambda g, u: F.silu(g) * u),
    "geglu": (lambda g, u: teachcompute_ext.geglu(g, u), lambda g, u: F.gelu(g) * u),
}


def _halves(gu):
    g, u = gu.chunk(2, dim=-1)
    return g, u


# ---- checks ---------------------------------------------------------------------------------
def _exact_of(fn, inputs, grad=None, wrt=None):
    """fn's result in float64 on inputs (a tuple of tensors), or with grad (a tensor or a
    tuple) the gradients of its outputs with respect to inputs[i] for i in wrt."""

    def exact():
        x64 = [t.detach().double() for t in inputs]
        if grad is None:
            return fn(*x64)
        for i in wrt:
            x64[i].requires_grad_()
        out = fn(*x64)
        grads = tuple(g.double() for g in grad) if isinstance(grad, tuple) else grad.double()
        return torch.autograd.grad(out, [x64[i] for i in wrt], grads)

    return exact


def _check(dtype, exact):
    """harness.check_near_exact: in bfloat16 torch's own rounding (of a gradient summed over
    8192 rows, say) can miss the tolerance, and a result closer to float64 is not wrong."""
    return lambda ours, theirs: harness.check_near_exact(ours, theirs, exact, dtype)


def _leaves(*ts):
    return tuple(t.detach().clone().requires_grad_() for t in ts)


def _passes(ours, theirs, compiled, inputs, grad, wrt, label, dtype):
    """What the fwd and the fwd+bwd case of one op time and check: ours(*inputs) against
    theirs(*inputs) (label) and compiled(*inputs) (None: not compiled; its backward comes
    compiled too, through AOTAutograd); the backward gives the gradients of inputs[i] for
    i in wrt, grad being the outputs' gradient. Two (pass, Case keywords) pairs."""
    base = {label: lambda: theirs(*inputs)}
    if compiled is not None:
        base[harness.COMPILED] = lambda: compiled(*inputs)
    fwd = dict(ours=lambda: ours(*inputs), baselines=base, check=_check(dtype, _exact_of(theirs, inputs)))
    leaves = _leaves(*inputs)

    def run(fn):
        xs = list(inputs)
        for i in wrt:
            xs[i] = leaves[i]
        return torch.autograd.grad(fn(*xs), [leaves[i] for i in wrt], grad)

    base = {label: lambda: run(theirs)}
    if compiled is not None:
        base[harness.COMPILED] = lambda: run(compiled)
    bwd = dict(ours=lambda: run(ours), baselines=base, check=_check(dtype, _exact_of(theirs, inputs, grad, wrt)))
    return [("fwd", fwd), ("fwd+bwd", bwd)]


def _pair(op, shape, dtype, device, ours, theirs, inputs, grad, wrt, bytes_fwd, bytes_bwd, label):
    """The report's fwd and fwd+bwd cases of one op (see _passes); bytes_bwd: what the
    backward adds to the forward's bytes."""
    compiled = harness.compile_fn(theirs)
    return [
        harness.Case(
            op=op if pass_ == "fwd" else f"{op} {pass_}",
            shape=shape,
            dtype=dtype,
            device=device,
            bytes_moved=bytes_fwd if pass_ == "fwd" else bytes_fwd + bytes_bwd,
            **kw,
        )
        for pass_, kw in _passes(ours, theirs, compiled, inputs, grad, wrt, label, dtype)
    ]


# ---- the report's cases ---------------------------------------------------------------------
def _dtypes(device, quick):
    if quick:
        return [torch.float32] if device == "cpu" else [torch.bfloat16]
    return [torch.float32, torch.bfloat16]


def norm_cases(device, quick):
    rows, dim = (512, 1024) if quick else (8192, 4096)
    g = torch.Generator().manual_seed(21)
    cases = []
    for dtype in _dtypes(device, quick):
        x, r, go, gh = (torch.randn(rows, dim, generator=g).to(device, dtype) for _ in range(4))
        w = (1 + 0.1 * torch.randn(dim, generator=g)).to(device, dtype)
        nbytes = x.numel() * x.element_size()
        shape = f"{rows}x{dim}"
        cases += _pair(
            "rms_norm",
            shape,
            dtype,
            device,
            lambda x, w: teachcompute_ext.rms_norm(x, w, EPS),
            _rms_norm,
            (x, w),
            go,
            (0, 1),
            2 * nbytes,
            3 * nbytes,
            "F.rms_norm",
        )
        # Both outputs carry a gradient, as in a decoder where the sum goes on down the residual stream.
        cases += _pair(
            "add_rms_norm",
            shape,
            dtype,
            device,
            lambda x, r, w: teachcompute_ext.add_rms_norm(x, r, w, EPS),
            torch_add_rms_norm,
            (x, r, w),
            (go, gh),
            (0, 1, 2),
            4 * nbytes,
            4 * nbytes,
            "x + r, F.rms_norm",
        )
    return cases


def rotary_cases(device, quick):
    """q and k rotated per call, [batch, heads, seq, head_dim] as attention takes them; and
    the view of a [batch, seq, heads, head_dim] projection (no copy before attention)."""
    b, h, s, d = (1, 8, 128, 64) if quick else (2, 32, 1024, 128)
    g = torch.Generator().manual_seed(22)
    cases = []
    for dtype in _dtypes(device, quick):
        theta = torch.rand(s, d // 2, generator=g) * 6.3
        cos, sin = theta.cos().to(device, dtype), theta.sin().to(device, dtype)
        cos_full, sin_full = full_table(cos, sin)
        layouts = [("bhsd", (b, h, s, d), lambda t: t)]
        if not quick:
            layouts.append(("bshd view", (b, s, h, d), lambda t: t.transpose(1, 2)))
        for layout, stored, view in layouts:
            q, k, gq, gk = (view(torch.randn(stored, generator=g).to(device, dtype)) for _ in range(4))

            def ours(q, k, c=cos, s_=sin):
                return teachcompute_ext.rotary_embedding(q, c, s_), teachcompute_ext.rotary_embedding(k, c, s_)

            def theirs(q, k, c=cos_full[None, None], s_=sin_full[None, None]):
                return torch_rotary(q, c, s_), torch_rotary(k, c, s_)

            nbytes = q.numel() * q.element_size()
            cases += _pair(
                "rotary_embedding q,k",
                f"{b}x{h}x{s}x{d} {layout}, cos [{s}, {d // 2}]",
                dtype,
                device,
                ours,
                theirs,
                (q, k),
                (gq, gk),
                (0, 1),
                4 * nbytes,
                4 * nbytes,
                "q*cos + rotate_half(q)*sin",
            )
    return cases


def glu_cases(device, quick):
    rows, inter = (256, 1024) if quick else (4096, 11008)
    g = torch.Generator().manual_seed(23)
    cases = []
    for dtype in _dtypes(device, quick):
        gate, up, grad = (torch.randn(rows, inter, generator=g).to(device, dtype) for _ in range(3))
        gu = torch.cat((gate, up), dim=-1)
        nbytes = gate.numel() * gate.element_size()
        for name, (ours, theirs) in GLUS.items():
            if quick and name != "swiglu":
                continue
            label = "F.silu(g) * u" if name == "swiglu" else "F.gelu(g) * u"
            cases += _pair(
                name,
                f"{rows}x{inter}",
                dtype,
                device,
                ours,
                theirs,
                (gate, up),
                grad,
                (0, 1),
                3 * nbytes,
                5 * nbytes,
                label,
            )
            cases += _pair(
                f"{name} one-tensor",
                f"{rows}x{2 * inter}",
                dtype,
                device,
                lambda t, f=ours: f(t, None),
                lambda t, f=theirs: f(*_halves(t)),
                (gu,),
                grad,
                (0,),
                3 * nbytes,
                5 * nbytes,
                label,
            )
    return cases


def gemm_glu_cases(device, quick):
    """The issue's question: one GEMM into [M, 2I] then swiglu's one-tensor form (ours),
    against two F.linear then F.silu * mul (torch eager, and compiled), two F.linear then
    swiglu, and the gate's silu in fused_linear's epilogue times the up GEMM."""
    m, hidden, inter = (64, 128, 176) if quick else (1024, 1024, 2816)
    g = torch.Generator().manual_seed(24)
    cases = []
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    x = torch.randn(m, hidden, generator=g).to(device, dtype)
    w = (torch.randn(2 * inter, hidden, generator=g) / hidden**0.5).to(device, dtype)
    wg, wu = w[:inter].contiguous(), w[inter:].contiguous()
    grad = torch.randn(m, inter, generator=g).to(device, dtype)
    flops = 2.0 * m * hidden * 2 * inter

    def ours(x, wg, wu, w=None):
        return teachcompute_ext.swiglu(teachcompute_ext.fused_linear(x, w))

    def eager(x, wg, wu, w=None):
        return F.silu(F.linear(x, wg)) * F.linear(x, wu)

    def two_gemms_swiglu(x, wg, wu, w=None):
        return teachcompute_ext.swiglu(F.linear(x, wg), F.linear(x, wu))

    def epilogue(x, wg, wu, w=None):
        return teachcompute_ext.fused_linear(x, wg, None, "silu") * F.linear(x, wu)

    compiled = harness.compile_fn(eager)
    shape = f"x{m}x{hidden} W{2 * inter}x{hidden}"
    base = {
        "F.silu(linear) * linear": lambda: eager(x, wg, wu),
        **({} if compiled is None else {harness.COMPILED: lambda: compiled(x, wg, wu)}),
        "2 F.linear + swiglu": lambda: two_gemms_swiglu(x, wg, wu),
        "fused_linear silu * linear": lambda: epilogue(x, wg, wu),
    }
    cases.append(
        harness.Case(
            op="linear + swiglu",
            shape=shape,
            dtype=dtype,
            device=device,
            flops=flops,
            ours=lambda: ours(x, wg, wu, w),
            baselines=base,
            check=_check(dtype, _exact_of(eager, (x, wg, wu))),
        )
    )
    # Backward: the gradients of x and of the gate and up weights (ours: the halves of one).
    xl, wgl, wul, wl = _leaves(x, wg, wu, w)

    def split_weights(fn):
        return torch.autograd.grad(fn(xl, wgl, wul), (xl, wgl, wul), grad)

    def one_weight(fn):
        gx, gw = torch.autograd.grad(fn(xl, None, None, wl), (xl, wl), grad)
        return gx, gw[:inter], gw[inter:]

    base = {
        "F.silu(linear) * linear": lambda: split_weights(eager),
        **({} if compiled is None else {harness.COMPILED: lambda: split_weights(compiled)}),
        "2 F.linear + swiglu": lambda: split_weights(two_gemms_swiglu),
        "fused_linear silu * linear": lambda: split_weights(epilogue),
    }
    cases.append(
        harness.Case(
            op="linear + swiglu fwd+bwd",
            shape=shape,
            dtype=dtype,
            device=device,
            flops=3 * flops,
            ours=lambda: one_weight(ours),
            baselines=base,
            check=_check(dtype, _exact_of(eager, (x, wg, wu), grad, (0, 1, 2))),
        )
    )
    return cases


# ---- the decoder's training step --------------------------------------------------------------
def _models():
    """teachcompute_ext.models.llama, or None while the package has none."""
    try:
        return importlib.import_module("teachcompute_ext.models.llama")
    except ImportError:
        return None


@contextlib.contextmanager
def _quiet_native_stderr():
    """File descriptor 2 on /dev/null (native code's writes), Python's sys.stderr untouched."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


def peak_memory(fn, device):
    """Bytes allocated at the peak of fn() beyond what was allocated before: the CUDA
    allocator's statistics; on the CPU (which keeps none) the running sum of the
    allocations and frees torch.profiler records, in order."""
    if device.startswith("cuda"):
        return harness.cuda_peak_bytes(fn)
    from torch.profiler import ProfilerActivity, profile

    # Kineto writes its own log lines to the process's stderr (USDT profiler_start /
    # profiler_stop, and an "ERROR ... gpuGetDeviceCount failed" on a machine with no
    # GPU, where nothing went wrong): the report's stderr is its progress, so the
    # profiler's file descriptor 2 goes to /dev/null while it runs.
    with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # The raw events: prof.events() folds each allocation made inside an op into that op's
    # total and keeps only the frees made outside one, which leaves no order to replay.
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    now = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        now += e.nbytes()
        peak = max(peak, now)
    return peak


# Per report case op: what measures its memory, run only when the case is selected.
_MEMORY = {}


def block_cases(device, quick):
    """One decoder layer's training step, forward + loss + backward (the gradients of every
    parameter), fused against the twin (fused=()), eager and compiled. A vocabulary of 1000:
    the head's GEMM would otherwise dominate a step whose subject is the block."""
    models = _models()
    if models is None:
        print(
            "llama: teachcompute_ext.models.llama is missing: the decoder block's training step is skipped",
            file=sys.stderr,
        )
        return []
    if quick:
        cfg = dict(vocab_size=256, hidden_size=64, num_heads=4, intermediate_size=176, num_layers=1)
        batch, seq = 2, 32
    else:
        cfg = dict(vocab_size=1000, hidden_size=1024, num_heads=16, intermediate_size=2816, num_layers=1)
        batch, seq = 4, 256
    config = models.LlamaConfig(**cfg, max_position=seq)
    g = torch.Generator().manual_seed(25)
    ids = torch.randint(0, cfg["vocab_size"], (batch, seq), generator=g).to(device)
    shape = (
        f"hidden {cfg['hidden_size']}, {cfg['num_heads']} heads, inter {cfg['intermediate_size']}, {batch}x{seq} tokens"
    )
    cases = []
    for dtype in _dtypes(device, quick):
        torch.manual_seed(26)
        fused = models.LlamaForCausalLM(config).to(device, dtype)
        twin = models.LlamaForCausalLM(config, fused=()).to(device, dtype)
        twin.load_state_dict(fused.state_dict())

        def step(model, ref):
            """(loss, the gradients of ref's parameters in name order): model is ref or
            ref compiled, which shares its parameters."""
            params = [p for _, p in sorted(ref.named_parameters())]
            _, loss = model(ids, labels=ids)
            return (loss.detach(), *torch.autograd.grad(loss, params))

        def exact(fused=fused):
            ref = models.LlamaForCausalLM(config, fused=()).to(device, torch.float64)
            ref.load_state_dict({k: v.double() for k, v in fused.state_dict().items()})
            return step(ref, ref)

        check = _check(dtype, exact)
        op = "llama block step"
        compiled_twin = harness.compile_fn(twin)
        base = {
            "twin (torch)": lambda t=twin: step(t, t),
            **({} if compiled_twin is None else {harness.COMPILED: lambda c=compiled_twin, t=twin: step(c, t)}),
        }
        cases.append(
            harness.Case(
                op=op,
                shape=shape,
                dtype=dtype,
                device=device,
                ours=lambda f=fused: step(f, f),
                baselines=base,
                check=check,
            )
        )
        _MEMORY[(op, str(dtype))] = lambda f=fused, t=twin: {
            "ours": peak_memory(lambda: step(f, f), device),
            "twin (torch)": peak_memory(lambda: step(t, t), device),
        }
        compiled_fused = harness.compile_fn(fused)
        if compiled_fused is not None:
            # Under torch.compile both ways: what compiling the fused model buys over compiling the twin.
            cases.append(
                harness.Case(
                    op=f"{op} compiled",
                    shape=shape,
                    dtype=dtype,
                    device=device,
                    ours=lambda c=compiled_fused, f=fused: step(c, f),
                    baselines={harness.COMPILED: lambda c=compiled_twin, t=twin: step(c, t)},
                    check=check,
                )
            )
            _MEMORY[(f"{op} compiled", str(dtype))] = lambda cf=compiled_fused, f=fused, ct=compiled_twin, t=twin: {
                "ours": peak_memory(lambda: step(cf, f), device),
                harness.COMPILED: peak_memory(lambda: step(ct, t), device),
            }
    return cases


def cases(device, quick):
    return (
        norm_cases(device, quick)
        + rotary_cases(device, quick)
        + glu_cases(device, quick)
        + gemm_glu_cases(device, quick)
        + block_cases(device, quick)
    )


def run(device, quick, out_dir, progress=None):
    """harness.run_family's steps, with the decoder step's peak memory added to its rows
    (measured once the case is checked and timed: a compiled model has compiled by then)."""
    selected = harness.select(cases(device, quick))
    if not selected:
        return [], None, None
    rounds, min_batch_s = (5, 0.01) if quick else (11, 0.05)
    nbytes = (64 << 20) if quick else (512 << 20)
    bound = harness.shared_bound(("copy", device, nbytes), lambda: harness.copy_bandwidth(device, nbytes=nbytes))
    results = []
    for i, case in enumerate(selected):
        if progress:
            progress(case, i, len(selected))
        (row,) = harness.run_cases([case], bound_bytes_per_s=bound, rounds=rounds, min_batch_s=min_batch_s)
        memory = _MEMORY.get((case.op, str(case.dtype)))
        if memory is not None and "error" not in row:
            peaks = memory()
            row["peak_memory_MiB"] = {label: b / 2**20 for label, b in peaks.items()}
            row["note"] = "peak memory " + ", ".join(f"{label} {b / 2**20:.0f} MiB" for label, b in peaks.items())
        results.append(row)
    path = harness.write_json(
        os.path.join(out_dir, f"llama-{device}.json"),
        "llama",
        device,
        results,
        {"copy_GB_per_s": bound / 1e9},
        {"quick": quick, "rounds": rounds, "min_batch_s": min_batch_s},
    )
    return results, bound, path


# ---- the sweep (sweep.py): the x-axis is the element count of x (of the gate for the GLUs) ----
SWEEP_SIZE = "elements of x (of the gate for swiglu, geglu)"


def _sweep_pair(variant, params, size, dtype, device, ours, theirs, compiled, inputs, grad, wrt, values="normal"):
    """The sweep's fwd and fwd+bwd points of one op (see _passes)."""
    return [
        sweep.point(variant, pass_, params, size, values=values, dtype=dtype, device=device, **kw)
        for pass_, kw in _passes(ours, theirs, compiled, inputs, grad, wrt, "torch", dtype)
    ]


def values_cases(device, quick):
    """Values of scale 30 (LLM activations' outliers) through the norms and the gated units, at
    a few sizes of the grid."""
    norm_grid = [(16, 1000)] if quick else [(256, 300), (2048, 4096)]
    glu_grid = [(16, 1000)] if quick else [(256, 2816), (1024, 2816)]
    g = torch.Generator().manual_seed(28)
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        for rows, dim in norm_grid:
            x, r = ((torch.randn(rows, dim, generator=g) * 30).to(device, dtype) for _ in range(2))
            go, gh = (torch.randn(rows, dim, generator=g).to(device, dtype) for _ in range(2))
            w = (1 + 0.1 * torch.randn(dim, generator=g)).to(device, dtype)
            params, size = {"rows": rows, "cols": dim}, rows * dim
            cases += _sweep_pair(
                "rms_norm",
                params,
                size,
                dtype,
                device,
                lambda x, w: teachcompute_ext.rms_norm(x, w, EPS),
                _rms_norm,
                None,
                (x, w),
                go,
                (0, 1),
                "outliers",
            )
            cases += _sweep_pair(
                "add_rms_norm",
                params,
                size,
                dtype,
                device,
                lambda x, r, w: teachcompute_ext.add_rms_norm(x, r, w, EPS),
                torch_add_rms_norm,
                None,
                (x, r, w),
                (go, gh),
                (0, 1, 2),
                "outliers",
            )
        for rows, inter in glu_grid:
            gate, up = ((torch.randn(rows, inter, generator=g) * 30).to(device, dtype) for _ in range(2))
            grad = torch.randn(rows, inter, generator=g).to(device, dtype)
            params, size = {"rows": rows, "inter": inter}, rows * inter
            for name, (ours, theirs) in GLUS.items():
                cases += _sweep_pair(
                    name, params, size, dtype, device, ours, theirs, None, (gate, up), grad, (0, 1), "outliers"
                )
    return cases


def sweep_cases(device, quick):
    """rms_norm and add_rms_norm over [rows, width], one row to 8192x4096, widths 7 to 4096;
    rotary_embedding (rotate-half and interleaved) on [batch, heads, seq, head_dim] from one
    decoding step's query to the report's 2x32x1024x128, head_dim 64 and 128, rotary_dim
    below head_dim too; swiglu (gate and up, and the one-tensor form) and geglu over
    [rows, intermediate], one row to 4096x11008."""
    if quick:
        norm_grid = [(1, 7), (16, 1000), (256, 300)]
        rope_grid = [(1, 8, 1, 64, 64), (1, 4, 64, 128, 32)]  # (batch, heads, seq, head_dim, rotary_dim)
        glu_grid = [(1, 33), (64, 1000)]
    else:
        norm_grid = [
            (1, 7),
            (1, 33),
            (1, 96),
            (1, 300),
            (1, 1000),
            (1, 4096),
            (32, 33),
            (4, 4096),
            (64, 96),
            (256, 300),
            (1024, 1000),
            (512, 4096),
            (2048, 4096),
            (8192, 4096),
        ]
        rope_grid = [
            (1, 1, 1, 64, 64),
            (1, 8, 1, 64, 64),
            (1, 32, 1, 128, 128),
            (1, 8, 16, 64, 32),
            (1, 8, 64, 128, 128),
            (2, 16, 128, 64, 64),
            (1, 32, 256, 128, 64),
            (2, 32, 512, 128, 128),
            (2, 32, 1024, 128, 128),
        ]
        glu_grid = [
            (1, 7),
            (1, 33),
            (1, 300),
            (1, 1000),
            (1, 11008),
            (32, 1000),
            (256, 2816),
            (1024, 2816),
            (4096, 11008),
        ]
    g = torch.Generator().manual_seed(27)
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        for rows, dim in norm_grid:
            x, r, go, gh = (torch.randn(rows, dim, generator=g).to(device, dtype) for _ in range(4))
            w = (1 + 0.1 * torch.randn(dim, generator=g)).to(device, dtype)
            params, size = {"rows": rows, "cols": dim}, rows * dim
            cases += _sweep_pair(
                "rms_norm",
                params,
                size,
                dtype,
                device,
                lambda x, w: teachcompute_ext.rms_norm(x, w, EPS),
                _rms_norm,
                sweep.compiled(("llama", "rms_norm"), _rms_norm),
                (x, w),
                go,
                (0, 1),
            )
            cases += _sweep_pair(
                "add_rms_norm",
                params,
                size,
                dtype,
                device,
                lambda x, r, w: teachcompute_ext.add_rms_norm(x, r, w, EPS),
                torch_add_rms_norm,
                sweep.compiled(("llama", "add_rms_norm"), torch_add_rms_norm),
                (x, r, w),
                (go, gh),
                (0, 1, 2),
            )
        for b, h, s, d, rd in rope_grid:
            x, grad = (torch.randn(b, h, s, d, generator=g).to(device, dtype) for _ in range(2))
            theta = torch.rand(s, rd // 2, generator=g) * 6.3
            cos, sin = theta.cos().to(device, dtype), theta.sin().to(device, dtype)
            cos_full, sin_full = full_table(cos, sin)
            params = {"batch": b, "heads": h, "seq": s, "head_dim": d, "rotary_dim": rd}
            size = x.numel()
            # The tables are inputs of the compiled function (not closed over), so that one
            # dynamic kernel serves every size; they need no gradient, as in a model.
            cases += _sweep_pair(
                "rotary_embedding",
                params,
                size,
                dtype,
                device,
                lambda x, c=cos, s_=sin: teachcompute_ext.rotary_embedding(x, c, s_),
                lambda x, c=cos_full, s_=sin_full: torch_rotary(x, c, s_),
                _with(sweep.compiled(("llama", "rotary"), torch_rotary), cos_full, sin_full),
                (x,),
                grad,
                (0,),
            )
            cases += _sweep_pair(
                "rotary_embedding interleaved",
                params,
                size,
                dtype,
                device,
                lambda x, c=cos, s_=sin: teachcompute_ext.rotary_embedding(x, c, s_, True),
                lambda x, c=cos, s_=sin: torch_rotary_interleaved(x, c, s_),
                _with(sweep.compiled(("llama", "rotary interleaved"), torch_rotary_interleaved), cos, sin),
                (x,),
                grad,
                (0,),
            )
        for rows, inter in glu_grid:
            gate, up, grad = (torch.randn(rows, inter, generator=g).to(device, dtype) for _ in range(3))
            gu = torch.cat((gate, up), dim=-1)
            params, size = {"rows": rows, "inter": inter}, rows * inter
            for name, (ours, theirs) in GLUS.items():
                cases += _sweep_pair(
                    name,
                    params,
                    size,
                    dtype,
                    device,
                    ours,
                    theirs,
                    sweep.compiled(("llama", name), theirs),
                    (gate, up),
                    grad,
                    (0, 1),
                )
            ours, theirs = GLUS["swiglu"]

            def one(t, f=theirs):
                return f(*_halves(t))

            cases += _sweep_pair(
                "swiglu one-tensor",
                params,
                size,
                dtype,
                device,
                lambda t, f=ours: f(t, None),
                one,
                sweep.compiled(("llama", "swiglu one-tensor"), one),
                (gu,),
                grad,
                (0,),
            )
    return cases


def _with(compiled, *tables):
    """compiled(x, *tables) as a function of x, or None when the run does not compile."""
    return None if compiled is None else (lambda x: compiled(x, *tables))
