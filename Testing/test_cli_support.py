"""Shared command-line pieces (case names, existing outputs) and progress helpers."""
import json
from pathlib import Path

import pytest

from PancreasAILib.cli_support import ProgressPrinter, case_name
from PancreasAILib.output_files import refuse_existing
from PancreasAILib.errors import InputError, OperationCancelled
from PancreasAILib.progress import CancelToken


@pytest.mark.parametrize("file_name, expected", [
    ("case_001.nii.gz", "case_001"),
    ("case_001.NII.GZ", "case_001"),
    ("case.002.nii", "case.002"),
    ("ct.nrrd", "ct"),
    ("ct.nhdr", "ct"),
    ("ct.mha", "ct"),
])
def test_case_name_drops_the_volume_suffix(file_name, expected):
    assert case_name(Path("/data") / file_name) == expected


def test_case_name_of_a_dicom_folder_is_the_folder_name(tmp_path):
    folder = tmp_path / "patient 7 CT"
    folder.mkdir()
    assert case_name(folder) == "patient 7 CT"


def test_refuse_existing_names_the_file_and_the_way_out(tmp_path):
    existing = tmp_path / "case_pancreas.seg.nrrd"
    existing.write_text("x")
    with pytest.raises(InputError, match="case_pancreas.seg.nrrd already exists; use --overwrite"):
        refuse_existing([tmp_path / "new.nii.gz", existing], overwrite=False)


def test_refuse_existing_allows_new_files_or_overwrite(tmp_path):
    existing = tmp_path / "case.nii.gz"
    existing.write_text("x")
    refuse_existing([tmp_path / "new.nii.gz"], overwrite=False)
    refuse_existing([existing], overwrite=True)


def test_json_progress_spans_all_cases(capsys):
    printer = ProgressPrinter(total_cases=2, output_format="json")
    printer.start_case(1, "second")
    printer(0.5, "Segmenting")
    printer.message("done")
    printer.close()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == [{"progress": 0.75, "status": "Segmenting"}, {"message": "done"}]


def test_cancel_token_raises_only_after_cancel():
    token = CancelToken()
    token.raise_if_cancelled()
    token.cancel()
    assert token.cancelled
    with pytest.raises(OperationCancelled):
        token.raise_if_cancelled()
