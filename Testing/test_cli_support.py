"""Shared command-line pieces (case names, all-or-nothing outputs) and progress helpers."""
import json
from pathlib import Path

import pytest

from PancreasAILib.cli_support import ProgressPrinter, all_or_nothing, case_name, refuse_existing
from PancreasAILib.errors import InputError, OperationCancelled
from PancreasAILib.progress import CancelToken, ProgressSpan


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


def test_all_or_nothing_renames_every_output_on_success(tmp_path):
    finals = [tmp_path / "case_pancreas.seg.nrrd", tmp_path / "case_pancreas.nii.gz"]
    with all_or_nothing(finals) as temporaries:
        assert all(t.parent.parent == tmp_path for t in temporaries)  # beside the outputs: same disk
        assert all(not t.exists() and t not in finals for t in temporaries)
        for temp, text in zip(temporaries, ("seg", "labels")):
            temp.write_text(text)
    assert [p.read_text() for p in finals] == ["seg", "labels"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in finals)


def test_all_or_nothing_keeps_the_final_file_names(tmp_path):
    """Writers choose the format from the name, and a .mrb names its inner folder after it."""
    finals = [tmp_path / "a.seg.nrrd", tmp_path / "b.nii.gz", tmp_path / "c_scene.mrb"]
    with all_or_nothing(finals) as temporaries:
        assert [t.name for t in temporaries] == ["a.seg.nrrd", "b.nii.gz", "c_scene.mrb"]
        for temp in temporaries:
            temp.write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.seg.nrrd", "b.nii.gz", "c_scene.mrb"]


def test_all_or_nothing_leaves_no_file_when_the_block_raises(tmp_path):
    finals = [tmp_path / "a.seg.nrrd", tmp_path / "b.nii.gz"]
    with pytest.raises(OperationCancelled):
        with all_or_nothing(finals) as temporaries:
            temporaries[0].write_text("half")
            raise OperationCancelled("Cancelled by the user.")
    assert list(tmp_path.iterdir()) == []


def test_all_or_nothing_keeps_old_outputs_when_the_block_raises(tmp_path):
    final = tmp_path / "a.nii.gz"
    final.write_text("old")
    with pytest.raises(ValueError):
        with all_or_nothing([final]) as (temp,):
            temp.write_text("new")
            raise ValueError("writer failed")
    assert final.read_text() == "old"
    assert list(tmp_path.iterdir()) == [final]


def test_all_or_nothing_replaces_nothing_when_an_output_was_not_written(tmp_path):
    finals = [tmp_path / "a.seg.nrrd", tmp_path / "b.nii.gz"]
    with pytest.raises(RuntimeError, match="b.nii.gz was not written"):
        with all_or_nothing(finals) as temporaries:
            temporaries[0].write_text("seg only")
    assert list(tmp_path.iterdir()) == []


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


def test_progress_span_maps_into_its_part_and_clamps():
    seen = []
    span = ProgressSpan(lambda fraction, status: seen.append((fraction, status)), 0.2, 0.6)
    span(0.5, "half")
    span(2.0, "over")
    span(-1.0, "under")
    assert seen == [(pytest.approx(0.4), "half"), (pytest.approx(0.6), "over"), (pytest.approx(0.2), "under")]


def test_cancel_token_raises_only_after_cancel():
    token = CancelToken()
    token.raise_if_cancelled()
    token.cancel()
    assert token.cancelled
    with pytest.raises(OperationCancelled):
        token.raise_if_cancelled()
