"""Reading and writing volumes keeps voxels and RAS geometry; bad inputs get a clear refusal."""
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from PancreasAILib.errors import InputError, PancreasAIError
from PancreasAILib.volume import Volume, check_geometry, check_scalar_volume, check_spacing, make_ijk_to_ras
from PancreasAILib.volume_io import is_volume_file, read_volume, sitk_from_volume, volume_from_sitk, write_volume

def oblique() -> np.ndarray:
    """An oblique IJK-to-RAS, built inside each test (so a planted bug in make_ijk_to_ras shows)."""
    return make_ijk_to_ras((0.7, 0.9, 2.5), (10.5, -20.25, 33.0),
                           Rotation.from_euler("xyz", [12, -8, 20], degrees=True).as_matrix())


SHAPE = (5, 6, 7)


def oblique_volume(dtype=np.int16) -> Volume:
    values = np.arange(np.prod(SHAPE)).reshape(SHAPE) - 50
    return Volume(values.astype(dtype), oblique())


# --- files --------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, np.float64])
def test_file_round_trip_keeps_voxels_dtype_and_geometry(tmp_path, suffix, dtype):
    volume = oblique_volume(dtype)
    back = read_volume(write_volume(volume, tmp_path / f"case{suffix}"))
    assert back.array.dtype == dtype
    np.testing.assert_array_equal(back.array, volume.array)
    # NIfTI stores the geometry as float32; NRRD and MetaImage as decimal text.
    np.testing.assert_allclose(back.ijk_to_ras, volume.ijk_to_ras, rtol=0,
                               atol=1e-5 if suffix.startswith(".nii") else 1e-9)


def nifti_sform(path: Path) -> np.ndarray:
    """(3, 4) sform of a NIfTI-1 file, read from the header bytes (offsets from nifti1.h)."""
    raw = path.read_bytes()
    header = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    assert struct.unpack("<i", header[:4])[0] == 348
    sform_code = struct.unpack("<h", header[254:256])[0]
    assert sform_code > 0, "no sform in the file"
    return np.frombuffer(header[280:328], "<f4").reshape(3, 4).astype(np.float64)


def test_written_nifti_sform_is_our_ras_matrix(tmp_path):
    """NIfTI's sform maps (i, j, k) to RAS mm: it must equal ijk_to_ras, not an LPS one."""
    path = write_volume(oblique_volume(), tmp_path / "case.nii.gz")
    np.testing.assert_allclose(nifti_sform(path), oblique()[:3], rtol=0, atol=1e-5)


def hand_made_nifti(path: Path, array: np.ndarray, sform: np.ndarray) -> None:
    """A minimal NIfTI-1 file (int16, sform only), written byte by byte without any library."""
    k, j, i = array.shape
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, i, j, k, 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, 4, 16)  # datatype int16, 16 bits
    spacing = np.linalg.norm(sform[:, :3], axis=0)
    struct.pack_into("<8f", header, 76, 1.0, *spacing, 1, 1, 1, 1)
    struct.pack_into("<f", header, 108, 352.0)  # voxel data offset
    struct.pack_into("<B", header, 123, 2)  # units: mm
    struct.pack_into("<hh", header, 252, 0, 1)  # qform unused, sform "scanner"
    struct.pack_into("<12f", header, 280, *sform.ravel())
    header[344:348] = b"n+1\x00"
    path.write_bytes(bytes(header) + array.astype("<i2").tobytes())


def hand_made_nifti2(path: Path, shape, datatype: int, bitpix: int, data: bytes, order: str = "<") -> None:
    """A minimal NIfTI-2 file (offsets from nifti2.h): 540-byte header, 4 extension bytes, data."""
    k, j, i = shape
    header = bytearray(544)
    struct.pack_into(order + "i", header, 0, 540)
    header[4:12] = b"n+2\x00\r\n\x1a\n"
    struct.pack_into(order + "2h", header, 12, datatype, bitpix)
    struct.pack_into(order + "8q", header, 16, 3, i, j, k, 1, 1, 1, 1)
    struct.pack_into(order + "8d", header, 104, 1.0, 1.0, 1.0, 1.0, 1, 1, 1, 1)
    struct.pack_into(order + "q", header, 168, 544)  # voxel data offset
    struct.pack_into(order + "i", header, 348, 1)  # sform "scanner"
    struct.pack_into(order + "12d", header, 400, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0)
    path.write_bytes(bytes(header) + data)


@pytest.mark.parametrize("order", ["<", ">"], ids=["little_endian", "big_endian"])
def test_a_cut_short_nifti2_file_is_refused(tmp_path, order):
    shape = (5, 6, 7)
    whole = np.arange(np.prod(shape)).astype(order + "i2").tobytes()  # 420 bytes of int16
    hand_made_nifti2(tmp_path / "cut.nii", shape, 4, 16, whole[:300], order)
    with pytest.raises(InputError, match=r"cut short: it holds 844 bytes of the 964 its header announces"):
        read_volume(tmp_path / "cut.nii")


