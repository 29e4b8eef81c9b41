"""`benchmark.py --quick` runs end to end and writes every table of RESULTS.md.

A smoke test of the benchmark's code paths only: quick-mode numbers mean nothing, so nothing
here looks at a time or a memory figure.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK = ROOT / "Testing" / "Benchmarks" / "benchmark.py"

# One quick run (about 20-40 s on 2 cores) serves all tests below.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """(completed process, text of the RESULTS.md it wrote)."""
    output = tmp_path_factory.mktemp("bench") / "RESULTS.md"
    completed = subprocess.run([sys.executable, str(BENCHMARK), "--quick", "--output", str(output)],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed, output.read_text(encoding="utf-8")


def table_rows(markdown: str, header_start: str) -> list[list[str]]:
    """Cells of the body rows of the first table whose header row starts with `header_start`."""
    lines = markdown.splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_results_file_is_what_the_benchmark_prints(quick_run):
    completed, markdown = quick_run
    assert markdown.startswith("# PancreasAI benchmarks")
    assert markdown.strip() in completed.stdout


def test_results_state_the_machine_they_were_measured_on(quick_run):
    _, markdown = quick_run
    machine = {row[0]: row[1] for row in table_rows(markdown, "| | |")}
    for key in ("CPU", "cores", "PyTorch", "NumPy / SciPy", "date"):
        assert machine.get(key), f"machine table lacks {key}"
    assert "threads" in machine["PyTorch"]


def test_quick_results_say_they_mean_nothing(quick_run):
    _, markdown = quick_run
    assert "Quick run" in markdown.split("## Machine")[0]


def test_network_table_lists_every_network_with_paper_figures(quick_run):
    _, markdown = quick_run
    rows = table_rows(markdown, "| network |")
    names = [row[0] for row in rows]
    for expected in ("MoNet as shipped (prepare_for_inference)", "MoNet, plain eval mode",
                     "U-Net-16", "U-Net-64", "Attention U-Net"):
        assert expected in names
    parameters = {row[0]: row[1] for row in rows}
    assert parameters["MoNet as shipped (prepare_for_inference)"] == "403,556 (403,556)"
    assert parameters["U-Net-64"] == "31,054,145 (31,054,145)"
    assert all(row[6].endswith(("+- 0.32", "+- 0.21", "+- 1.77", "+- 0.53")) for row in rows)


def test_network_section_reports_prepared_vs_plain_difference_and_batch_sweep(quick_run):
    _, markdown = quick_run
    assert "max abs difference of the output probabilities" in markdown
    assert table_rows(markdown, "| batch | ms per slice |")


def test_segmentation_section_breaks_the_time_down_by_step(quick_run):
    _, markdown = quick_run
    steps = [row[0] for row in table_rows(markdown, "| step |")]
    assert any(step.startswith("network") for step in steps)
    assert any(step.startswith("back-resampling") for step in steps)
    assert any(step.startswith("clean-up") for step in steps)
    assert steps[-1].startswith("**total**")


def test_segmentation_section_reports_peak_memory_for_both_ct_lengths(quick_run):
    _, markdown = quick_run
    rows = table_rows(markdown, "| CT (columns x rows x slices) |")
    assert len(rows) == 2
    assert rows[0][-1] in ("yes", "**no**")
    assert "not measured" in rows[1][1]


def test_ipmn_section_times_both_vits_without_and_with_rollout_and_tta(quick_run):
    _, markdown = quick_run
    section = markdown.split("## 3. IPMN risk")[1]
    assert "ViT-B/16 (paper)" in section and "demo ViT" in section
    for setting in ("no rollout, no TTA", "rollout, no TTA", "rollout + 8-view TTA"):
        assert setting in section
    assert "85,564,419" in section  # ViT-B/16 with 2 channels, 192 x 192, 3 classes


def test_the_route_benchmark_compares_the_three_ways(tmp_path):
    output = tmp_path / "ROUTE.md"
    completed = subprocess.run([sys.executable, str(BENCHMARK.with_name("route_benchmark.py")), "--quick",
                                "--output", str(output)], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = table_rows(output.read_text(encoding="utf-8"), "| input")
    assert [row[1] for row in rows] == ["straight from the node (before)", "route, in this process (console)",
                                        "route, separate process (Apply)"]
    assert rows[0][3] == "1.00" and all(float(row[2]) > 0 for row in rows)
