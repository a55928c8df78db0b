"""Training-step family: one step (forward, loss, backward, optimizer) of the README's
text classifier, EmbeddingBag(mean) -> FusedLinear(gelu) -> FusedLinear, with its table
trained by the fused backward-and-update (teachcompute_ext.nn.EmbeddingBag(optimizer=)),
against the same model in torch: (a) dense AdamW over every parameter, (b) torch's sparse
path, nn.EmbeddingBag(sparse=True) with SparseAdam for the table and AdamW for the rest.
And the fused update alone (embedding_bag_update_) against torch's sparse backward and
SparseAdam step at the same shapes.

python -m teachcompute_ext.bench --family train [--device cpu|cuda] [--quick] [--out DIR]

What a step moves: dense AdamW reads and writes every row of the table and its two
moments (7 passes over num x dim floats: weight, grad, two moments read; weight, two
moments written) for the few rows a batch touches; the sparse path coalesces a sparse
gradient (a sort) and updates only those rows; the fused step never builds a gradient
of the table and updates each touched row once, in the backward.
"""

import torch
import torch.nn.functional as F

import teachcompute_ext  # noqa: F401  (the ops)
from teachcompute_ext.nn import EmbeddingBag, FusedLinear

from . import harness, sweep

TOKENS = 20  # per bag, as the README's example
HIDDEN, CLASSES = 128, 2
LR = 1e-3


class _Fused(torch.nn.Module):
    def __init__(self, vocab, dim):
        super().__init__()
        self.bag = EmbeddingBag(vocab, dim, mode="mean", optimizer=dict(name="adamw", lr=LR, weight_decay=0.01))
        self.hidden = FusedLinear(dim, HIDDEN, activation="gelu")
        self.out = FusedLinear(HIDDEN, CLASSES)

    def forward(self, tokens, offsets):
        return self.out(self.hidden(self.bag(tokens, offsets)))


class _Twin(torch.nn.Module):
    def __init__(self, vocab, dim, sparse):
        super().__init__()
        self.bag = torch.nn.EmbeddingBag(vocab, dim, mode="mean", sparse=sparse)
        self.hidden = torch.nn.Linear(dim, HIDDEN)
        self.out = torch.nn.Linear(HIDDEN, CLASSES)

    def forward(self, tokens, offsets):
        return self.out(F.gelu(self.hidden(self.bag(tokens, offsets))))


def _models(vocab, dim, device, seed):
    """The fused model and its two torch twins, with the same parameters, and each one's step."""
    torch.manual_seed(seed)
    fused = _Fused(vocab, dim).to(device)
    dense, sparse = _Twin(vocab, dim, False).to(device), _Twin(vocab, dim, True).to(device)
    state = {k: v for k, v in fused.state_dict().items() if not k.endswith("_extra_state")}
    dense.load_state_dict(state)
    sparse.load_state_dict(state)
    rest = [p for n, p in fused.named_parameters() if not n.startswith("bag.")]
    opt_fused = torch.optim.AdamW(rest, lr=LR)
    opt_dense = torch.optim.AdamW(dense.parameters(), lr=LR)
    opt_table = torch.optim.SparseAdam([sparse.bag.weight], lr=LR)
    opt_rest = torch.optim.AdamW([p for n, p in sparse.named_parameters() if not n.startswith("bag.")], lr=LR)

    def stepper(model, opts):
        def step(tokens, offsets, labels):
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(tokens, offsets), labels)
            loss.backward()
            for o in opts:
                o.step()
            return loss.detach()

        return step

    return stepper(fused, [opt_fused]), stepper(dense, [opt_dense]), stepper(sparse, [opt_table, opt_rest])


def _batch(vocab, bags, device, seed):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (bags * TOKENS,), generator=g).to(device)
    offsets = torch.arange(0, bags * TOKENS, TOKENS, device=device)
    labels = torch.randint(0, CLASSES, (bags,), generator=g).to(device)
    return tokens, offsets, labels