def test_nan_voxels_in_a_float64_nifti2_file_are_refused(tmp_path):
    values = np.ones((5, 6, 7))
    values[1, 2, 3] = np.nan
    hand_made_nifti2(tmp_path / "nan.nii", values.shape, 64, 64, values.astype("<f8").tobytes())
    with pytest.raises(InputError, match=r"holds 1 voxels that are not numbers"):
        read_volume(tmp_path / "nan.nii")


def test_a_nifti_file_of_only_its_header_is_refused_as_cut_short(tmp_path):
    hand_made_nifti(tmp_path / "hand.nii", oblique_volume().array, oblique()[:3])
    (tmp_path / "header.nii").write_bytes((tmp_path / "hand.nii").read_bytes()[:348])
    with pytest.raises(InputError, match=r"cut short: it holds 348 bytes of the 772"):
        read_volume(tmp_path / "header.nii")
    hand_made_nifti2(tmp_path / "header2.nii", (5, 6, 7), 4, 16, b"")
    (tmp_path / "header2.nii").write_bytes((tmp_path / "header2.nii").read_bytes()[:540])
    with pytest.raises(InputError, match=r"cut short: it holds 540 bytes of the 964"):
        read_volume(tmp_path / "header2.nii")


def test_a_single_slice_nifti_file_reads_whole(tmp_path):
    array = np.arange(6 * 7, dtype=np.int16).reshape(1, 6, 7)
    hand_made_nifti(tmp_path / "slice.nii", array, np.eye(4)[:3])
    np.testing.assert_array_equal(read_volume(tmp_path / "slice.nii").array, array)


def test_reading_a_hand_made_nifti_gives_its_sform_as_ijk_to_ras(tmp_path):
    sform = oblique()[:3].astype(np.float32).astype(np.float64)
    array = oblique_volume().array
    hand_made_nifti(tmp_path / "hand.nii", array, sform)
    volume = read_volume(tmp_path / "hand.nii")
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.ijk_to_ras[:3], sform, rtol=0, atol=1e-5)


def test_nrrd_header_says_lps_with_negated_x_and_y(tmp_path):
    path = write_volume(oblique_volume(), tmp_path / "case.nrrd", compress=False)
    header = path.read_bytes().split(b"\n\n")[0].decode()
    assert "space: left-posterior-superior" in header
    origin = header.split("space origin: (")[1].split(")")[0]
    np.testing.assert_allclose([float(v) for v in origin.split(",")], oblique()[:3, 3] * [-1, -1, 1])


def test_metadata_is_written_into_the_nrrd_header(tmp_path):
    path = write_volume(oblique_volume(), tmp_path / "case.nrrd", {"PancreasAI_Model": "monet-demo", "Threshold": 0.5})
    header = path.read_bytes().split(b"\n\n")[0].decode()
    assert "PancreasAI_Model:=monet-demo" in header.splitlines()
    assert "Threshold:=0.5" in header.splitlines()
    image = sitk.ReadImage(str(path))
    assert image.GetMetaData("PancreasAI_Model") == "monet-demo"


def test_boolean_masks_are_written_as_uint8(tmp_path):
    mask = Volume(oblique_volume().array > 0, oblique())
    back = read_volume(write_volume(mask, tmp_path / "mask.nii.gz"))
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, mask.array)


def test_sitk_conversion_round_trips_geometry_exactly():
    volume = oblique_volume()
    back = volume_from_sitk(sitk_from_volume(volume))
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.ijk_to_ras, volume.ijk_to_ras, rtol=0, atol=1e-12)


def test_sitk_image_is_in_lps():
    image = sitk_from_volume(oblique_volume())
    np.testing.assert_allclose(image.GetOrigin(), oblique()[:3, 3] * [-1, -1, 1])
    np.testing.assert_allclose(image.TransformIndexToPhysicalPoint((1, 2, 3)),
                               (oblique() @ [1, 2, 3, 1])[:3] * [-1, -1, 1])


def test_files_are_compressed_unless_told_otherwise(tmp_path):
    def encoding(path):
        return path.read_bytes().split(b"\n\n")[0].decode().split("encoding: ")[1].splitlines()[0]

    assert encoding(write_volume(oblique_volume(), tmp_path / "default.nrrd")) == "gzip"
    assert encoding(write_volume(oblique_volume(), tmp_path / "asked.nrrd", compress=True)) == "gzip"
    assert encoding(write_volume(oblique_volume(), tmp_path / "raw.nrrd", compress=False)) == "raw"


def test_writing_creates_missing_folders(tmp_path):
    path = write_volume(oblique_volume(), tmp_path / "a" / "b" / "case.nrrd")
    assert read_volume(path).shape == SHAPE


