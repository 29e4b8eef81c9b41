"""Results to PACS: a CT given as a DICOM series gets a DICOM SEG that refers to it, frame by
frame, and holds exactly the label map's voxels; T1 and T2 may be DICOM series too."""

import json
from pathlib import Path

import numpy as np
import pytest

from PancreasAILib.dicom_seg import source_images_by_slice
from PancreasAILib.errors import InputError, MissingDependencyError
from PancreasAILib.volume import Volume, make_ijk_to_ras
from PancreasAILib.volume_io import read_volume, write_volume

STUDY_UID = "1.2.826.0.1.3680043.8.498.71"
FRAME_OF_REFERENCE_UID = "1.2.826.0.1.3680043.8.498.72"
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def rotation(axis: int, degrees: float) -> np.ndarray:
    a, b = [n for n in range(3) if n != axis]
    angle = np.radians(degrees)
    matrix = np.eye(3)
    matrix[a, a] = matrix[b, b] = np.cos(angle)
    matrix[a, b], matrix[b, a] = -np.sin(angle), np.sin(angle)
    return matrix


def oblique(array: np.ndarray, ijk_to_ras: np.ndarray, spacing=(2.96, 2.7, 2.5)) -> Volume:
    """`array` tilted 10 degrees about R and turned 15 degrees about S, with a voxel size
    different along each axis (i, j, k mm)."""
    direction = rotation(2, 15) @ rotation(0, 10) @ (ijk_to_ras[:3, :3] / np.linalg.norm(ijk_to_ras[:3, :3], axis=0))
    return Volume(array, make_ijk_to_ras(spacing, ijk_to_ras[:3, 3], direction))


