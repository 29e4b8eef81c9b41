"""Result files that are what they claim: the folder is checked before any computation, every
file is written under a temporary name, read back, then given its final name all at once, and a
result another run wrote meanwhile is never replaced silently.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import InputError, OutputError, PancreasAIError
from .interrupts import signals_deferred


def user_path(path: str | Path) -> Path:
    """A path as the user typed it (`~`, relative, spaces, any script) -> an absolute path.

    Absolute because Slicer's scene writer refuses relative folders; `..` is collapsed without
    following links, so messages show the folder the user meant.
    """
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def prepare_output_folder(folder: str | Path) -> Path:
    """Create `folder` and prove that files can be written in it, before anything is computed."""
    folder = user_path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"The output {folder} is a file, not a folder: choose a folder for the results.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(
                dir=folder,
                prefix=".pancreasai-write-test-",  # pragma: no mutate (a name only some systems show, and only while it exists)
        ):
            pass
    except OSError as error:
        raise InputError(f"Cannot write in the output folder {folder} ({_reason(error)}): choose a "
                         "folder you can write to.") from error
    return folder


def refuse_existing(paths: list[Path], overwrite: bool) -> None:
    """Never replace a user's file unless asked to."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise InputError(f"{existing[0]} already exists; use --overwrite to replace it, or choose "
                         "another --output folder.")


@contextlib.contextmanager
def all_or_nothing(paths: list[Path], overwrite: bool = False) -> Iterator[list[Path]]:
    """Yield temporary paths to write; then read each back and give all of them their final
    names, or none.

    The temporary files keep their final names, in a hidden folder beside them, so writers
    that use the name (a .mrb names its inner folder after it) write what the user will see.
    Without `overwrite` a final name is created exclusively: if another run wrote one of them
    meanwhile, its file stays and none of ours is kept. Ctrl-C and SIGTERM wait until the
    final names are given (a few renames), so they never leave half a result.
    """
    paths = [user_path(p) for p in paths]
    staging = {folder: Path(tempfile.mkdtemp(prefix=".partial-", dir=folder)) for folder in {p.parent for p in paths}}
    temporary = [staging[p.parent] / p.name for p in paths]
    try:
        try:
            yield temporary
        except OSError as error:
            raise OutputError(_write_failure(error, paths[0].parent)) from error
        except PancreasAIError as error:  # a writer's message names our hidden folder: name the user's
            message = str(error)
            for folder, hidden in staging.items():
                message = message.replace(str(hidden), str(folder))
            raise type(error)(message) from error
        for temp, final in zip(temporary, paths):
            verify_written_file(temp, final)
    except BaseException:
        with signals_deferred():
            _remove_folders(staging.values())
        raise
    with signals_deferred():
        try:
            _give_final_names(temporary, paths, overwrite)
        finally:
            _remove_folders(staging.values())


def _give_final_names(temporary: list[Path], finals: list[Path], overwrite: bool) -> None:
    done: list[Path] = []
    backups: list[tuple[Path, Path]] = []
    try:
        for temp, final in zip(temporary, finals):
            if overwrite:
                if final.exists():  # kept until every new file is in place
                    backup = temp.with_name(temp.name + ".previous")  # pragma: no mutate (any name in the hidden folder)
                    os.link(final, backup)
                    backups.append((backup, final))
                os.replace(temp, final)
            else:
                _create_exclusively(temp, final)
            done.append(final)
    except BaseException:
        for final in done:
            final.unlink(missing_ok=True)
        for backup, final in backups:
            os.replace(backup, final)
        raise


def _create_exclusively(temp: Path, final: Path) -> None:
    """Rename `temp` to `final` unless `final` exists, atomically where the disk allows links."""
    try:
        os.link(temp, final)
    except FileExistsError:
        raise OutputError(f"{final} was written by another run while this one was computing; it was "
                          "kept, and nothing of this run's result was. Choose another --output folder, "
                          "or use --overwrite.") from None
    except OSError:  # no hard links on this disk (FAT, some network shares): claim the name first
        try:
            os.close(os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            raise OutputError(f"{final} was written by another run while this one was computing; it "
                              "was kept, and nothing of this run's result was.") from None
        os.replace(temp, final)
        return
    temp.unlink()


def verify_written_file(temp: Path, final: Path) -> None:
    """Read a freshly written file back: it must exist, be complete and open as what its name
    says. `final` is the name used in messages."""
    if not temp.exists():
        raise OutputError(f"The output {final} was not written; nothing was replaced.")
    try:
        with open(temp, "rb+") as stream:  # pragma: no mutate (writable: Windows syncs no read-only file; elsewhere any mode)
            os.fsync(stream.fileno())  # a full disk may only say so now
        size = temp.stat().st_size
    except OSError as error:
        raise OutputError(_write_failure(error, final.parent)) from error
    if size == 0:
        raise OutputError(_incomplete(final, "it is empty"))
    try:
        _read_back(temp)
    except Exception as error:  # any reader's error: the file is not what its name says
        why = str(error).strip().replace(str(temp), final.name)
        raise OutputError(_incomplete(final, why.splitlines()[-1] if why else type(error).__name__)) from error


_UTF8 = "utf-8"  # pragma: no mutate (codec names ignore case); what our text files are, whatever the locale


def _read_back(path: Path) -> None:
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")):
        from .volume_io import read_volume

        read_volume(path)  # whole, so a cut-short compressed stream is found
    elif name.endswith((".mrb", ".zip")):
        import zipfile

        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
        if broken is not None:
            raise ValueError(f"its member {broken} is damaged")
    elif name.endswith(".png"):
        from PIL import Image

        with Image.open(path) as image:
            image.verify()
    elif name.endswith(".json"):
        import json

        json.loads(path.read_text(encoding=_UTF8))
    elif name.endswith(".csv"):
        path.read_text(encoding=_UTF8)
    elif name.endswith(".dcm"):
        import pydicom

        dataset = pydicom.dcmread(path)
        if "PixelData" in dataset:
            dataset.pixel_array  # decoded whole: a cut-short frame buffer is found here


def _incomplete(final: Path, why: str) -> str:
    return (f"The output {final} could not be read back ({why}); nothing was replaced. "
            f"{disk_hint(final.parent)}").strip()


def _write_failure(error: OSError, folder: Path) -> str:
    return f"Could not write the results in {folder} ({_reason(error)}); nothing was replaced. {disk_hint(folder)}".strip()


def disk_hint(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    if free < 64 * 2 ** 20:
        return f"The disk holding {folder} is full ({free / 2 ** 20:.1f} MB free): free space or choose another folder."
    return ""


def _reason(error: OSError) -> str:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full"
    if error.errno == errno.EFBIG:
        return "the file is larger than this disk or account allows"
    return error.strerror or type(error).__name__


def _remove_folders(folders) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