def _check_loss(a, b):
    # The first step of each model starts from the same parameters: the same loss.
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _step_case(vocab, dim, bags, device, op="training step", **sweep_point):
    fused, dense, sparse = _models(vocab, dim, device, seed=bags)
    batch = _batch(vocab, bags, device, seed=bags + 1)
    kw = dict(
        dtype=torch.float32,
        device=device,
        ours=lambda: fused(*batch),
        baselines={"torch, dense AdamW": lambda: dense(*batch), "torch, sparse + SparseAdam": lambda: sparse(*batch)},
        check=_check_loss,
        note="README model: EmbeddingBag mean -> FusedLinear gelu 128 -> FusedLinear 2; the table by adamw, "
        "fused with the backward (ours), dense AdamW or SparseAdam (torch)",
    )
    if sweep_point:
        return sweep.point(op, "fwd+bwd", {"table": f"{vocab}x{dim}", "bags": bags}, bags, **kw)
    # The fewest bytes a step must move: the bags' rows gathered, and each touched row of the
    # table and its two moments read and written once (at most every row).
    touched = min(vocab, bags * TOKENS)
    return harness.Case(
        op=op,
        shape=f"table {vocab}x{dim}, batch {bags}x{TOKENS}",
        bytes_moved=bags * TOKENS * dim * 4 + 6 * touched * dim * 4,
        **kw,
    )


def _update_case(vocab, dim, bags, device):
    """The fused backward-and-update alone against torch's sparse backward plus SparseAdam step
    (the forward's graph kept, so that only the backward and the step are timed)."""
    tokens, offsets, _ = _batch(vocab, bags, device, seed=7)
    g = torch.Generator().manual_seed(8)
    w0 = torch.randn(vocab, dim, generator=g).to(device)
    grad = torch.randn(bags, dim, generator=g).to(device)
    w, m, v = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
    argmax = torch.empty(0, dtype=torch.long, device=device)
    count = [0]

    def ours():
        count[0] += 1
        torch.ops.teachcompute_ext.embedding_bag_update_(
            w,
            m,
            v,
            grad,
            tokens,
            offsets,
            argmax,
            "mean",
            None,
            None,
            False,
            False,
            "adam",
            LR,
            0.9,
            0.999,
            1e-8,
            0.0,
            count[0],
        )
        return w[tokens[:TOKENS]]

    param = torch.nn.Parameter(w0.clone())
    opt = torch.optim.SparseAdam([param], lr=LR)
    out = F.embedding_bag(tokens, param, offsets, mode="mean", sparse=True)

    def theirs():
        opt.zero_grad(set_to_none=True)
        out.backward(grad, retain_graph=True)
        opt.step()
        return param.detach()[tokens[:TOKENS]]

    touched = min(vocab, bags * TOKENS)
    return harness.Case(
        op="embedding_bag backward + adam step",
        shape=f"table {vocab}x{dim}, {bags} bags x {TOKENS}",
        dtype=torch.float32,
        device=device,
        ours=ours,
        baselines={"sparse backward + SparseAdam.step": theirs},
        bytes_moved=bags * dim * 4 + 6 * touched * dim * 4,
        note="ours: embedding_bag_update_ (the gradient never built); torch: the sparse gradient, coalesced, "
        "then SparseAdam on its rows",
    )


def cases(device, quick):
    tables = [(20000, 64)] if quick else [(20000, 64), (1000000, 64)]
    batches = [32, 256] if quick else [32, 256, 2048]
    out = []
    for vocab, dim in tables:
        for bags in batches:
            out.append(_step_case(vocab, dim, bags, device))
        for bags in batches:
            out.append(_update_case(vocab, dim, bags, device))
    return out


def run(device, quick, out_dir, progress=None):
    return harness.run_family("train", cases(device, quick), device, quick, out_dir, progress)


# The sweep: the training step of the 20000x64 model from one bag to 2048 bags a step.
SWEEP_SIZE = "bags per step (20 tokens each)"


def sweep_cases(device, quick):
    batches = [1, 32, 512] if quick else [1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048]
    return [_step_case(20000, 64, b, device, op="training step 20000x64", sweep_point=True) for b in batches]
