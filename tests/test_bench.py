"""The benchmark report (python -m teachcompute_ext.bench): a tiny --quick run
writes the JSON and the plots, a wrong result is reported and never timed, and
the torch.compile baseline is really compiled."""

import json
import os

import pytest
import torch

from teachcompute_ext.bench import FAMILIES, harness
from teachcompute_ext.bench.__main__ import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def fresh_options(monkeypatch):
    # main() replaces harness.OPTIONS; monkeypatch puts the original back after each test.
    monkeypatch.setattr(harness, "OPTIONS", harness.Options())


def _png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC


def test_quick_report_writes_json_and_plots(tmp_path, capsys):
    # One or two small cases of each family: the whole path, in a few seconds.
    # --cold-allocator: leave this pytest process's malloc settings alone.
    argv = [
        "--quick",
        "--device",
        "cpu",
        "--out",
        str(tmp_path),
        "--cold-allocator",
        "--op",
        r"^(vector_sum|embedding|scatter_nd_ none \(unique\)|fused_matmul trans_b|rms_norm|"
        r"embedding_bag backward \+ adam step)$",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for family in FAMILIES:
        with open(tmp_path / f"{family}-cpu.json") as f:
            doc = json.load(f)
        assert doc["family"] == family and doc["environment"]["device"] == "cpu"
        assert doc["settings"]["quick"] is True
        assert doc["environment"]["torch_compile_baselines"] is False  # --quick skips compiling
        # memory-bound families against the copy bandwidth, matmul against torch.matmul's rate
        assert list(doc["bounds"].values())[0] > 0
        assert doc["results"], family
        for r in doc["results"]:
            assert "error" not in r, r
            assert r["ours_ms"] > 0 and r.get("GB_per_s", r.get("TFLOP_per_s")) > 0 and r["pct_of_bound"] > 0
            assert all(b["ratio"] > 0 for b in r["baselines"].values())
            assert harness.COMPILED not in r["baselines"]
            assert r["op"] in printed
    for name in ("speedup-cpu.png", "pct_of_bound-cpu.png"):
        assert _png(tmp_path / name), name
        assert os.path.join(str(tmp_path), name) in printed

    # --replot redraws from the JSON alone.
    for name in ("speedup-cpu.png", "pct_of_bound-cpu.png"):
        os.remove(tmp_path / name)
    assert main(["--replot", "--out", str(tmp_path)]) == 0
    assert _png(tmp_path / "speedup-cpu.png") and _png(tmp_path / "pct_of_bound-cpu.png")


def _wrong_family(calls):
    def run(device, quick, out_dir, progress=None):
        x = torch.randn(1000)

        def ours():
            calls["ours"] += 1
            return torch.softmax(x, 0) + 1e-3

        cases = [
            harness.Case(
                op="wrong_softmax",
                shape="1000",
                dtype=torch.float32,
                device=device,
                ours=ours,
                baselines={"torch.softmax": lambda: torch.softmax(x, 0)},
                bytes_moved=8000,
            )
        ]
        return harness.run_family("wrong", cases, device, quick, out_dir, progress)

    return run


def test_wrong_result_is_reported_not_timed(tmp_path, capsys):
    calls = {"ours": 0}
    argv = ["--quick", "--device", "cpu", "--out", str(tmp_path), "--cold-allocator"]
    assert main(argv, families={"wrong": _wrong_family(calls)}) == 1
    assert calls["ours"] == 1  # the check's one call: never timed
    with open(tmp_path / "wrong-cpu.json") as f:
        (row,) = json.load(f)["results"]
    assert "relative error" in row["error"] and "ours_ms" not in row
    assert "WRONG RESULT, not timed" in capsys.readouterr().out
    assert _png(tmp_path / "speedup-cpu.png")  # the plots still come, with the error marked


def test_baseline_that_disagrees_is_not_timed_and_is_not_our_error():
    x = torch.randn(256, 64)
    case = harness.Case(
        op="softmax",
        shape="256x64",
        dtype=torch.float32,
        device="cpu",
        ours=lambda: torch.softmax(x, -1),
        baselines={"torch.softmax": lambda: torch.softmax(x, -1), "broken": lambda: torch.softmax(x, 0)},
    )
    (row,) = harness.run_cases([case], rounds=2, min_batch_s=1e-3)
    assert "error" not in row  # CI fails on "error": only our own results may set it
    assert "relative error" in row["baselines"]["broken"]["disagrees"]
    assert "ratio" not in row["baselines"]["broken"]
    assert row["baselines"]["torch.softmax"]["ratio"] > 0


def test_compiled_baseline_is_compiled():
    import torch._dynamo

    assert harness.compiled_baseline(torch.neg, torch.ones(1)) == {}  # off unless asked for
    harness.OPTIONS.compile = True
    torch._dynamo.reset()
    x = torch.randn(64, 128)
    case = harness.Case(
        op="softmax",
        shape="64x128",
        dtype=torch.float32,
        device="cpu",
        ours=lambda: torch.softmax(x, -1),
        baselines={
            "torch.softmax": lambda: torch.softmax(x, -1),
            **harness.compiled_baseline(lambda t, d: torch.softmax(t, d), x, -1),
        },
    )
    (row,) = harness.run_cases([case], rounds=2, min_batch_s=1e-3)
    assert row["baselines"][harness.COMPILED]["ratio"] > 0
    # Dynamo saw one frame and compiled it: the column times compiled code, not eager torch.
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] >= 1


