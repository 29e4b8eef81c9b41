"""Read and write volumes (NIfTI, NRRD, MetaImage, DICOM series) keeping their geometry.

SimpleITK works in LPS; our ijk_to_ras is RAS, as in Slicer. The conversion lives here only.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from .errors import InputError, OutputError
from .volume import Volume, check_geometry

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
    direction = np.array(image.GetDirection()).reshape(3, 3)
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    ijk_to_ras[:3, 3] = _LPS_TO_RAS @ np.array(image.GetOrigin())
    check_geometry(ijk_to_ras, name)
    return Volume(sitk.GetArrayFromImage(image), ijk_to_ras)


def sitk_from_volume(volume: Volume):
    """Volume -> SimpleITK image with the same geometry (bool voxels are written as uint8)."""
    sitk = _sitk()
    array = np.ascontiguousarray(volume.array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)  # SimpleITK has no bool pixel type
    image = sitk.GetImageFromArray(array)  # one value per voxel (isVector defaults to False)
    lps = _LPS_TO_RAS @ volume.ijk_to_ras[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps / spacing).flatten().tolist())
    image.SetOrigin((_LPS_TO_RAS @ volume.ijk_to_ras[:3, 3]).tolist())
    return image


def read_volume(path: str | Path) -> Volume:
    """A NIfTI / NRRD / MetaImage file, or a folder holding one DICOM series."""
    path = Path(os.path.expanduser(os.fspath(path)))
    if not path.exists():
        raise InputError(f"{path} does not exist.")
    sitk = _sitk()
    try:
        if path.is_dir():
            return volume_from_sitk(_read_dicom_series(path), f"DICOM series in {path}")
        check_volume_file(path)
        return volume_from_sitk(sitk.ReadImage(str(path)), f"image {path}")
    except RuntimeError as error:
        raise InputError(f"{path} could not be read as an image ({_last_line(error)}).") from error


def _last_line(error: Exception) -> str:
    """The informative part of an ITK error (its last line), or the error type."""
    text = str(error)
    if "not read completely" in text:  # MetaImage's own words, followed by an unrelated errno
        return "the file is cut short: it holds fewer voxels than its header announces"
    lines = text.strip().splitlines()
    return lines[-1] if lines else type(error).__name__


def check_volume_file(path: Path) -> None:
    """Refuse a file that ITK would read other than it is, naming it.

    ITK reads a truncated .nii or .nii.gz as a full volume padded with zeros, and NaN voxels of a
    NIfTI file as zeros, without a word; MetaImage reports a short file only on the console.
    """
    name = path.name.lower()
    if name.endswith((".mha", ".mhd")):
        _check_metaimage_file(path)
    if name.endswith((".nii", ".nii.gz")):
        _check_nifti_file(path)


def _check_nifti_file(path: Path) -> None:
    problem = None  # pragma: no mutate (only its truth is read: None and "" alike)
    try:
        with (gzip.open(path) if path.name.lower().endswith(".gz") else open(path, "rb")) as stream:
            header = stream.read(544)  # pragma: no mutate (any size from 540 up reads the same: the rest is read below)
            layout = _nifti_layout(header)
            if layout is None:
                return  # not a header we know: let ITK judge it
            offset, expected, float_type = layout
            # the extensions between header and data; reading more would only cost memory
            header += stream.read(max(0, offset - len(header)))  # pragma: no mutate
            actual, not_numbers, pending = len(header), 0, header[offset:]
            while True:
                chunk = stream.read(1 << 22)  # pragma: no mutate (the chunk size only sets memory use)
                actual += len(chunk)
                if float_type is not None:
                    data = pending + chunk
                    usable = len(data) - len(data) % float_type.itemsize
                    not_numbers += int(np.count_nonzero(~np.isfinite(np.frombuffer(data[:usable], float_type))))
                    pending = data[usable:]
                if not chunk:
                    break
    except gzip.BadGzipFile as error:
        if "Not a gzipped file" in str(error):
            raise InputError(f"{path} could not be read as an image (it is not gzip-compressed, as a "
                             "name ending in .gz says).") from error
        problem = f"its compressed data are damaged: {error}"
    except (EOFError, zlib.error) as error:
        problem = f"its compressed data are damaged or cut short: {error}"
    else:
        if actual < expected:
            problem = f"it is cut short: it holds {actual:,} bytes of the {expected:,} its header announces"
        elif not_numbers:
            raise InputError(f"{path} holds {not_numbers:,} voxels that are not numbers (NaN or infinite), "
                             "which would be read as 0; fix or re-export the image.")
    if problem:
        raise InputError(f"{path} is incomplete ({problem}); copy or export the file again.")


_META_ELEMENT_BYTES = {"MET_UCHAR": 1, "MET_CHAR": 1, "MET_USHORT": 2, "MET_SHORT": 2, "MET_UINT": 4,
                      "MET_INT": 4, "MET_ULONG": 8, "MET_LONG": 8, "MET_ULONG_LONG": 8, "MET_LONG_LONG": 8,
                      "MET_FLOAT": 4, "MET_DOUBLE": 8}
_META_HEADER_LIMIT = 1 << 16  # pragma: no mutate (bounds the header scan; the exact bound is arbitrary)


def _check_metaimage_file(path: Path) -> None:
    """MetaImage reports a short file only on the console, then fails with an unrelated errno:
    compare the data's size with the header's here, so the message names the problem."""
    fields, header_bytes = {}, 0
    with open(path, "rb") as stream:
        for raw_line in stream:
            header_bytes += len(raw_line)
            line = raw_line.decode("latin-1")  # pragma: no mutate (codec names ignore case)
            key, _, value = line.partition("=")
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile" or header_bytes > _META_HEADER_LIMIT:
                break
    try:
        voxels = math.prod(int(v) for v in fields["DimSize"].split())
        channels = int(fields.get("ElementNumberOfChannels", "1"))
        element = _META_ELEMENT_BYTES[fields["ElementType"]]
        data_file = fields["ElementDataFile"]
        compressed = fields.get("CompressedData", "False").lower() == "true"  # pragma: no mutate (any default but "true")
        expected = int(fields["CompressedDataSize"]) if compressed else voxels * channels * element
    except (KeyError, ValueError):
        return  # a header we do not understand, or a compressed size it does not give: let ITK judge it
    if data_file == "LOCAL":
        available = path.stat().st_size - header_bytes
    elif (path.parent / data_file).is_file():
        available = (path.parent / data_file).stat().st_size
    else:
        return
    if available < expected:
        raise InputError(f"{path} is incomplete (it is cut short: it holds {available:,} bytes of image "
                         f"data of the {expected:,} its header announces); copy or export the file again.")


# Bytes per voxel of each NIfTI datatype code (nifti1.h). The size comes from the datatype, as
# ITK reads it, not from the header's bitpix, which ITK ignores. Types ITK cannot read (1-bit, float128,
# complex256) are left to it.
_NIFTI_VOXEL_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8,
                      1792: 16, 2304: 4}
_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}


def _nifti_layout(header: bytes) -> Optional[tuple[int, int, Optional[np.dtype]]]:
    """(data offset, bytes the file must hold, float voxel type or None) of a NIfTI-1 or
    NIfTI-2 single file (.nii) from its header; None if the header is not one we know."""
    for order, byteorder in (("<", "little"), (">", "big")):
        sizeof_hdr = int.from_bytes(header[:4], byteorder)
        if sizeof_hdr == 348 and len(header) >= 348:
            dims = struct.unpack(order + "8h", header[40:56])
            datatype = int.from_bytes(header[70:72], byteorder)
            offset = int(struct.unpack(order + "f", header[108:112])[0])
            break
        if sizeof_hdr == 540 and len(header) >= 540:
            datatype = int.from_bytes(header[12:14], byteorder)
            dims = struct.unpack(order + "8q", header[16:80])
            offset = struct.unpack(order + "q", header[168:176])[0]
            break
    else:
        return None
    n_dims = dims[0]
    if not 1 <= n_dims <= 7 or datatype not in _NIFTI_VOXEL_BYTES:
        return None
    voxels = math.prod(max(int(d), 1) for d in dims[1:n_dims + 1])  # 0 or less counts as 1, as in nifti1_io
    float_type = np.dtype(order + _NIFTI_FLOAT_TYPES[datatype]) if datatype in _NIFTI_FLOAT_TYPES else None
    return offset, offset + voxels * _NIFTI_VOXEL_BYTES[datatype], float_type


def dicom_series_files(folder: Path) -> list[str]:
    """The files of the folder's one DICOM series, in the order GDCM sorts them for the reader
    (a DICOM SEG refers to these very files)."""
    sitk = _sitk()
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or []
    if not series_ids:
        raise InputError(f"{folder} holds no DICOM series; give a folder of one series or a NIfTI/NRRD file.")
    files_per_series = {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids}
    if len(series_ids) > 1:
        listing = ", ".join(f"{sid} ({len(files)} files)" for sid, files in files_per_series.items())
        raise InputError(f"{folder} holds {len(series_ids)} DICOM series ({listing}); "
                         "put each series in a folder of its own.")
    return list(files_per_series[series_ids[0]])


def _read_dicom_series(folder: Path):
    sitk = _sitk()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(dicom_series_files(folder))
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
    normal = np.array(image.GetDirection()).reshape(3, 3)[:, 2]
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
        from .output_files import disk_hint

        raise OutputError(f"Could not write {path} ({_last_line(error)}); check the file name ends in "
                          f".nii.gz, .nrrd or .seg.nrrd and that the folder is writable. {disk_hint(path.parent)}".strip()) from error
    return path