def test_a_two_dimensional_sitk_image_is_named_with_its_size():
    with pytest.raises(InputError, match=r"The image has 2 dimensions \(12 x 10\)"):
        volume_from_sitk(sitk.GetImageFromArray(np.zeros((10, 12), np.int16)))


@pytest.mark.parametrize("text, line", [
    ("ITK ERROR: MetaImage: File not read completely\nerrno 2: No such file", "the file is cut short"),
    ("ITK ERROR: one\nthe informative line\n", "the informative line"),
    ("ITK ERROR: Exception thrown\nitkImageFileReader.hxx:135:\nthe informative line", "the informative line"),
    ("", "RuntimeError"),
])
def test_an_itk_error_is_reduced_to_its_informative_line(text, line):
    from PancreasAILib.volume_io import _last_line

    assert _last_line(RuntimeError(text)).startswith(line)


def test_writing_to_an_unknown_file_type_is_a_clear_error(tmp_path):
    with pytest.raises(PancreasAIError, match="Could not write"):
        write_volume(oblique_volume(), tmp_path / "case.unknown")


def test_volume_files_are_recognised_and_segmentations_are_not(tmp_path):
    for name in ("a.nii.gz", "b.NRRD", "c.nii", "d.mha"):
        (tmp_path / name).write_bytes(b"x")
        assert is_volume_file(tmp_path / name)
    for name in ("e.seg.nrrd", "f.txt"):
        (tmp_path / name).write_bytes(b"x")
        assert not is_volume_file(tmp_path / name)
    assert not is_volume_file(tmp_path)


# --- DICOM --------------------------------------------------------------------------------

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"


