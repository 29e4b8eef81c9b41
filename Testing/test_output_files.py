"""Result files that are what they claim: checked folder, read-back, all-or-nothing, exclusive names."""
import json
import os
import signal
import zipfile
from pathlib import Path

import numpy as np
import pytest

from PancreasAILib.errors import InputError, OperationCancelled, OutputError
import errno
from types import SimpleNamespace

from PancreasAILib import output_files
from PancreasAILib.output_files import (all_or_nothing, disk_hint, prepare_output_folder, refuse_existing,
                                        signals_deferred, user_path)
from PancreasAILib.volume import Volume
from PancreasAILib.volume_io import read_volume, write_volume


def write_json(path: Path, tag: str) -> None:
    path.write_text(json.dumps({"tag": tag}))


def tag_of(path: Path) -> str:
    return json.loads(path.read_text(encoding="utf-8"))["tag"]


def write_label_volume(path: Path, value: int = 1) -> None:
    write_volume(Volume(np.full((3, 4, 5), value, np.uint8), np.eye(4)), path)


def test_all_or_nothing_renames_every_output_on_success(tmp_path):
    finals = [tmp_path / "case_result.json", tmp_path / "case_summary.json"]
    with all_or_nothing(finals) as temporaries:
        assert all(t.parent.parent == tmp_path for t in temporaries)  # beside the outputs: same disk
        assert all(not t.exists() and t not in finals for t in temporaries)
        for temp, text in zip(temporaries, ("result", "summary")):
            write_json(temp, text)
    assert [tag_of(p) for p in finals] == ["result", "summary"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in finals)


def test_all_or_nothing_keeps_the_final_file_names(tmp_path):
    """Writers choose the format from the name, and a .mrb names its inner folder after it."""
    finals = [tmp_path / "a.seg.nrrd", tmp_path / "b.nii.gz", tmp_path / "c_scene.mrb"]
    with all_or_nothing(finals) as temporaries:
        assert [t.name for t in temporaries] == ["a.seg.nrrd", "b.nii.gz", "c_scene.mrb"]
        write_label_volume(temporaries[0])
        write_label_volume(temporaries[1])
        with zipfile.ZipFile(temporaries[2], "w") as archive:
            archive.writestr("c_scene/c_scene.mrml", "<MRML/>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.seg.nrrd", "b.nii.gz", "c_scene.mrb"]
    assert read_volume(finals[1]).array.sum() == 60


def test_all_or_nothing_leaves_no_file_when_the_block_raises(tmp_path):
    finals = [tmp_path / "a.json", tmp_path / "b.json"]
    with pytest.raises(OperationCancelled):
        with all_or_nothing(finals) as temporaries:
            write_json(temporaries[0], "half")
            raise OperationCancelled("Cancelled by the user.")
    assert list(tmp_path.iterdir()) == []


def test_all_or_nothing_keeps_old_outputs_when_the_block_raises(tmp_path):
    final = tmp_path / "a.json"
    write_json(final, "old")
    with pytest.raises(ValueError):
        with all_or_nothing([final], overwrite=True) as (temp,):
            write_json(temp, "new")
            raise ValueError("writer failed")
    assert tag_of(final) == "old"
    assert list(tmp_path.iterdir()) == [final]


def test_all_or_nothing_replaces_nothing_when_an_output_was_not_written(tmp_path):
    finals = [tmp_path / "a.json", tmp_path / "b.json"]
    with pytest.raises(OutputError, match="b.json was not written"):
        with all_or_nothing(finals) as temporaries:
            write_json(temporaries[0], "seg only")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, damage", [
    ("case_pancreas.nii.gz", "empty"),
    ("case_pancreas.nii.gz", "truncated"),
    ("case_pancreas.seg.nrrd", "truncated"),
    ("case_scene.mrb", "truncated"),
    ("case_grid.png", "truncated"),
    ("case_result.json", "truncated"),
    ("case_pancreas.dcm", "truncated"),
])
def test_a_damaged_output_is_refused_and_replaces_nothing(tmp_path, name, damage):
    """What a full disk leaves (an empty or cut-short file) never takes a result's name."""
    final, companion = tmp_path / name, tmp_path / "companion.json"
    with pytest.raises(OutputError, match=f"{name} could not be read back.*nothing was replaced"):
        with all_or_nothing([companion, final]) as (companion_temp, temp):
            write_json(companion_temp, "fine")
            if name.endswith((".nii.gz", ".nrrd")):
                write_label_volume(temp)
            elif name.endswith(".mrb"):
                with zipfile.ZipFile(temp, "w") as archive:
                    archive.writestr("case_scene/case_scene.mrml", "<MRML>" + "x" * 5000 + "</MRML>")
            elif name.endswith(".png"):
                from PIL import Image

                Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(temp)
            elif name.endswith(".dcm"):
                write_small_dicom(temp)
            else:
                write_json(temp, "x" * 100)
            data = temp.read_bytes()
            temp.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    assert list(tmp_path.iterdir()) == []


