"""Read and write volumes (NIfTI, NRRD, MetaImage, DICOM series) keeping their geometry.

SimpleITK works in LPS; our ijk_to_ras is RAS, as in Slicer. The conversion lives here only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from .errors import InputError, PancreasAIError
from .volume import Volume

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def _sitk():
    import SimpleITK
    return SimpleITK


def is_volume_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(VOLUME_SUFFIXES) and not name.endswith(".seg.nrrd")


def volume_from_sitk(image, name: str = "image") -> Volume:
    """SimpleITK image -> Volume (array (K, J, I), RAS geometry); `name` is used in errors."""
    size = " x ".join(map(str, image.GetSize()))
    if image.GetDimension() > 3:
        raise InputError(
            f"The {name} has {image.GetDimension()} dimensions ({size}): a time series or several "
            "volumes in one file; choose a single 3D volume, e.g. one phase of the series.")
    if image.GetDimension() != 3:
        raise InputError(
            f"The {name} has {image.GetDimension()} dimensions ({size}); a 3D volume is needed.")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"The {name} has {image.GetNumberOfComponentsPerPixel()} values per voxel (a colour or "
            "vector image); a grey-scale scan is needed.")
    sitk = _sitk()
    array = sitk.GetArrayFromImage(image)
    direction = np.array(image.GetDirection(), float).reshape(3, 3)
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    ijk_to_ras[:3, 3] = _LPS_TO_RAS @ np.array(image.GetOrigin(), float)
    return Volume(array, ijk_to_ras)


def sitk_from_volume(volume: Volume):
    """Volume -> SimpleITK image with the same geometry (bool voxels are written as uint8)."""
    sitk = _sitk()
    array = np.ascontiguousarray(volume.array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)  # SimpleITK has no bool pixel type
    image = sitk.GetImageFromArray(array, isVector=False)
    lps = _LPS_TO_RAS @ volume.ijk_to_ras[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps / spacing).flatten().tolist())
    image.SetOrigin((_LPS_TO_RAS @ volume.ijk_to_ras[:3, 3]).tolist())
    return image


def read_volume(path: str | Path) -> Volume:
    """A NIfTI / NRRD / MetaImage file, or a folder holding one DICOM series."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist.")
    sitk = _sitk()
    try:
        if path.is_dir():
            return volume_from_sitk(_read_dicom_series(path), f"DICOM series in {path}")
        return volume_from_sitk(sitk.ReadImage(str(path)), f"image {path}")
    except RuntimeError as error:
        raise InputError(f"{path} could not be read as an image ({_last_line(error)}).") from error


def _last_line(error: Exception) -> str:
    """The informative part of an ITK error (its last line), or the error type."""
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else type(error).__name__


def _read_dicom_series(folder: Path):
    sitk = _sitk()
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or []
    if not series_ids:
        raise InputError(f"{folder} holds no DICOM series; give a folder of one series or a NIfTI/NRRD file.")
    files_per_series = {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids}
    if len(series_ids) > 1:
        listing = ", ".join(f"{sid} ({len(files)} files)" for sid, files in files_per_series.items())
        raise InputError(f"{folder} holds {len(series_ids)} DICOM series ({listing}); "
                         "put each series in a folder of its own.")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files_per_series[series_ids[0]])
    reader.MetaDataDictionaryArrayUpdateOn()
    image = reader.Execute()
    _check_even_slice_spacing(reader, image, folder)
    return image


def _check_even_slice_spacing(reader, image, folder: Path) -> None:
    """Refuse a series with a gap (a missing file) or uneven slices: ITK would give it one
    slice spacing and so misplace every slice after the gap."""
    n_slices = len(reader.GetFileNames())
    if n_slices < 3 or not all(reader.HasMetaDataKey(n, "0020|0032") for n in range(n_slices)):
        return
    normal = np.array(image.GetDirection(), float).reshape(3, 3)[:, 2]
    try:
        positions = np.array([[float(v) for v in reader.GetMetaData(n, "0020|0032").split("\\")]
                              for n in range(n_slices)])
    except ValueError:
        return  # unreadable positions: nothing to compare
    steps = np.diff(positions @ normal)
    typical = float(np.median(np.abs(steps)))
    uneven = np.flatnonzero(np.abs(np.abs(steps) - typical) > max(0.01, 0.05 * typical))
    if typical > 0 and uneven.size:
        n = int(uneven[0])
        raise InputError(
            f"The DICOM series in {folder} has unevenly spaced slices (slices {n + 1} and {n + 2} are "
            f"{abs(steps[n]):.2f} mm apart, most are {typical:.2f} mm): a file may be missing. "
            "Export the complete series again.")


def write_volume(volume: Volume, path: str | Path, metadata: Optional[Mapping[str, str]] = None,
                 compress: bool = True) -> Path:
    """Write with geometry; `metadata` becomes NRRD header fields (`key:=value`)."""
    sitk = _sitk()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk_from_volume(volume)
    for key, value in (metadata or {}).items():
        image.SetMetaData(key, str(value))
    try:
        sitk.WriteImage(image, str(path), useCompression=compress)
    except RuntimeError as error:
        raise PancreasAIError(f"Could not write {path} ({_last_line(error)}); check the file name "
                              "ends in .nii.gz, .nrrd or .seg.nrrd and that the folder is writable.") from error
    return path
