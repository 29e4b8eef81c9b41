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

# One quick run (about 1-2 minutes on 2 cores) serves all tests below.
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
    for key in ("CPU", "CPU features", "cores", "float32 GEMM peak (measured)", "PyTorch", "OpenVINO",
                "NumPy / SciPy", "date"):
        assert machine.get(key), f"machine table lacks {key}"
    assert "threads" in machine["PyTorch"]
    for feature in ("AVX-512", "BF16", "AMX"):
        assert feature in machine["CPU features"]
    assert "GFLOP/s" in machine["float32 GEMM peak (measured)"]


def test_quick_results_say_they_mean_nothing(quick_run):
    _, markdown = quick_run
    assert "Quick run" in markdown.split("## Machine")[0]


def test_engine_table_lists_every_engine_of_monet_and_every_baseline(quick_run):
    _, markdown = quick_run
    rows = table_rows(markdown, "| network | engine |")
    assert len({len(row) for row in rows}) == 1 and len(rows[0]) == 10
    monet = [row for row in rows if row[0] == "MoNet"]
    engines = {row[1] for row in monet}
    for expected in ("PyTorch, plain eval (reference)", "PyTorch as shipped (prepare_for_inference)",
                     "PyTorch, bf16 autocast", "OpenVINO"):
        assert expected in engines
    timed = [row for row in monet if row[3]]
    assert {row[3] for row in timed if row[1].startswith("PyTorch as shipped")} == {"1", "2"}
    # every timed row has its time, speed-up, GFLOP/s, share of the peak and agreement
    assert all(row[4] and row[5] and row[6] and row[7].endswith("%") and row[8] and row[9] for row in timed)
    openvino_bf16 = [row for row in monet if row[1] == "OpenVINO" and row[2] == "bf16"]
    assert len(openvino_bf16) >= 1
    assert all(row[3] or "not measured" in row[4] for row in openvino_bf16)
    assert {row[0] for row in rows} == {"MoNet", "U-Net-16", "U-Net-64", "Attention U-Net"}


def test_network_table_gives_parameters_flops_and_the_papers_figures(quick_run):
    _, markdown = quick_run
    rows = {row[0]: row for row in table_rows(markdown, "| network | parameters (paper) |")}
    assert rows["MoNet"][1] == "403,556 (403,556)"
    assert rows["U-Net-64"][1] == "31,054,145 (31,054,145)"
    assert rows["MoNet"][2] == "9.52 (256 x 256)"
    assert all(row[4].endswith(("+- 0.32", "+- 0.21", "+- 1.77", "+- 0.53")) for row in rows.values())


def test_segmentation_section_breaks_the_time_down_by_step_for_both_engines(quick_run):
    _, markdown = quick_run
    header = next(line for line in markdown.splitlines() if line.startswith("| step |"))
    assert "automatic" in header and "pytorch" in header and "empty engine cache" in header
    assert "cached" in header
    steps = [row[0] for row in table_rows(markdown, "| step |")]
    assert any(step.startswith("model loading + conversion") for step in steps)
    assert any(step.startswith("network") for step in steps)
    assert any(step.startswith("back-resampling") for step in steps)
    assert any(step.startswith("clean-up") for step in steps)
    assert steps[-2].startswith("**total**") and steps[-1] == "batch size used"


def test_segmentation_section_reports_peak_memory_for_both_ct_lengths(quick_run):
    _, markdown = quick_run
    rows = table_rows(markdown, "| CT (columns x rows x slices) |")
    assert len(rows) == 3
    assert all(row[-1] in ("yes", "**no**") for row in rows[:2])
    assert "not measured" in rows[2][2]


def test_segmentation_section_states_the_targets_and_the_engines_mask_agreement(quick_run):
    _, markdown = quick_run
    rows = table_rows(markdown, "| target |")
    assert len(rows) == 3
    assert "<= 0.25" in rows[0][2] and ">= 80 %" in rows[1][2]
    assert "voxels" in rows[2][1] and rows[2][3] in ("yes", "**no**")


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