def write_small_dicom(path):
    """A 64 x 64 x 4-frame 8-bit DICOM image with its pixels (what a DICOM SEG holds, unpacked)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Rows = dataset.Columns = 64
    dataset.NumberOfFrames = 4
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
    dataset.PixelData = np.random.default_rng(0).integers(0, 255, (4, 64, 64), np.uint8).tobytes()
    dataset.save_as(path, enforce_file_format=True)


def test_a_result_written_meanwhile_by_another_run_is_kept(tmp_path):
    """Two runs writing one case name: the second never silently replaces the first."""
    finals = [tmp_path / "case_pancreas.seg.nrrd", tmp_path / "case_pancreas.nii.gz"]
    with pytest.raises(OutputError, match="case_pancreas.nii.gz was written by another run"):
        with all_or_nothing(finals) as temporaries:
            write_label_volume(temporaries[0], 2)
            write_label_volume(temporaries[1], 2)
            write_label_volume(finals[1], 7)  # the other run finishes first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_pancreas.nii.gz"]
    assert read_volume(finals[1]).array.max() == 7


def test_overwrite_replaces_and_restores_the_old_results_if_a_rename_fails(tmp_path, monkeypatch):
    finals = [tmp_path / "a.json", tmp_path / "b.json"]
    for final in finals:
        write_json(final, "old")
    with all_or_nothing(finals, overwrite=True) as temporaries:
        for temp in temporaries:
            write_json(temp, "new")
    assert [tag_of(p) for p in finals] == ["new", "new"]

    real_replace, calls = os.replace, []

    def failing_second_replace(source, destination):
        calls.append(destination)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_replace(source, destination)

    monkeypatch.setattr(os, "replace", failing_second_replace)
    with pytest.raises(OSError):
        with all_or_nothing(finals, overwrite=True) as temporaries:
            for temp in temporaries:
                write_json(temp, "newer")
    monkeypatch.undo()
    assert [tag_of(p) for p in finals] == ["new", "new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]


def test_output_folder_accepts_relative_home_spaces_and_any_script(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert prepare_output_folder("results") == tmp_path / "results"
    assert prepare_output_folder("~/my results") == tmp_path / "home" / "my results"
    assert prepare_output_folder("sub/../résultats ü 結果") == tmp_path / "résultats ü 結果"
    assert all(folder.is_dir() for folder in (tmp_path / "results", tmp_path / "home" / "my results"))
    assert user_path("a/../b.nii.gz") == tmp_path / "b.nii.gz"


def test_an_output_folder_that_is_a_file_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "results").write_text("my notes")
    with pytest.raises(InputError, match="results is a file, not a folder"):
        prepare_output_folder(tmp_path / "results")
    with pytest.raises(InputError, match="Cannot write in the output folder"):
        prepare_output_folder(tmp_path / "results" / "inside")
    assert (tmp_path / "results").read_text(encoding="utf-8") == "my notes"


@pytest.fixture
def default_ctrl_c():
    """SIGINT raises KeyboardInterrupt, as in a plain Python process (a test runner may differ)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_signals_wait_until_the_final_names_are_given(default_ctrl_c):
    seen = []
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            seen.append("still running")
    assert seen == ["still running"]


