"""The op table (tests/op_db.py) itself, and the checks that loop over it:

- every public op, and every op of the library, has an entry (a new op fails here until added);
- the table's layout contract and autocast policy are the ones registered;
- every sample of every op, in every dtype it takes, against its reference in float64;
- the fake kernels refuse every bad input of the table as the real kernels do (same
  exception type, both naming the op, the table's words);
- compiled autograd (torch._dynamo.compiled_autograd, and torch.compile of a training
  step with it on) gives eager's gradients for every differentiable op.
"""

import pytest
import torch
from torch._dynamo import compiled_autograd
from torch._dynamo.utils import counters
from torch._subclasses.fake_tensor import FakeTensorMode

import teachcompute_ext

from op_db import BY_NAME, DIFFERENTIABLE, INTS, OPS, PUBLIC, call, differentiable_samples, leaves_and_loss, outputs

ops = torch.ops.teachcompute_ext


def test_every_public_op_has_an_entry():
    assert {op.name for op in PUBLIC} == set(teachcompute_ext.ops.__all__)


def test_every_op_of_the_library_has_an_entry():
    names = {n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("teachcompute_ext::")}
    assert names == set(BY_NAME), names ^ set(BY_NAME)


TAGS = {"any": torch.Tag.flexible_layout, "contiguous": torch.Tag.needs_contiguous_strides}


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_layout_contract_is_the_tables(op):
    tags = set(op.overload.tags)
    assert torch.Tag.pt2_compliant_tag in tags
    layout = {TAGS[k] for k in TAGS if TAGS[k] in tags}
    assert layout == ({TAGS[op.layout]} if op.layout in TAGS else set()), (op.name, tags)


@pytest.mark.parametrize("op", [op for op in OPS if op.layout != "composite"], ids=lambda op: op.name)
def test_autocast_kernels_are_the_tables(op):
    def has(key):
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"teachcompute_ext::{op.name}", key)

    assert has("AutocastCPU") == (op.autocast in ("lower", "promote")), op.name
    assert has("AutocastCUDA") == (op.autocast is not None), op.name


def _reference_inputs(sample):
    return sample.map(lambda t: t.double() if t.is_floating_point() else t)


def _compare(op, out, ref, dtype):
    rtol, atol = op.tolerance(dtype)
    for o, r in zip(outputs(out), outputs(ref)):
        if o.is_floating_point():
            torch.testing.assert_close(o.double(), r.double(), rtol=rtol, atol=atol, equal_nan=True)
        else:
            assert torch.equal(o, r.to(o.dtype)), (o, r)


CORRECTNESS = [(op, dtype) for op in OPS if op.ref is not None for dtype in op.dtypes]


@pytest.mark.parametrize("op,dtype", CORRECTNESS, ids=lambda v: v.name if hasattr(v, "name") else str(v)[6:])
def test_every_sample_matches_the_reference(op, dtype):
    for sample in op.samples("cpu", dtype):
        out = call(op, sample)
        same = call(op, sample, op.ref)  # torch's own ops in the same dtype: the output dtype
        for o, r in zip(outputs(out), outputs(same)):
            assert o.dtype == r.dtype and o.shape == r.shape, (sample.name, o.dtype, r.dtype, o.shape, r.shape)
        if op.name in ("reduce_max", "reduce_min"):
            # ties (integers, bools) may pick another index than torch's: the value at ours is the extreme
            values, indices = out
            x, dim = sample.args[0], sample.args[1]
            keep = sample.args[2] if len(sample.args) > 2 else False
            picked = x.gather(dim, indices if keep else indices.unsqueeze(dim))
            assert torch.equal(picked if keep else picked.squeeze(dim), values), sample.name
            out = values
            same = same[0]
        ref = call(op, _reference_inputs(sample), op.ref) if dtype not in INTS else same
        try:
            _compare(op, out, outputs(ref)[0] if op.name in ("reduce_max", "reduce_min") else ref, dtype)
        except AssertionError as e:
            raise AssertionError(f"{op.name} {dtype} sample '{sample.name}': {e}") from None


BAD = [(op, i) for op in OPS for i in range(len(op.bad("cpu")))]


@pytest.mark.parametrize("op,i", BAD, ids=lambda v: v.name if hasattr(v, "name") else str(v))
def test_bad_input_is_refused_by_name_and_the_fake_kernel_agrees(op, i):
    bad = op.bad("cpu")[i]
    with pytest.raises(bad.error, match=bad.words) as real:
        op.op(*bad.args)
    assert f"teachcompute_ext.{op.error_name}" in str(real.value)
    if bad.values:
        return  # the values are not in a fake tensor: only the kernel can see them
    mode = FakeTensorMode()
    args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in bad.args]
    with mode, pytest.raises(Exception) as fake:
        op.op(*args)
    assert type(fake.value) is type(real.value), (fake.value, real.value)
    assert f"teachcompute_ext.{op.error_name}" in str(fake.value)
    assert str(fake.value).split("\n")[0] == str(real.value).split("\n")[0]


# ---- compiled autograd --------------------------------------------------------------------------


@pytest.mark.parametrize("op", DIFFERENTIABLE, ids=lambda op: op.name)
def test_compiled_autograd_gives_eagers_gradients(op):
    torch._dynamo.reset()
    for sample in differentiable_samples(op, dtype=torch.float32):
        leaves, loss = leaves_and_loss(op, sample)
        eager = torch.autograd.grad(loss(), leaves, allow_unused=True)
        for leaf in leaves:
            leaf.grad = None
        with compiled_autograd._enable(torch.compile(backend="aot_eager", fullgraph=True)):
            loss().backward()
        for leaf, e in zip(leaves, eager):
            if e is None:
                assert leaf.grad is None, sample.name
            else:
                torch.testing.assert_close(leaf.grad, e, msg=f"{op.name} '{sample.name}'")


@torch._dynamo.config.patch(compiled_autograd=True)
def test_compiled_training_step_with_compiled_autograd_on():
    """torch.compile of a whole training step (forward, backward, optimizer) with compiled autograd
    on, as large-model training loops run it: the users' model, which calls every op."""
    from test_users_paths import TinyModel

    torch.manual_seed(0)
    model, twin = TinyModel(), TinyModel()
    twin.load_state_dict(model.state_dict())
    opt, opt_twin = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, twin))
    tokens = torch.randint(0, 100, (6, 5))

    def step(m, o):
        o.zero_grad()
        loss = m(tokens).square().mean()
        loss.backward()
        o.step()
        return loss

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(step, backend="aot_eager")
    for _ in range(2):
        got = compiled(model, opt)
        with torch._dynamo.config.patch(compiled_autograd=False):
            want = step(twin, opt_twin)
        torch.testing.assert_close(got, want)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, msg=name)
    assert counters["compiled_autograd"]["captures"] >= 1, dict(counters["compiled_autograd"])