def write_dicom_series(volume: Volume, folder: Path, series_uid: str, modality: str = "CT", seed: int = 0) -> None:
    """One file per slice, with the patient, study, series and plane tags a PACS gives. File
    names and instance numbers are shuffled, so that only the positions give the slice order."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    sop_class = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}[modality]
    lps = _LPS_FROM_RAS @ volume.ijk_to_ras
    spacing = volume.spacing
    order = np.random.default_rng(seed).permutation(volume.shape[0])
    for k, shuffled in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = f"{series_uid}.{k + 1}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        image = pydicom.Dataset()
        image.file_meta = meta
        image.SOPClassUID, image.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        image.PatientName, image.PatientID, image.PatientBirthDate, image.PatientSex = "Phantom^CT", "PH1", "", "O"
        image.StudyInstanceUID, image.StudyID, image.StudyDate, image.StudyTime = STUDY_UID, "1", "20260101", "120000"
        image.AccessionNumber, image.ReferringPhysicianName = "A1", ""
        image.Modality, image.SeriesInstanceUID, image.SeriesNumber = modality, series_uid, 3
        image.FrameOfReferenceUID, image.PositionReferenceIndicator = FRAME_OF_REFERENCE_UID, ""
        image.InstanceNumber = int(shuffled) + 1
        image.ImagePositionPatient = [f"{v:.6f}" for v in lps[:3, 3] + k * lps[:3, 2]]
        image.ImageOrientationPatient = [f"{v:.8f}" for v in
                                         (*(lps[:3, 0] / spacing[0]), *(lps[:3, 1] / spacing[1]))]
        image.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]  # between rows (j), between columns (i)
        image.SliceThickness = f"{spacing[2]:.6f}"
        image.Rows, image.Columns = volume.shape[1:3]
        image.SamplesPerPixel, image.PhotometricInterpretation = 1, "MONOCHROME2"
        image.BitsAllocated, image.BitsStored, image.HighBit, image.PixelRepresentation = 16, 16, 15, 1
        image.RescaleIntercept, image.RescaleSlope = "0", "1"
        image.PixelData = np.ascontiguousarray(volume.array[k], dtype="<i2").tobytes()
        image.save_as(folder / f"IM{shuffled:04d}.dcm", enforce_file_format=True)


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory):
    """An oblique, anisotropic phantom CT written as a DICOM series: (folder, the volume)."""
    from PancreasAIPhantoms.ct import make_ct_phantom

    phantom = make_ct_phantom(seed=1000, shape=(32, 128, 128))  # the pancreas in slices 0-21 only
    volume = oblique(phantom.hu, phantom.ijk_to_ras)
    folder = tmp_path_factory.mktemp("dicom") / "ct_case"
    write_dicom_series(volume, folder, "1.2.826.0.1.3680043.8.498.73")
    return folder, volume


@pytest.fixture(scope="module")
def dicom_case_result(ct_series, tmp_path_factory):
    """`pancreas-seg segment` on the series with the demo weights: (output folder, the SEG read back)."""
    import highdicom

    from PancreasSegMoNetLib import cli

    folder, _ = ct_series
    out = tmp_path_factory.mktemp("seg_out")
    assert cli.main(["segment", str(folder), "--output", str(out), "--device", "cpu", "--engine", "pytorch",
                     "--batch-size", "8"]) == 0
    return out, highdicom.seg.segread(out / "ct_case_pancreas.dcm")


def test_the_series_reads_back_as_the_oblique_volume_written(ct_series):
    folder, volume = ct_series
    back = read_volume(folder)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.ijk_to_ras, volume.ijk_to_ras, atol=1e-4)


def test_source_images_are_ordered_by_position_not_by_file_name(ct_series):
    folder, volume = ct_series
    images = source_images_by_slice(read_volume(folder), folder)
    lps = _LPS_FROM_RAS @ volume.ijk_to_ras
    positions = np.array([[float(v) for v in image.ImagePositionPatient] for image in images])
    np.testing.assert_allclose(positions, lps[:3, 3] + np.arange(volume.shape[0])[:, None] * lps[:3, 2], atol=1e-4)
    assert [image.InstanceNumber for image in images] != sorted(image.InstanceNumber for image in images)


def test_a_grid_that_is_not_the_series_is_refused(ct_series):
    folder, volume = ct_series
    shifted = volume.slab(1, volume.shape[0])
    with pytest.raises(InputError, match="image files for 31 slices"):
        source_images_by_slice(shifted, folder)
    moved = Volume(volume.array, volume.ijk_to_ras @ make_ijk_to_ras((1, 1, 1), (0.5, 0, 0)))
    with pytest.raises(InputError, match="does not lie on a slice of the grid"):
        source_images_by_slice(moved, folder)


@pytest.mark.slow
def test_dicom_seg_refers_to_the_source_series_and_its_frame_of_reference(ct_series, dicom_case_result):
    folder, _ = ct_series
    _, seg = dicom_case_result
    assert seg.FrameOfReferenceUID == FRAME_OF_REFERENCE_UID
    assert seg.StudyInstanceUID == STUDY_UID
    assert [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence] == ["1.2.826.0.1.3680043.8.498.73"]
    assert seg.SegmentationType == "BINARY"


@pytest.mark.slow
def test_each_frame_refers_to_the_ct_image_at_its_position(ct_series, dicom_case_result):
    import pydicom

    folder, _ = ct_series
    _, seg = dicom_case_result
    sources = {image.SOPInstanceUID: image for image in
               (pydicom.dcmread(path, stop_before_pixels=True) for path in folder.iterdir())}
    frames = seg.PerFrameFunctionalGroupsSequence
    assert 0 < len(frames) < len(sources)  # empty slices are left out
    for frame in frames:
        source_uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, [float(v) for v in sources[source_uid].ImagePositionPatient],
                                   atol=1e-4)


@pytest.mark.slow
def test_dicom_seg_voxels_equal_the_label_map(dicom_case_result):
    """Each frame is put on the CT grid by its own position, as a PACS viewer places it."""
    out, seg = dicom_case_result
    label = read_volume(out / "ct_case_pancreas.nii.gz")
    lps_to_ijk = np.linalg.inv(_LPS_FROM_RAS @ label.ijk_to_ras)
    on_grid = np.zeros_like(label.array)
    for frame, pixels in zip(seg.PerFrameFunctionalGroupsSequence, seg.pixel_array):
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        i, j, k = (lps_to_ijk @ np.append(position, 1.0))[:3]
        np.testing.assert_allclose([i, j, k], [0, 0, round(k)], atol=1e-3)
        on_grid[round(k)] = pixels
    assert label.array.any()
    np.testing.assert_array_equal(on_grid, label.array)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage


@pytest.mark.slow
def test_dicom_seg_names_the_pancreas_and_the_model(ct_series, dicom_case_result, demo_monet_card):
    folder, _ = ct_series
    out, seg = dicom_case_result
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "Pancreas"
    assert (segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue,
            segment.SegmentedPropertyTypeCodeSequence[0].CodeValue) == ("123037004", "15776009")
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (demo_monet_card.name, demo_monet_card.sha256)
    record = json.loads((out / "ct_case_pancreas.json").read_text(encoding="utf-8"))
    assert (record["dicom_seg"], record["input"]) == ("ct_case_pancreas.dcm", str(folder.resolve()))


def test_a_nifti_ct_gets_no_dicom_seg(tmp_path, ct_series, random_monet_card):
    from PancreasSegMoNetLib import cli

    _, volume = ct_series
    ct_file = write_volume(volume.slab(0, 4), tmp_path / "ct_case.nii.gz")
    assert cli.segment_files([ct_file], tmp_path / "out", random_monet_card.weights_path, device="cpu",
                             engine="pytorch", batch_size=8) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "ct_case_pancreas.json", "ct_case_pancreas.nii.gz", "ct_case_pancreas.seg.nrrd"]
    assert "dicom_seg" not in json.loads((tmp_path / "out" / "ct_case_pancreas.json").read_text(encoding="utf-8"))


class Messages:
    """A sink for a run in this process that keeps its messages."""

    def __init__(self):
        self.lines = []

    def progress(self, fraction, status):
        pass

    def message(self, text):
        self.lines.append(text)


def segment_small_series(tmp_path, volume, card) -> Messages:
    """`segment_files` on the first 4 slices of `volume` as a DICOM series; its messages."""
    from PancreasSegMoNetLib import cli

    folder = tmp_path / "ct_case"
    write_dicom_series(volume.slab(0, 4), folder, "1.2.826.0.1.3680043.8.498.74")
    messages = Messages()
    assert cli.segment_files([folder], tmp_path / "out", card.weights_path, device="cpu", sink=messages,
                             engine="pytorch", batch_size=8) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "ct_case_pancreas.json", "ct_case_pancreas.nii.gz", "ct_case_pancreas.seg.nrrd"]
    return messages


def test_without_highdicom_the_other_files_are_written_with_a_warning(tmp_path, ct_series, random_monet_card,
                                                                      monkeypatch):
    from PancreasAILib import dicom_seg

    def missing():
        raise MissingDependencyError("Writing a DICOM SEG needs the highdicom package (pip install highdicom).")

    monkeypatch.setattr(dicom_seg, "_dicom_libraries", missing)
    messages = segment_small_series(tmp_path, ct_series[1], random_monet_card)
    assert any("warning" in line and "pip install highdicom" in line for line in messages.lines)


def test_a_series_the_seg_cannot_refer_to_spoils_only_the_seg(tmp_path, ct_series, random_monet_card, monkeypatch):
    from PancreasAILib import dicom_seg

    def off_grid(mask, folder):
        raise InputError(f"{folder}/IM0001.dcm does not lie on a slice of the grid read from its series.")

    monkeypatch.setattr(dicom_seg, "source_images_by_slice", off_grid)
    messages = segment_small_series(tmp_path, ct_series[1], random_monet_card)
    assert any(line.startswith("ct_case: warning:") and "does not lie on a slice" in line for line in messages.lines)


# --- IPMN: T1 and T2 as DICOM series ---------------------------------------------------------

@pytest.fixture(scope="module")
def mr_cases(tmp_path_factory):
    """The small MR phantom as DICOM series (T1 on a coarser in-plane grid than T2, both
    oblique) and as NIfTI files of the very same volumes: {"dicom"|"nifti": (t1, t2)}, region."""
    from PancreasAIPhantoms.mr import make_mr_phantom

    p = make_mr_phantom(seed=5, risk_class=2, shape=(16, 112, 112), spacing=(2.0, 2.0, 4.0))
    t2 = oblique(np.round(p.t2).astype(np.int16), p.ijk_to_ras, spacing=(2.0, 2.0, 4.0))
    t1 = oblique(np.round(p.t1[:, ::2, ::2]).astype(np.int16), p.ijk_to_ras, spacing=(4.0, 4.0, 4.0))
    folder = tmp_path_factory.mktemp("mr")
    write_dicom_series(t1, folder / "p1_t1", "1.2.826.0.1.3680043.8.498.81", modality="MR", seed=1)
    write_dicom_series(t2, folder / "p1_t2", "1.2.826.0.1.3680043.8.498.82", modality="MR", seed=2)
    nifti = tuple(write_volume(v, folder / "nifti" / f"p1_{n}.nii.gz") for n, v in (("t1", t1), ("t2", t2)))
    region = tuple(",".join(f"{v:.3f}" for v in values) for values in p.pancreas_box_ras)
    return {"dicom": (folder / "p1_t1", folder / "p1_t2"), "nifti": nifti}, region


def assess(t1: Path, t2: Path, region, out: Path, card, *case) -> dict:
    from IPMNRiskLib import cli

    center, size = region
    assert cli.main(["assess", "--t1", str(t1), "--t2", str(t2), f"--roi-center={center}", f"--roi-size={size}",
                     "--output", str(out), "--model", str(card.weights_path), "--device", "cpu", "--no-tta",
                     "--no-scene", *case]) == 0
    (result,) = out.glob("*_ipmn_result.json")
    return json.loads(result.read_text(encoding="utf-8"))


def test_dicom_t1_and_t2_folders_read_as_their_volumes(mr_cases):
    inputs, _ = mr_cases
    for dicom, nifti in zip(inputs["dicom"], inputs["nifti"]):
        from_dicom, from_nifti = read_volume(dicom), read_volume(nifti)
        np.testing.assert_array_equal(from_dicom.array, from_nifti.array)
        np.testing.assert_allclose(from_dicom.ijk_to_ras, from_nifti.ijk_to_ras, atol=1e-4)
    assert read_volume(inputs["dicom"][0]).shape != read_volume(inputs["dicom"][1]).shape


@pytest.mark.slow
def test_ipmn_assess_on_dicom_folders_equals_assess_on_the_same_volumes_as_files(tmp_path, mr_cases,
                                                                                random_vit_card):
    inputs, region = mr_cases
    from_dicom = assess(*inputs["dicom"], region, tmp_path / "dicom", random_vit_card)
    from_nifti = assess(*inputs["nifti"], region, tmp_path / "nifti", random_vit_card)
    assert from_dicom["case"] == "p1_t2"  # named after the T2 folder, as after a T2 file
    np.testing.assert_allclose(from_dicom["probabilities"], from_nifti["probabilities"], atol=1e-6)
    heat_map = read_volume(tmp_path / "dicom" / "p1_t2_ipmn_heatmap.nrrd")
    np.testing.assert_allclose(heat_map.ijk_to_ras, read_volume(inputs["dicom"][1]).ijk_to_ras, atol=1e-4)


def test_a_t2_folder_given_as_dot_names_the_case_after_the_folder(mr_cases, monkeypatch, tmp_path):
    from IPMNRiskLib import cli

    inputs, (center, size) = mr_cases
    named = []
    monkeypatch.setattr(cli, "run_cases", lambda cases, *args, **kwargs: named.extend(c.name for c in cases) or [])
    monkeypatch.chdir(inputs["dicom"][1])
    cli.main(["assess", "--t1", "../p1_t1", "--t2", ".", f"--roi-center={center}", f"--roi-size={size}",
              "--output", str(tmp_path / "out")])
    assert named == ["p1_t2"]


@pytest.mark.slow
def test_ipmn_batch_csv_takes_dicom_folders(tmp_path, mr_cases, random_vit_card):
    import csv

    from IPMNRiskLib import cli

    inputs, (center, size) = mr_cases
    table = tmp_path / "cases.csv"
    with open(table, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["t1", "t2", "roi_center", "roi_size"])
        writer.writerow([*inputs["dicom"], center, size])
    assert cli.main(["batch", str(table), "--output", str(tmp_path / "out"), "--model",
                     str(random_vit_card.weights_path), "--device", "cpu", "--no-tta", "--no-scene"]) == 0
    with open(tmp_path / "out" / "results.csv", newline="", encoding="utf-8") as stream:
        (row,) = csv.DictReader(stream)
    assert (row["case"], row["status"]) == ("p1_t2", "ok")


def test_an_empty_mask_still_gives_a_dicom_seg_with_every_frame(ct_series, demo_monet_card):
    from PancreasAILib.dicom_seg import dicom_segmentation
    from PancreasSegMoNetLib.cli import PANCREAS_SEGMENT

    folder, _ = ct_series
    ct = read_volume(folder)
    seg = dicom_segmentation(ct.with_array(np.zeros(ct.shape, np.uint8)), folder, PANCREAS_SEGMENT, demo_monet_card)
    assert seg.NumberOfFrames == ct.shape[0] and not seg.pixel_array.any()