def test_ctrl_c_while_the_final_names_are_given_leaves_the_whole_result(tmp_path, monkeypatch, default_ctrl_c):
    """The signal comes between two renames: it is held until every file has its name."""
    finals = [tmp_path / "a.json", tmp_path / "b.json"]
    real_link = os.link

    def link_then_interrupt(source, destination):
        real_link(source, destination)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(os, "link", link_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        with all_or_nothing(finals) as temporaries:
            for temp in temporaries:
                write_json(temp, "whole")
    assert [tag_of(p) for p in finals] == ["whole", "whole"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]


def test_an_existing_output_folder_is_accepted(tmp_path):
    assert prepare_output_folder(tmp_path) == tmp_path
    assert prepare_output_folder(tmp_path) == tmp_path
    assert list(tmp_path.iterdir()) == []  # the write test leaves nothing behind


def test_existing_results_are_refused_unless_overwrite(tmp_path):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    write_json(old, "old")
    with pytest.raises(InputError, match=f"{old} already exists; use --overwrite"):
        refuse_existing([new, old], overwrite=False)
    refuse_existing([new, old], overwrite=True)
    refuse_existing([new], overwrite=False)


def test_a_segmentation_s_result_record_is_one_of_its_all_or_nothing_outputs(tmp_path, small_ct_phantom,
                                                                             random_monet_card):
    """An old <case>_pancreas.json alone keeps the whole case from being written, and is kept."""
    from PancreasSegMoNetLib.cli import segment_files

    ct = write_volume(Volume(small_ct_phantom.hu, small_ct_phantom.ijk_to_ras), tmp_path / "in" / "case.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    write_json(out / "case_pancreas.json", "old")
    assert segment_files([ct], out, random_monet_card.weights_path, progress_format="json") == 1
    assert [p.name for p in out.iterdir()] == ["case_pancreas.json"] and tag_of(out / "case_pancreas.json") == "old"
    assert segment_files([ct], out, random_monet_card.weights_path, overwrite=True, progress_format="json") == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "case_pancreas.json", "case_pancreas.nii.gz", "case_pancreas.seg.nrrd"]
    assert json.loads((out / "case_pancreas.json").read_text(encoding="utf-8"))["case"] == "case"


def test_without_hard_links_the_final_name_is_still_claimed_exclusively(tmp_path, monkeypatch):
    """On disks without hard links (FAT, some shares) the name is created with O_EXCL first."""
    def no_links(source, destination):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    final = tmp_path / "a.json"
    with all_or_nothing([final]) as (temp,):
        write_json(temp, "ours")
    assert tag_of(final) == "ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]

    other = tmp_path / "b.json"
    with pytest.raises(OutputError, match="b.json was written by another run"):
        with all_or_nothing([other]) as (temp,):
            write_json(temp, "ours")
            write_json(other, "theirs")
    assert tag_of(other) == "theirs"


@pytest.mark.parametrize("content, accepted", [(b"", False), (b"x", True), (b"id,volume_ml\n1,42.5\n", True),
                                               (b"\xff\xfe not text", False)],
                         ids=["empty", "one_byte", "table", "not_utf8"])
def test_a_csv_output_is_read_back_as_utf8_text(tmp_path, content, accepted):
    final = tmp_path / "volumes.csv"
    if accepted:
        with all_or_nothing([final]) as (temp,):
            temp.write_bytes(content)
        assert final.read_bytes() == content
    else:
        with pytest.raises(OutputError, match="volumes.csv could not be read back"):
            with all_or_nothing([final]) as (temp,):
                temp.write_bytes(content)
        assert list(tmp_path.iterdir()) == []


def test_an_empty_output_is_called_empty(tmp_path):
    with pytest.raises(OutputError, match=r"volumes.csv could not be read back \(it is empty\)"):
        with all_or_nothing([tmp_path / "volumes.csv"]) as (temp,):
            temp.write_bytes(b"")


def test_a_damaged_output_is_named_by_its_final_name_and_problem(tmp_path):
    final = tmp_path / "case_pancreas.nii.gz"
    with pytest.raises(OutputError) as error:
        with all_or_nothing([final]) as (temp,):
            write_label_volume(temp)
            temp.write_bytes(temp.read_bytes()[:40])
    message = str(error.value)
    assert "case_pancreas.nii.gz could not be read back (case_pancreas.nii.gz is incomplete" in message
    assert ".partial-" not in message


@pytest.mark.parametrize("name", ["case.nii", "case.mha", "case.mhd", "case.nhdr"])
def test_volume_outputs_of_every_format_are_read_back(tmp_path, name):
    final = tmp_path / name
    with pytest.raises(OutputError, match=f"{name} could not be read back"):
        with all_or_nothing([final]) as (temp,):
            write_volume(Volume(np.full((3, 4, 5), 1.5, np.float32), np.eye(4)), temp, compress=False)
            data_file = next((p for p in temp.parent.iterdir() if p != temp), temp)  # .raw beside a header
            data_file.write_bytes(data_file.read_bytes()[:-20])


def test_a_zip_with_a_damaged_member_is_refused(tmp_path):
    final = tmp_path / "case_scene.zip"
    with pytest.raises(OutputError, match="its member case_scene/case_scene.mrml is damaged"):
        with all_or_nothing([final]) as (temp,):
            with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_STORED) as archive:
                archive.writestr("case_scene/case_scene.mrml", "<MRML>" + "x" * 500 + "</MRML>")
            data = bytearray(temp.read_bytes())
            data[data.index(b"xxxx")] = ord("y")  # the stored text changes; its checksum does not
            temp.write_bytes(bytes(data))


def test_a_good_png_output_is_accepted(tmp_path):
    from PIL import Image

    final = tmp_path / "case_grid.png"
    with all_or_nothing([final]) as (temp,):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(temp)
    assert final.exists()


