"""A mask on a DICOM series' grid -> a DICOM Segmentation object (SEG) that a PACS stores
beside the CT: one binary segment, coded in SNOMED CT, naming the model that made it, each frame
referring to the CT image it was drawn on.

highdicom (and pydicom, which it brings) is imported only here, inside the functions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError, MissingDependencyError
from .segmentation_file import SegmentInfo
from .volume import Volume
from .volume_io import dicom_series_files

#: How far (in voxels) a CT image's position may lie from its slice of the grid read from the
#: series: in its plane (rounding only), and along the slice normal, where the reader accepts
#: slices 5 % uneven (volume_io) and a quarter slice still names one slice without doubt.
IN_PLANE_TOLERANCE_VOXELS = 0.1
NORMAL_TOLERANCE_VOXELS = 0.25
#: Where a viewer lists the SEG among the study's series: after the CT's usual numbers.
SERIES_NUMBER = 1000
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def dicom_seg_unavailable() -> str:
    """Why no DICOM SEG can be written here ("" when it can)."""
    try:
        _dicom_libraries()
    except MissingDependencyError as error:
        return str(error)
    return ""


def dicom_segmentation(mask: Volume, series_folder: Path, segment: SegmentInfo, card):
    """`mask` ((K, J, I), nonzero = `segment`, on the grid `read_volume(series_folder)` gives) as
    a `highdicom.seg.Segmentation` referring to the CT images of `series_folder`, to be written
    with its `save_as`; `card` is the model card, whose name and SHA256 identify the algorithm."""
    hd, _ = _dicom_libraries()
    series_folder = Path(series_folder)
    images = source_images_by_slice(mask, series_folder)
    category, property_type = terminology_codes(segment.terminology)
    try:
        description = hd.seg.SegmentDescription(
            segment_number=1, segment_label=segment.name,
            segmented_property_category=category, segmented_property_type=property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                # the SHA256 as version: two weights files of one name are told apart
                name=card.name, version=card.sha256,
                family=hd.sr.CodedConcept("123109", "DCM", "Artificial Intelligence")),
            display_color=hd.color.CIELabColor.from_rgb(*(round(255 * c) for c in segment.color_rgb)))
        return hd.seg.Segmentation(
            source_images=images,
            pixel_array=(np.asarray(mask.array) != 0).astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description],
            series_instance_uid=hd.UID(), series_number=SERIES_NUMBER,
            sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="PancreasAI", manufacturer_model_name=card.name[:64],
            software_versions=card.sha256, device_serial_number="none",
            content_label="PANCREAS", content_description=f"{segment.name} by {card.name}"[:64])
    except (ValueError, TypeError, AttributeError, KeyError) as error:
        raise InputError(f"No DICOM SEG could be made for the series in {series_folder} ({error}); the "
                         "other result files are complete.") from error


def source_images_by_slice(mask: Volume, series_folder: Path) -> list:
    """The series' CT images (pydicom datasets, no pixels) in the grid's slice order: image n is
    the one whose position is voxel (0, 0, n), checked on every image, not assumed from an order."""
    _, pydicom = _dicom_libraries()
    files = dicom_series_files(series_folder)
    n_slices, rows, columns = mask.array.shape[:3]
    if len(files) != n_slices:
        raise InputError(f"The DICOM series in {series_folder} has {len(files)} image files for {n_slices} "
                         "slices (a multi-frame file?); a DICOM SEG is made only for one file per slice.")
    lps_to_ijk = np.linalg.inv(_LPS_FROM_RAS @ mask.ijk_to_ras)
    axes_lps = (_LPS_FROM_RAS @ mask.ijk_to_ras)[:3, :2] / mask.spacing[:2]
    by_slice: dict[int, object] = {}
    for file in files:
        try:
            image = pydicom.dcmread(file, stop_before_pixels=True)
            position = np.array([float(v) for v in image.ImagePositionPatient])
            orientation = np.array([float(v) for v in image.ImageOrientationPatient]).reshape(2, 3).T
            size = (int(image.Rows), int(image.Columns))
        except (OSError, pydicom.errors.InvalidDicomError, AttributeError, TypeError, ValueError):
            raise InputError(f"{file} cannot be read, or lacks the image position, orientation or size a "
                             "DICOM SEG refers to; no DICOM SEG was made.") from None
        i, j, k = (lps_to_ijk @ np.append(position, 1.0))[:3]
        slice_index = int(round(k))
        on_grid = (size == (rows, columns) and np.allclose(orientation, axes_lps, atol=1e-3)
                   and max(abs(i), abs(j)) <= IN_PLANE_TOLERANCE_VOXELS
                   and abs(k - slice_index) <= NORMAL_TOLERANCE_VOXELS
                   and 0 <= slice_index < n_slices and slice_index not in by_slice)
        if not on_grid:
            raise InputError(f"{file} does not lie on a slice of the grid read from its series "
                             f"(at voxel {i:.2f}, {j:.2f}, {k:.2f}); no DICOM SEG was made.")
        by_slice[slice_index] = image
    return [by_slice[k] for k in range(n_slices)]


def terminology_codes(terminology: str) -> tuple:
    """A Slicer terminology entry ("context~SCT^123037004^Anatomical Structure~SCT^15776009^
    Pancreas~...") -> (category, type) as highdicom coded concepts."""
    hd, _ = _dicom_libraries()
    codes = [field.split("^") for field in terminology.split("~")[1:3]]
    if len(codes) != 2 or not all(len(code) == 3 and all(code) for code in codes):
        raise ValueError(f"'{terminology}' names no category and type codes.")
    return tuple(hd.sr.CodedConcept(value, scheme, meaning) for scheme, value, meaning in codes)


def _dicom_libraries():
    """(highdicom, pydicom), or the error that says how to install them."""
    try:
        import highdicom
        import pydicom
    except ImportError as error:
        raise MissingDependencyError(
            "Writing a DICOM SEG needs the highdicom package (pip install highdicom); the other result "
            "files are written without it.") from error
    return highdicom, pydicom
