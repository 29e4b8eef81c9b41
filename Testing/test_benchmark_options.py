"""`./pancreasai.sh bench` writes its own results file; the committed one changes only when asked."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK = ROOT / "Testing" / "Benchmarks" / "benchmark.py"


def load_benchmark_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("pancreasai_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def test_a_benchmark_run_leaves_the_committed_results_alone_unless_asked(tmp_path, monkeypatch):
    benchmark = load_benchmark_module()
    committed = ROOT / "Testing" / "Benchmarks" / "RESULTS.md"
    assert benchmark.parse_args([]).output == ROOT / "output" / "bench" / "RESULTS.md"
    assert benchmark.parse_args(["--quick"]).output != committed
    assert benchmark.parse_args(["--update-results"]).output == committed
    monkeypatch.chdir(tmp_path)
    assert benchmark.parse_args(["--output", "mine.md"]).output == tmp_path / "mine.md"