def write_dicom_series(volume: Volume, folder: Path, series_uid: str, prefix: str = "IM") -> None:
    """One CT file per slice, with the tags a reader needs to rebuild the geometry."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk_from_volume(volume)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    orientation = "\\".join(f"{v:.10f}" for v in (*direction[:, 0], *direction[:, 1]))
    spacing = image.GetSpacing()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
            "0008|0018": f"{series_uid}.{k + 1}",  # SOP instance UID
            "0008|0060": "CT",
            "0010|0020": "PHANTOM",
            "0020|000d": STUDY_UID,
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{p:.10f}" for p in position),
            "0020|0037": orientation,
            "0028|0030": f"{spacing[1]:.10f}\\{spacing[0]:.10f}",  # row spacing \ column spacing
            "0018|0050": f"{spacing[2]:.10f}",
        }
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{prefix}{k:04d}.dcm"))
        writer.Execute(slice_image)


def test_dicom_series_folder_reads_as_one_volume_with_its_geometry(tmp_path):
    volume = oblique_volume()
    write_dicom_series(volume, tmp_path / "series", "1.2.826.0.1.3680043.8.498.2")
    back = read_volume(tmp_path / "series")
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.ijk_to_ras, volume.ijk_to_ras, rtol=0, atol=1e-6)


def test_folder_with_two_dicom_series_is_refused_naming_both(tmp_path):
    first, second = "1.2.826.0.1.3680043.8.498.3", "1.2.826.0.1.3680043.8.498.4"
    write_dicom_series(oblique_volume(), tmp_path / "mixed", first, prefix="A")
    write_dicom_series(oblique_volume(), tmp_path / "mixed", second, prefix="B")
    with pytest.raises(InputError, match="2 DICOM series") as error:
        read_volume(tmp_path / "mixed")
    assert first in str(error.value) and second in str(error.value)
    assert "folder of its own" in str(error.value)


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path):
    write_dicom_series(oblique_volume(), tmp_path / "gap", "1.2.826.0.1.3680043.8.498.5")
    (tmp_path / "gap" / "IM0002.dcm").unlink()
    with pytest.raises(InputError, match="unevenly spaced slices.*missing"):
        read_volume(tmp_path / "gap")


def test_folder_without_dicom_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match="no DICOM series"):
        read_volume(tmp_path)


# --- inputs that are not one 3D grey-scale volume -------------------------------------------


def test_missing_file_is_named(tmp_path):
    with pytest.raises(InputError, match="missing.nii.gz does not exist"):
        read_volume(tmp_path / "missing.nii.gz")


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 100, b"NRRD0004\nnot a header\n"],
                         ids=["empty", "random", "broken_header"])
def test_unreadable_file_is_refused_with_its_name(tmp_path, content):
    path = tmp_path / ("case.nrrd" if content.startswith(b"NRRD") else "case.nii.gz")
    path.write_bytes(content)
    with pytest.raises(InputError, match="could not be read as an image") as error:
        read_volume(path)
    assert str(path) in str(error.value)


def test_two_dimensional_image_is_refused(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((10, 12), np.int16)), str(tmp_path / "slice.nii"))
    with pytest.raises(InputError, match="2 dimensions.*3D volume is needed"):
        read_volume(tmp_path / "slice.nii")


def test_four_dimensional_image_is_refused_as_a_series(tmp_path):
    phases = [sitk.GetImageFromArray(np.full(SHAPE, t, np.int16)) for t in range(3)]
    sitk.WriteImage(sitk.JoinSeries(phases), str(tmp_path / "phases.nii.gz"))
    with pytest.raises(InputError, match="4 dimensions.*single 3D volume"):
        read_volume(tmp_path / "phases.nii.gz")


def test_rgb_image_is_refused_as_colour(tmp_path):
    rgb = sitk.GetImageFromArray(np.zeros((*SHAPE, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "colour.nrrd"))
    with pytest.raises(InputError, match="colour.*grey-scale"):
        read_volume(tmp_path / "colour.nrrd")


# --- check_scalar_volume ------------------------------------------------------------------


def test_a_normal_scan_passes_the_checks():
    check_scalar_volume(np.random.default_rng(0).normal(size=(3, 16, 16)).astype(np.float32), "CT volume")


@pytest.mark.parametrize("array, message", [
    (np.full((3, 16, 16), np.nan, np.float32), "not numbers"),
    (np.where(np.eye(16, dtype=bool)[None], np.inf, 1.0).repeat(3, 0), "not numbers"),
    (np.full((3, 16, 16), 40, np.int16), "same value"),
    (np.zeros((0, 16, 16), np.int16), "empty"),
    (np.arange(3 * 4 * 16).reshape(3, 4, 16), "too small"),
    (np.arange(2 * 3 * 16 * 16).reshape(2, 3, 16, 16), "4 dimensions"),
    (np.zeros((3, 16, 16, 3), np.uint8), "colour"),
    (np.arange(256).reshape(16, 16), "2 dimension"),
    (np.ones((3, 16, 16), bool), "voxel type"),
], ids=["nan", "infinite", "constant", "empty", "too_small", "4d", "rgb", "2d", "bool"])
def test_unusable_arrays_are_refused_naming_the_problem(array, message):
    with pytest.raises(InputError, match=message) as error:
        check_scalar_volume(array, "CT volume")
    assert "CT volume" in str(error.value)


def test_three_phase_series_is_not_called_a_colour_image():
    with pytest.raises(InputError, match="4 dimensions"):
        check_scalar_volume(np.arange(16 * 16 * 9, dtype=np.int16).reshape(3, 16, 16, 3), "CT volume")


def test_too_small_message_gives_sizes_as_columns_rows_slices():
    with pytest.raises(InputError, match=r"\(16 x 4 x 3 voxels\).*at least 8 x 8 x 1"):
        check_scalar_volume(np.arange(3 * 4 * 16).reshape(3, 4, 16), "CT volume")


def test_a_colour_image_with_an_alpha_channel_is_called_colour():
    with pytest.raises(InputError, match="colour"):
        check_scalar_volume(np.zeros((3, 16, 16, 4), np.uint8), "CT volume")


def test_an_array_of_exactly_the_minimum_size_passes():
    check_scalar_volume(np.arange(8 * 8).reshape(1, 8, 8), "CT volume")
    check_scalar_volume(np.arange(2 * 3 * 4).reshape(2, 3, 4), "CT volume", min_size=(2, 3, 4))


def test_complex_voxels_are_refused():
    with pytest.raises(InputError, match="voxel type complex"):
        check_scalar_volume(np.arange(3 * 16 * 16).reshape(3, 16, 16) * (1 + 1j), "CT volume")


def test_the_message_counts_the_voxels_that_are_not_numbers():
    array = np.ones((3, 16, 16), np.float32)
    array[0, 0, 0], array[2, 5, 7] = np.nan, -np.inf
    with pytest.raises(InputError, match=r"contains 2 voxels that are not numbers"):
        check_scalar_volume(array, "CT volume")


def test_exactly_the_largest_accepted_number_of_voxels_passes():
    check_scalar_volume(np.arange(3 * 16 * 16).reshape(3, 16, 16), "CT volume", max_voxels=3 * 16 * 16)


def test_the_default_limit_is_two_billion_voxels():
    # a broadcast view: the size is checked before any voxel is read, so nothing is allocated
    huge = np.broadcast_to(np.zeros(1, np.int16), (2_000_000_001, 1, 1))
    with pytest.raises(InputError, match="more than the 2,000,000,000 this tool accepts"):
        check_scalar_volume(huge, "CT volume")


def test_too_many_voxels_are_refused_with_advice_to_crop():
    with pytest.raises(InputError, match="Crop Volume"):
        check_scalar_volume(np.arange(3 * 16 * 16).reshape(3, 16, 16), "CT volume", max_voxels=100)


# --- files that are not what they claim ------------------------------------------------------


@pytest.mark.parametrize("suffix, cut, message", [
    (".nii.gz", 2 / 3, r"is incomplete \(its compressed data are damaged or cut short"),
    (".nii", 2 / 3, r"is incomplete \(it is cut short: it holds [\d,]+ bytes of the [\d,]+ its header"),
    (".nii", 1 - 1e-4, r"is incomplete \(it is cut short"),
    (".mha", 2 / 3, r"is incomplete \(it is cut short: it holds [\d,]+ bytes of image data"),
    (".nrrd", 2 / 3, r"could not be read as an image"),
])
def test_a_cut_short_file_is_refused_naming_it(tmp_path, suffix, cut, message):
    """ITK would read a short NIfTI file as a volume padded with zeros, without a word."""
    whole = write_volume(oblique_volume(np.float32), tmp_path / f"whole{suffix}", compress=suffix != ".nii")
    data = whole.read_bytes()
    cut_path = tmp_path / f"cut{suffix}"
    cut_path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(InputError, match=message) as error:
        read_volume(cut_path)
    assert str(cut_path) in str(error.value)
    assert read_volume(whole).shape == SHAPE  # the whole file is fine


@pytest.mark.parametrize("suffix", [".mha", ".mhd"])
def test_a_cut_short_uncompressed_metaimage_is_refused(tmp_path, suffix):
    header = write_volume(oblique_volume(np.float32), tmp_path / f"case{suffix}", compress=False)
    data = header if suffix == ".mha" else tmp_path / "case.raw"
    data.write_bytes(data.read_bytes()[:-4])  # one float32 voxel short
    with pytest.raises(InputError, match=rf"case{suffix} is incomplete \(it is cut short: it holds [\d,]+ bytes of image "
                                         r"data of the 840 its header announces"):
        read_volume(header)


def test_a_cut_short_vector_metaimage_is_refused(tmp_path):
    """Three values per voxel: the data must hold three times the voxels."""
    image = sitk.GetImageFromArray(np.ones((*SHAPE, 3), np.float32), isVector=True)
    sitk.WriteImage(image, str(tmp_path / "vector.mha"), useCompression=False)
    data = (tmp_path / "vector.mha").read_bytes()
    (tmp_path / "vector.mha").write_bytes(data[:-4 * np.prod(SHAPE)])  # a third of the data missing
    with pytest.raises(InputError, match=r"of the 2,520 its header announces"):
        read_volume(tmp_path / "vector.mha")


def test_a_damaged_compressed_file_is_refused(tmp_path):
    whole = write_volume(oblique_volume(), tmp_path / "whole.nii.gz")
    data = bytearray(whole.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "damaged.nii.gz").write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"damaged.nii.gz is incomplete \(its compressed data are damaged"):
        read_volume(tmp_path / "damaged.nii.gz")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nan_voxels_in_a_nifti_file_are_refused_not_read_as_zero(tmp_path, suffix):
    values = oblique_volume(np.float32).array.copy()
    values[2, 3, 4] = np.nan
    values[0, 0, 0] = np.inf
    path = write_volume(Volume(values, oblique()), tmp_path / f"nan{suffix}", compress=suffix.endswith(".gz"))
    with pytest.raises(InputError, match=r"holds 2 voxels that are not numbers"):
        read_volume(path)


def test_a_file_named_gz_that_is_not_compressed_is_refused(tmp_path):
    raw = write_volume(oblique_volume(), tmp_path / "raw.nii", compress=False)
    (tmp_path / "raw.nii.gz").write_bytes(raw.read_bytes())
    with pytest.raises(InputError, match="could not be read as an image .*not gzip-compressed"):
        read_volume(tmp_path / "raw.nii.gz")



# --- geometry checks -------------------------------------------------------------------------


def test_perpendicular_axes_pass_even_with_rounding_noise():
    check_geometry(oblique(), "CT volume")
    noisy = oblique().copy()
    noisy[:3, :3] += 1e-7
    check_geometry(noisy, "CT volume")


@pytest.mark.parametrize("lean_degrees", [20.0, 3.0, -7.5])
def test_sheared_axes_are_refused_with_their_angle(lean_degrees):
    """The j axis leans `lean_degrees` towards i: the angle between them is 90 - lean."""
    lean = np.radians(lean_degrees)
    direction = np.array([[1.0, np.sin(lean), 0.0], [0.0, np.cos(lean), 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(InputError, match=rf"CT volume's voxel axes are not perpendicular \(sheared by "
                                         rf"{abs(lean_degrees):.1f} degrees"):
        check_geometry(make_ijk_to_ras((0.8, 0.8, 2.0), (0, 0, 0), direction), "CT volume")


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_zero_voxel_size_is_refused_naming_its_axis(axis):
    spacing = [0.8, 0.9, 2.0]
    spacing[axis] = 0.0
    name = "IJK"[axis]
    with pytest.raises(InputError, match=rf"T2 volume has a voxel size of 0 mm along its {name} axis \(spacing "):
        check_geometry(make_ijk_to_ras(spacing), "T2 volume")
    with pytest.raises(InputError, match=rf"along its {name} axis"):
        check_spacing(spacing, "T2 volume")
    check_spacing([1e-3, 1.0, 1.0], "T2 volume")  # small is fine


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0, None])
def test_spacing_that_is_not_a_positive_number_is_refused(bad):
    with pytest.raises(InputError, match="voxel size of .* along its J axis"):
        check_spacing([1.0, bad, 1.0], "CT volume")


def test_voxel_sizes_down_to_a_millionth_of_a_mm_are_accepted():
    check_spacing([1e-6, 1.0, 1.0], "CT volume")
    with pytest.raises(InputError, match="along its I axis"):
        check_spacing([0.9e-6, 1.0, 1.0], "CT volume")


def test_parallel_voxel_axes_are_refused_as_sheared_by_90_degrees():
    matrix = np.eye(4)
    matrix[:3, 0] = matrix[:3, 1] = [1.0, 1.0, 1.0]  # i and j both along the same diagonal
    with pytest.raises(InputError, match=r"sheared by 90.0 degrees"):
        check_geometry(matrix, "CT volume")


def test_a_matrix_with_a_missing_number_is_refused():
    matrix = oblique().tolist()
    matrix[1][3] = None
    with pytest.raises(InputError, match="invalid position in space"):
        check_geometry(matrix, "CT volume")


def test_a_matrix_with_non_finite_numbers_is_refused():
    matrix = oblique().copy()
    matrix[1, 3] = np.nan
    with pytest.raises(InputError, match="invalid position in space"):
        check_geometry(matrix, "CT volume")


def test_a_sheared_file_is_refused_when_read(tmp_path):
    image = sitk_from_volume(oblique_volume())
    direction = np.array(image.GetDirection()).reshape(3, 3)
    direction[:, 1] = direction[:, 1] + 0.3 * direction[:, 0]
    direction[:, 1] /= np.linalg.norm(direction[:, 1])
    image.SetDirection(direction.flatten().tolist())
    sitk.WriteImage(image, str(tmp_path / "sheared.nrrd"))
    with pytest.raises(InputError, match=r"sheared.nrrd's voxel axes are not perpendicular"):
        read_volume(tmp_path / "sheared.nrrd")


# --- NIfTI headers: the size check reads them as the NIfTI library does -------------------------


def raw_nifti1(path: Path, dims, datatype: int, bitpix: int, data: bytes) -> None:
    """A NIfTI-1 file with the given dim[0..7], datatype and bitpix fields (identity sform)."""
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, *dims)
    struct.pack_into("<hh", header, 70, datatype, bitpix)
    struct.pack_into("<8f", header, 76, 1.0, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", header, 108, 352.0)
    struct.pack_into("<hh", header, 252, 0, 1)
    struct.pack_into("<12f", header, 280, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0)
    header[344:348] = b"n+1\x00"
    path.write_bytes(bytes(header) + data)


NIFTI_VOXEL_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8,
                     1792: 16, 2304: 4}  # from nifti1.h


@pytest.mark.parametrize("datatype", NIFTI_VOXEL_BYTES)
def test_the_size_a_nifti_file_must_have_follows_its_datatype(tmp_path, datatype):
    size = NIFTI_VOXEL_BYTES[datatype]
    raw_nifti1(tmp_path / "whole.nii", (3, 7, 6, 5, 1, 1, 1, 1), datatype, 8 * size, bytes(210 * size))
    try:
        read_volume(tmp_path / "whole.nii")
    except InputError as error:  # colour types are refused, for what they are
        assert "incomplete" not in str(error)
    raw_nifti1(tmp_path / "short.nii", (3, 7, 6, 5, 1, 1, 1, 1), datatype, 8 * size, bytes(210 * size - 1))
    with pytest.raises(InputError, match=rf"cut short: it holds {352 + 210 * size - 1:,} bytes of the {352 + 210 * size:,}"):
        read_volume(tmp_path / "short.nii")


@pytest.mark.parametrize("bitpix", [0, 1, 8, -16])
def test_a_wrong_bitpix_does_not_hide_a_cut_short_nifti_file(tmp_path, bitpix):
    """ITK takes the voxel size from the datatype and ignores bitpix: so must the check."""
    whole = np.arange(210, dtype="<i2").tobytes()
    raw_nifti1(tmp_path / "cut.nii", (3, 7, 6, 5, 1, 1, 1, 1), 4, bitpix, whole[:300])
    with pytest.raises(InputError, match=r"cut short: it holds 652 bytes of the 772"):
        read_volume(tmp_path / "cut.nii")
    raw_nifti1(tmp_path / "whole.nii", (3, 7, 6, 5, 1, 1, 1, 1), 4, bitpix, whole)
    np.testing.assert_array_equal(read_volume(tmp_path / "whole.nii").array.ravel(), np.arange(210))


def test_nan_voxels_are_found_whatever_the_bitpix_says(tmp_path):
    values = np.ones(210, "<f4")
    values[17] = np.nan
    raw_nifti1(tmp_path / "nan.nii", (3, 7, 6, 5, 1, 1, 1, 1), 16, 0, values.tobytes())
    with pytest.raises(InputError, match=r"holds 1 voxels that are not numbers"):
        read_volume(tmp_path / "nan.nii")


@pytest.mark.parametrize("n_dims, dims, data_bytes, announced", [
    (1, (7,), 8, 366), (7, (7, 6, 5, 1, 1, 1), 100, 772)], ids=["1d", "7d"])
def test_a_cut_short_nifti_file_of_one_to_seven_dimensions_is_refused(tmp_path, n_dims, dims, data_bytes, announced):
    raw_nifti1(tmp_path / "cut.nii", (n_dims, *dims, *[1] * (7 - len(dims))), 4, 16, bytes(data_bytes))
    with pytest.raises(InputError, match=rf"cut short: it holds {352 + data_bytes} bytes of the {announced}"):
        read_volume(tmp_path / "cut.nii")


def test_sizes_beyond_the_number_of_dimensions_are_ignored(tmp_path):
    """dim[0] = 3: a stray dim[4] of 5 is not a fourth dimension (nor is dim[1] the count)."""
    array = np.arange(210, dtype=np.int16).reshape(5, 6, 7)
    raw_nifti1(tmp_path / "stray.nii", (3, 7, 6, 5, 5, 1, 1, 1), 4, 16, array.astype("<i2").tobytes())
    np.testing.assert_array_equal(read_volume(tmp_path / "stray.nii").array, array)


def test_a_size_of_zero_or_less_counts_as_one_as_the_nifti_library_reads_it(tmp_path):
    raw_nifti1(tmp_path / "flat.nii", (3, 7, 6, -5, 1, 1, 1, 1), 4, 16, np.arange(42, dtype="<i2").tobytes())
    assert read_volume(tmp_path / "flat.nii").shape == (1, 6, 7)


@pytest.mark.parametrize("n_dims", [0, 8])
def test_a_nifti_header_with_an_impossible_dimension_count_is_unreadable_not_cut_short(tmp_path, n_dims):
    """Copying such a file again would not help: it must not be called incomplete."""
    raw_nifti1(tmp_path / "odd.nii", (n_dims, 7, 6, 5, 1, 1, 1, 1), 4, 16, b"")
    with pytest.raises(InputError, match="could not be read as an image") as error:
        read_volume(tmp_path / "odd.nii")
    assert "incomplete" not in str(error.value)


@pytest.mark.parametrize("field", ["negative_size", "negative_offset"])
def test_a_corrupt_nifti2_header_is_unreadable_not_cut_short(tmp_path, field):
    path = tmp_path / "odd.nii"
    hand_made_nifti2(path, (-5, 6, 7) if field == "negative_size" else (5, 6, 7), 4, 16, bytes(420))
    if field == "negative_offset":
        data = bytearray(path.read_bytes())
        struct.pack_into("<q", data, 168, -16)
        path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="could not be read as an image") as error:
        read_volume(path)
    assert "incomplete" not in str(error.value)


def test_a_nan_voxel_far_into_a_large_nifti_file_is_found(tmp_path):
    """The data are read in chunks of a few MB: a NaN after the first one still counts."""
    values = np.ones((24, 256, 256), np.float32)  # 6 MB
    values[-1, -1, -1] = np.nan
    path = write_volume(Volume(values, np.eye(4)), tmp_path / "large.nii", compress=False)
    with pytest.raises(InputError, match=r"holds 1 voxels that are not numbers"):
        read_volume(path)


# --- MetaImage headers ---------------------------------------------------------------------------


def test_a_metaimage_data_file_with_an_equals_sign_in_its_name_is_checked(tmp_path):
    header = write_volume(oblique_volume(np.float32), tmp_path / "phase=arterial.mhd", compress=False)
    assert "ElementDataFile = phase=arterial.raw" in header.read_text(encoding="utf-8")
    data = tmp_path / "phase=arterial.raw"
    data.write_bytes(data.read_bytes()[:-4])
    with pytest.raises(InputError, match=r"is incomplete \(it is cut short: it holds 836 bytes of image data of the 840"):
        read_volume(header)


def test_a_metaimage_header_of_the_full_scanned_length_is_still_checked(tmp_path):
    from PancreasAILib.volume_io import _META_HEADER_LIMIT

    path = write_volume(oblique_volume(np.float32), tmp_path / "case.mha", compress=False)
    head, data = path.read_bytes().split(b"ElementDataFile = LOCAL\n")
    comment = b"Comment = " + b"x" * (_META_HEADER_LIMIT - len(head) - len(b"Comment = \n")) + b"\n"
    head += comment
    assert len(head) == _META_HEADER_LIMIT
    path.write_bytes(head + b"ElementDataFile = LOCAL\n" + data[:-4])
    with pytest.raises(InputError, match=r"is incomplete \(it is cut short: it holds 836 bytes"):
        read_volume(path)


def test_a_compressed_metaimage_with_an_unreadable_size_is_refused_not_crashed_on(tmp_path):
    path = write_volume(oblique_volume(), tmp_path / "case.mha")
    head, data = path.read_bytes().split(b"ElementDataFile = LOCAL\n")
    head = b"".join(line if not line.startswith(b"CompressedDataSize") else b"CompressedDataSize = unknown\n"
                    for line in head.splitlines(keepends=True))
    path.write_bytes(head + b"ElementDataFile = LOCAL\n" + data)
    with pytest.raises(InputError, match="could not be read as an image"):
        read_volume(path)


# --- DICOM series: spacing checks ----------------------------------------------------------------


def write_axial_series(folder: Path, z_positions, series_uid: str, rgb: bool = False,
                       without_position: int | None = None) -> None:
    """8 x 8 axial slices (0.5 mm pixels) at the given heights in mm; slice n holds n + 1."""
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for n, z in enumerate(z_positions):
        slice_image = sitk.GetImageFromArray(np.full((8, 8, 3) if rgb else (8, 8), n + 1, np.uint8 if rgb else np.int16),
                                             isVector=rgb)
        tags = {"0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{series_uid}.{n + 1}", "0008|0060": "CT",
                "0010|0020": "PHANTOM", "0020|000d": STUDY_UID, "0020|000e": series_uid, "0020|0013": str(n + 1),
                "0020|0032": f"0\\0\\{z!r}", "0020|0037": "1\\0\\0\\0\\1\\0", "0028|0030": "0.5\\0.5"}
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        path = folder / f"IM{n:04d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(slice_image)
        if n == without_position:  # rename the tag (0020,0032) to an unknown one, (0020,0031)
            data = path.read_bytes()
            at = data.index(b"\x20\x00\x32\x00")
            path.write_bytes(data[:at] + b"\x20\x00\x31\x00" + data[at + 4:])


@pytest.mark.parametrize("z_positions, apart, most", [
    ([0, 2, 6], "2.00", "3.00"),  # three slices, the middle one of four missing
    ([0, 0.5, 1.0, 2.0, 2.5], "1.00", "0.50"),  # a thin-slice series with a gap
    ([0, 2, 4, 6.5, 8.5], "2.50", "2.00"),  # a quarter more than the others
], ids=["three_slices", "thin_slices", "quarter_more"])
def test_unevenly_spaced_slices_are_refused_naming_the_folder(tmp_path, z_positions, apart, most):
    write_axial_series(tmp_path / "series", z_positions, "1.2.826.0.1.3680043.8.498.20")
    with pytest.raises(InputError, match=rf"The DICOM series in {tmp_path / 'series'} has unevenly spaced slices "
                                         rf"\(slices \d and \d are {apart} mm apart, most are {most} mm\)"):
        read_volume(tmp_path / "series")


@pytest.mark.parametrize("z_positions", [[0, 2, 4.05, 6.05, 8.05], [0, 5, 10, 15, 20.25, 25.25]],
                         ids=["2.5_percent", "exactly_5_percent"])
def test_slice_spacing_within_5_percent_is_accepted(tmp_path, z_positions):
    write_axial_series(tmp_path / "series", z_positions, "1.2.826.0.1.3680043.8.498.21")
    volume = read_volume(tmp_path / "series")
    np.testing.assert_array_equal(volume.array[:, 0, 0], np.arange(1, len(z_positions) + 1))


def test_a_series_with_a_slice_without_its_position_is_read(tmp_path):
    """The spacing check needs every slice's position; without one there is nothing to compare."""
    write_axial_series(tmp_path / "series", [0, 2, 4, 6], "1.2.826.0.1.3680043.8.498.22", without_position=2)
    assert read_volume(tmp_path / "series").shape == (4, 8, 8)


def test_folder_with_two_dicom_series_lists_each_with_its_number_of_files(tmp_path):
    first, second = "1.2.826.0.1.3680043.8.498.23", "1.2.826.0.1.3680043.8.498.24"
    write_axial_series(tmp_path / "mixed", [0, 2, 4, 6, 8], first)
    write_axial_series(tmp_path / "other", [0, 2, 4], second)
    for path in (tmp_path / "other").iterdir():
        path.rename(tmp_path / "mixed" / f"B{path.name}")
    with pytest.raises(InputError, match=rf"2 DICOM series \(({first} \(5 files\), {second} \(3 files\)|"
                                         rf"{second} \(3 files\), {first} \(5 files\))\)"):
        read_volume(tmp_path / "mixed")


def test_a_colour_dicom_series_is_refused_naming_its_folder(tmp_path):
    write_axial_series(tmp_path / "colour", [0, 2, 4], "1.2.826.0.1.3680043.8.498.25", rgb=True)
    with pytest.raises(InputError, match=rf"The DICOM series in {tmp_path / 'colour'} has 3 values per voxel"):
        read_volume(tmp_path / "colour")
