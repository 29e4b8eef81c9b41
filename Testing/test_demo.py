"""The README's demo command does what the README says it does."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_writes_every_file_the_readme_lists(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "Resources" / "demo.py"), "--output", str(tmp_path)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in ("sample_ct_phantom.nii.gz", "sample_ct_phantom_pancreas.seg.nrrd",
                 "sample_ct_phantom_pancreas.nii.gz", "sample_ct_phantom_pancreas.png",
                 "sample_ct_phantom_scene.mrb", "sample_mr_phantom_ipmn_result.json",
                 "sample_mr_phantom_ipmn_heatmap.nrrd", "sample_mr_phantom_ipmn_grid.png",
                 "sample_mr_phantom_ipmn_scene.mrb"):
        path = tmp_path / name
        assert path.exists() and path.stat().st_size > 0, name
        assert name in readme, f"README does not mention {name}"
        assert str(path) in result.stdout, f"the demo does not say where {name} is"
    assert any(n.endswith(".seg.nrrd") for n in zipfile.ZipFile(tmp_path / "sample_ct_phantom_scene.mrb").namelist())
    summary = json.loads((tmp_path / "sample_mr_phantom_ipmn_result.json").read_text(encoding="utf-8"))
    assert summary["class_name"] in summary["class_names"]
    assert "not a diagnosis" in result.stdout