def test_quick_sweep_writes_points_summary_and_plot(tmp_path, capsys):
    # One family's quick sweep through the command line, in a few seconds.
    argv = [
        "--sweep",
        "--quick",
        "--device",
        "cpu",
        "--family",
        "scatter_nd",
        "--out",
        str(tmp_path),
        "--cold-allocator",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    with open(tmp_path / "sweep-scatter_nd-cpu.json") as f:
        doc = json.load(f)
    assert doc["kind"] == "sweep" and doc["family"] == "scatter_nd" and doc["settings"]["quick"] is True
    assert doc["size_unit"] and doc["environment"]["device"] == "cpu"
    points = doc["points"]
    for p in points:
        assert "error" not in p, p
        assert p["pass"] in ("fwd", "fwd+bwd") and p["params"] and p["size"] > 0
        assert p["ours_us"] > 0 and p["torch_us"] > 0
        assert p["ratio"] == pytest.approx(p["torch_us"] / p["ours_us"])
        assert "ratio_compile" not in p  # --quick compiles nothing
    # Both dtypes, both passes, and sizes from one element up.
    assert {p["dtype"] for p in points} == {"float32", "bfloat16"}
    assert {p["pass"] for p in points} == {"fwd", "fwd+bwd"}
    assert min(p["size"] for p in points) == 1 and max(p["size"] for p in points) > 1000
    ops = {(p["op"], p["pass"]) for p in points}
    assert {(s["op"], s["pass"]) for s in doc["summary"]} == ops
    for s in doc["summary"]:
        assert "worst_ratio" in s or "worst_small_diff_us" in s
        assert s["op"] in printed
    png = tmp_path / "sweep-scatter_nd-cpu.png"
    assert _png(png) and str(png) in printed
    # The main report's --replot does not take the sweep's JSON for a family's.
    assert main(["--replot", "--out", str(tmp_path)]) == 1
    # --sweep --replot redraws from the JSON alone.
    os.remove(png)
    assert main(["--sweep", "--replot", "--out", str(tmp_path)]) == 0
    assert _png(png)


def test_sweep_wrong_result_is_reported_not_timed(tmp_path):
    import types

    from teachcompute_ext.bench import plots, sweep

    calls = {"ours": 0}
    x = torch.randn(64)

    def ours():
        calls["ours"] += 1
        return torch.softmax(x, 0) * 1.01

    module = types.SimpleNamespace(
        SWEEP_SIZE="elements",
        sweep_cases=lambda device, quick: [
            sweep.point(
                "wrong_softmax",
                "fwd",
                {"n": 64},
                64,
                dtype=torch.float32,
                device=device,
                ours=ours,
                baselines={"torch": lambda: torch.softmax(x, 0)},
            ),
            sweep.point(
                "right_softmax",
                "fwd",
                {"n": 64},
                64,
                dtype=torch.float32,
                device=device,
                ours=lambda: torch.softmax(x, 0),
                baselines={"torch": lambda: torch.softmax(x, 0)},
            ),
        ],
    )
    doc, path = sweep.run_family("fake", module, "cpu", True, str(tmp_path))
    wrong, right = doc["points"][:2]
    assert "relative error" in wrong["error"] and "ours_us" not in wrong and calls["ours"] == 1
    assert "error" not in right and right["ratio"] > 0
    # The one-thread pass re-times the right point only (the wrong one is not timed again).
    again = doc["points"][2:]
    assert all(p["op"] == "right_softmax" and p["threads"] == 1 for p in again)
    assert len(again) == (1 if torch.get_num_threads() > 1 else 0) and calls["ours"] == 1
    assert doc["summary"][0]["errors"] == 1 and "worst_ratio" not in doc["summary"][0]
    assert _png(plots.plot_sweep(doc, str(tmp_path / "fake.png")))


def test_sweep_summary_splits_at_20_us():
    from teachcompute_ext.bench import sweep

    def pt(size, ours, theirs, pass_="fwd"):
        return {
            "op": "op",
            "pass": pass_,
            "shape": f"n={size}",
            "params": {"n": size},
            "size": size,
            "dtype": "float32",
            "ours_us": ours,
            "torch_us": theirs,
            "ratio": theirs / ours,
        }

    # Small: worst is the largest ours - torch (+3 us at size 10), not the
    # smallest ratio (size 1). Large: worst ratio 0.5 at size 1000.
    (s,) = sweep.summarize(
        [pt(1, 2.0, 1.0), pt(10, 13.0, 10.0), pt(100, 20.0, 25.0), pt(1000, 80.0, 40.0), pt(10000, 100.0, 300.0)]
    )
    assert s["worst_small_diff_us"] == pytest.approx(3.0) and s["worst_small_at"]["size"] == 10
    assert s["worst_ratio"] == pytest.approx(0.5) and s["worst_ratio_at"]["size"] == 1000
    assert s["points"] == 5 and s["errors"] == 0
    text = sweep.format_summary([s])
    assert "0.50x" in text and "+3.00 us" in text


def test_timing_stops_early_only_when_asked():
    fns = {"a": lambda: None, "b": lambda: None}
    full = harness.time_interleaved(fns, "cpu", rounds=6, min_batch_s=1e-4, warmup=0)
    assert len(full["a"].samples) == 6
    # max_s=0: stop as soon as min_rounds are done
    early = harness.time_interleaved(fns, "cpu", rounds=6, min_batch_s=1e-4, warmup=0, min_rounds=2, max_s=0.0)
    assert len(early["a"].samples) == len(early["b"].samples) == 2


def test_check_near_exact_accepts_what_is_no_worse_than_torch():
    exact = torch.ones(100, dtype=torch.float64)
    theirs = torch.full((100,), 1.05)  # torch itself 5% off, past bfloat16's 1e-2
    harness.check_near_exact(torch.full((100,), 1.02), theirs, lambda: exact, torch.bfloat16)
    harness.check_near_exact(
        (theirs, torch.full((100,), 0.98)), (theirs, theirs), lambda: (exact, exact), torch.bfloat16
    )
    with pytest.raises(AssertionError, match="float64"):
        harness.check_near_exact(torch.full((100,), 1.2), theirs, lambda: exact, torch.bfloat16)
    with pytest.raises(AssertionError):  # a tuple is checked item by item
        harness.check_near_exact(
            (theirs, torch.full((100,), 1.2)), (theirs, theirs), lambda: (exact, exact), torch.bfloat16
        )


def test_peak_memory_on_the_cpu_follows_allocations_and_frees():
    # The llama family's CPU peak comes from torch.profiler's allocation events: two 4 MiB
    # tensors alive together, a third after one is freed, peak 8 MiB (not 12).
    from teachcompute_ext.bench.llama import peak_memory

    def fn():
        a = torch.empty(1 << 20)
        b = torch.empty(1 << 20)
        del a
        c = torch.empty(1 << 20)
        return b, c

    assert peak_memory(fn, "cpu") == 8 << 20
