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
    argv = ["--quick", "--device", "cpu", "--out", str(tmp_path), "--cold-allocator",
            "--op", r"^(vector_sum|embedding|scatter_nd_ none \(unique\)|fused_matmul trans_b)$"]
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

        cases = [harness.Case(op="wrong_softmax", shape="1000", dtype=torch.float32, device=device,
                              ours=ours, baselines={"torch.softmax": lambda: torch.softmax(x, 0)},
                              bytes_moved=8000)]
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
    case = harness.Case(op="softmax", shape="256x64", dtype=torch.float32, device="cpu",
                        ours=lambda: torch.softmax(x, -1),
                        baselines={"torch.softmax": lambda: torch.softmax(x, -1),
                                   "broken": lambda: torch.softmax(x, 0)})
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
    case = harness.Case(op="softmax", shape="64x128", dtype=torch.float32, device="cpu",
                        ours=lambda: torch.softmax(x, -1),
                        baselines={"torch.softmax": lambda: torch.softmax(x, -1),
                                   **harness.compiled_baseline(lambda t, d: torch.softmax(t, d), x, -1)})
    (row,) = harness.run_cases([case], rounds=2, min_batch_s=1e-3)
    assert row["baselines"][harness.COMPILED]["ratio"] > 0
    # Dynamo saw one frame and compiled it: the column times compiled code, not eager torch.
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] >= 1
