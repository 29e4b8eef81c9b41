"""Read and write volumes (NIfTI, NRRD, MetaImage, DICOM series) keeping their geometry.

SimpleITK works in LPS; our ijk_to_ras is RAS, as in Slicer. The conversion lives here only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from .errors import InputError
from .volume import Volume

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def _sitk():
    import SimpleITK
    return SimpleITK


def is_volume_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(VOLUME_SUFFIXES) and not name.endswith(".seg.nrrd")


def volume_from_sitk(image) -> Volume:
    """SimpleITK image -> Volume (array (K, J, I), RAS geometry)."""
    if image.GetDimension() != 3:
        raise InputError(
            f"The image has {image.GetDimension()} dimensions ({' x '.join(map(str, image.GetSize()))}); "
            "a 3D volume is needed.")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("The image has several values per voxel (colour or vector image); "
                         "a grey-scale scan is needed.")
    sitk = _sitk()
    array = sitk.GetArrayFromImage(image)
    direction = np.array(image.GetDirection(), float).reshape(3, 3)
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    ijk_to_ras[:3, 3] = _LPS_TO_RAS @ np.array(image.GetOrigin(), float)
    return Volume(array, ijk_to_ras)


def sitk_from_volume(volume: Volume):
    """Volume -> SimpleITK image with the same geometry."""
    sitk = _sitk()
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array), isVector=False)
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
            return volume_from_sitk(_read_dicom_series(path))
        return volume_from_sitk(sitk.ReadImage(str(path)))
    except RuntimeError as error:
        raise InputError(f"{path} could not be read as an image ({str(error).strip().splitlines()[-1]}).") from error


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
    return reader.Execute()


def write_volume(volume: Volume, path: str | Path, metadata: Optional[Mapping[str, str]] = None,
                 compress: bool = True) -> Path:
    """Write with geometry; `metadata` becomes NRRD header fields (`key:=value`)."""
    sitk = _sitk()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk_from_volume(volume)
    for key, value in (metadata or {}).items():
        image.SetMetaData(key, str(value))
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path