@pytest.mark.parametrize("number, reason", [
    (errno.ENOSPC, "the disk is full"),
    (errno.EDQUOT, "the disk is full"),
    (errno.EFBIG, "the file is larger than this disk or account allows"),
    (errno.EACCES, "Permission denied"),
    (None, "OSError"),
])
def test_a_write_failure_is_explained(tmp_path, number, reason):
    error = OSError(number, os.strerror(number)) if number else OSError()
    with pytest.raises(OutputError, match=rf"Could not write the results in {tmp_path} \({reason}\); nothing was replaced"):
        with all_or_nothing([tmp_path / "a.json"]):
            raise error
    assert list(tmp_path.iterdir()) == []


MIB = 2 ** 20


@pytest.mark.parametrize("free, hint", [
    (10 * MIB, "is full (10.0 MB free)"),
    (64 * MIB - 1, "is full (64.0 MB free)"),
    (64 * MIB, ""),
    (10 ** 12, ""),
])
def test_the_disk_hint_speaks_only_below_64_mb_free(tmp_path, monkeypatch, free, hint):
    monkeypatch.setattr(output_files.shutil, "disk_usage", lambda folder: SimpleNamespace(free=free))
    if hint:
        assert disk_hint(tmp_path) == f"The disk holding {tmp_path} {hint}: free space or choose another folder."
    else:
        assert disk_hint(tmp_path) == ""


def test_the_disk_hint_is_silent_when_the_folder_cannot_be_asked(tmp_path):
    assert disk_hint(tmp_path / "missing") == ""


def refuse_writes_in(monkeypatch, folder: Path) -> None:
    """Make creating a file in `folder` fail as in a folder without write permission (which this
    test cannot rely on: root may write anywhere)."""
    real_open = os.open

    def guarded_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT or flags & getattr(os, "O_TMPFILE", 0):
            target = Path(os.fsdecode(path))
            if target == folder or target.parent == folder:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(target))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)


def test_an_output_folder_that_cannot_be_written_is_refused_before_anything_runs(tmp_path, monkeypatch):
    folder = tmp_path / "read-only"
    folder.mkdir()
    refuse_writes_in(monkeypatch, folder)
    with pytest.raises(InputError, match=rf"Cannot write in the output folder {folder} \(Permission denied\): "
                                         "choose a folder you can write to"):
        prepare_output_folder(folder)
    monkeypatch.undo()
    assert list(folder.iterdir()) == []


def test_old_results_are_restored_even_if_a_new_one_vanished_meanwhile(tmp_path, monkeypatch):
    """A rename fails (disk full) after another program removed a result just put in place: the
    old results still come back, and the error reported is the disk's."""
    finals = [tmp_path / "a.json", tmp_path / "b.json"]
    for final in finals:
        write_json(final, "old")
    real_replace, calls = os.replace, []

    def second_replace_fails(source, destination):
        calls.append(destination)
        if len(calls) == 2:
            finals[0].unlink()  # the other program
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(source, destination)

    monkeypatch.setattr(os, "replace", second_replace_fails)
    with pytest.raises(OSError) as error:
        with all_or_nothing(finals, overwrite=True) as temporaries:
            for temp in temporaries:
                write_json(temp, "new")
    monkeypatch.undo()
    assert error.value.errno == errno.ENOSPC
    assert [tag_of(p) for p in finals] == ["old", "old"]


def test_a_leftover_that_cannot_be_removed_changes_no_outcome(tmp_path, monkeypatch):
    """A writer's scratch file that cannot be deleted (held open by a virus scanner, say) neither
    turns a finished result into an error nor hides the error of a failed one."""
    real_unlink = os.unlink

    def scanner_holds_scratch(path, *args, **kwargs):
        if os.fsdecode(path).endswith("scratch.tmp"):
            raise PermissionError(errno.EACCES, "The file is used by another process", os.fsdecode(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", scanner_holds_scratch)
    final = tmp_path / "a.json"
    with all_or_nothing([final]) as (temp,):
        write_json(temp, "done")
        (temp.parent / "scratch.tmp").write_text("writer's scratch")
    assert tag_of(final) == "done"
    with pytest.raises(ValueError, match="writer failed"):
        with all_or_nothing([tmp_path / "b.json"]) as (temp,):
            (temp.parent / "scratch.tmp").write_text("writer's scratch")
            raise ValueError("writer failed")
    monkeypatch.undo()
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("name", ["volumes.csv", "result.json"])
def test_text_outputs_are_read_back_as_utf8_whatever_the_locale(tmp_path, name):
    """A UTF-8 table with a patient name in any script is accepted under an ASCII (C) or Windows locale."""
    import locale

    final = tmp_path / name
    text = "name,volume_ml\nMüller 結果,42.5\n" if name.endswith(".csv") else json.dumps({"name": "Müller 結果"},
                                                                                         ensure_ascii=False)
    previous = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        with all_or_nothing([final]) as (temp,):
            temp.write_bytes(text.encode("utf-8"))
    finally:
        locale.setlocale(locale.LC_CTYPE, previous)
    assert final.read_text(encoding="utf-8") == text
