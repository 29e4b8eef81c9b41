"""A `.seg.nrrd` written without Slicer opens in Slicer's own reader (slicer-core) intact."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from PancreasAILib.segmentation_file import SegmentInfo, write_segmentation
from PancreasAILib.volume import Volume, make_ijk_to_ras

PANCREAS_TERMINOLOGY = (
    "Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure"
    "~SCT^15776009^Pancreas~^^~Anatomic codes - DICOM master list~^^~^^")
PANCREAS = SegmentInfo(1, "pancreas", "Pancreas", (249 / 255, 180 / 255, 111 / 255), PANCREAS_TERMINOLOGY)
CYST = SegmentInfo(2, "cyst", "Cyst", (205 / 255, 205 / 255, 100 / 255))
OBLIQUE = make_ijk_to_ras((0.7, 0.9, 2.5), (10.5, -20.25, 33.0),
                          Rotation.from_euler("xyz", [12, -8, 20], degrees=True).as_matrix())


@pytest.fixture
def labels() -> np.ndarray:
    array = np.zeros((5, 6, 7), np.uint8)
    array[1:4, 2:5, 1:6] = 1  # 45 pancreas voxels
    array[0, 0, :3] = 2  # 3 cyst voxels, on an edge of the grid
    return array


def read_with_slicer(path):
    """The segmentation node Slicer's storage node makes of the file."""
    import slicer

    from PancreasAILib.scene import create_scene

    scene = create_scene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node), f"Slicer could not read {path}"
    return node


def segment_labelmap(node, segment_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(K, J, I) voxels equal to the segment's label value, and the labelmap's image-to-world."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    from PancreasAILib.scene import numpy_matrix

    segment = node.GetSegmentation().GetSegment(segment_id)
    image = segment.GetRepresentation("Binary labelmap")
    extent = image.GetExtent()
    assert extent[::2] == (0, 0, 0), "labelmap does not start at voxel 0"
    dims = [extent[2 * n + 1] - extent[2 * n] + 1 for n in range(3)]
    voxels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    return voxels == segment.GetLabelValue(), numpy_matrix(matrix)


def terminology_tag(segment) -> str:
    import vtk

    value = vtk.reference("")
    assert segment.GetTag(segment.GetTerminologyEntryTagName(), value)
    return str(value)


@pytest.fixture
def written(tmp_path, labels):
    path = write_segmentation(Volume(labels, OBLIQUE), tmp_path / "case.seg.nrrd", [PANCREAS, CYST])
    return read_with_slicer(path)


def test_slicer_reads_every_segment(written):
    assert written.GetSegmentation().GetNumberOfSegments() == 2


def test_segment_names_and_ids_survive(written):
    segmentation = written.GetSegmentation()
    assert segmentation.GetSegment("pancreas").GetName() == "Pancreas"
    assert segmentation.GetSegment("cyst").GetName() == "Cyst"


def test_segment_colours_survive(written):
    segmentation = written.GetSegmentation()
    np.testing.assert_allclose(segmentation.GetSegment("pancreas").GetColor(), PANCREAS.color_rgb, atol=1e-7)
    np.testing.assert_allclose(segmentation.GetSegment("cyst").GetColor(), CYST.color_rgb, atol=1e-7)


def test_terminology_tag_survives(written):
    assert terminology_tag(written.GetSegmentation().GetSegment("pancreas")) == PANCREAS_TERMINOLOGY


def test_voxels_of_each_segment_survive(written, labels):
    for segment, label in (("pancreas", 1), ("cyst", 2)):
        voxels, _ = segment_labelmap(written, segment)
        assert voxels.sum() == (labels == label).sum()
        np.testing.assert_array_equal(voxels, labels == label)


def test_oblique_geometry_survives(written):
    for segment in ("pancreas", "cyst"):
        _, image_to_world = segment_labelmap(written, segment)
        np.testing.assert_allclose(image_to_world, OBLIQUE, rtol=0, atol=1e-9)


def test_boolean_mask_is_written_as_label_one(tmp_path, labels):
    path = write_segmentation(Volume(labels == 1, OBLIQUE), tmp_path / "mask.seg.nrrd", [PANCREAS])
    voxels, _ = segment_labelmap(read_with_slicer(path), "pancreas")
    np.testing.assert_array_equal(voxels, labels == 1)


def test_labels_above_255_are_not_wrapped(tmp_path, labels):
    wide = labels.astype(np.int32) * 300
    segments = [SegmentInfo(300, "pancreas", "Pancreas", PANCREAS.color_rgb),
                SegmentInfo(600, "cyst", "Cyst", CYST.color_rgb)]
    path = write_segmentation(Volume(wide, OBLIQUE), tmp_path / "wide.seg.nrrd", segments)
    node = read_with_slicer(path)
    for segment, label in (("pancreas", 1), ("cyst", 2)):
        voxels, _ = segment_labelmap(node, segment)
        np.testing.assert_array_equal(voxels, labels == label)


@pytest.mark.parametrize("array", [np.full((2, 3, 4), -1), np.full((2, 3, 4), 70000), np.full((2, 3, 4), 0.5)],
                         ids=["negative", "too_large", "fractional"])
def test_impossible_label_values_are_refused(tmp_path, array):
    with pytest.raises(ValueError):
        write_segmentation(Volume(array, np.eye(4)), tmp_path / "bad.seg.nrrd", [PANCREAS])
    assert not (tmp_path / "bad.seg.nrrd").exists()


def header_fields(path) -> dict[str, str]:
    """The `key:=value` fields of a NRRD header, read as text."""
    header = path.read_bytes().split(b"\n\n")[0].decode()
    return dict(line.split(":=", 1) for line in header.splitlines() if ":=" in line)


def test_header_holds_slicer_segmentation_fields(tmp_path, labels):
    """The fields Slicer's .seg.nrrd format defines, for a (5, 6, 7) label map of two segments."""
    path = write_segmentation(Volume(labels, make_ijk_to_ras((1, 1, 1))), tmp_path / "case.seg.nrrd", [PANCREAS, CYST])
    fields = header_fields(path)
    assert fields["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert fields["Segmentation_ContainedRepresentationNames"] == "Binary labelmap|"
    assert fields["Segmentation_ReferenceImageExtentOffset"] == "0 0 0"
    for index, segment in enumerate((PANCREAS, CYST)):
        prefix = f"Segment{index}_"
        assert fields[prefix + "ID"] == segment.segment_id
        assert fields[prefix + "Name"] == segment.name
        assert fields[prefix + "NameAutoGenerated"] == "0"
        assert fields[prefix + "ColorAutoGenerated"] == "0"
        np.testing.assert_allclose([float(c) for c in fields[prefix + "Color"].split()], segment.color_rgb, atol=1e-9)
        assert fields[prefix + "LabelValue"] == str(segment.label)
        assert fields[prefix + "Layer"] == "0"
        assert fields[prefix + "Extent"] == "0 6 0 5 0 4"  # i, j, k ranges of the whole grid
    assert fields["Segment0_Tags"] == "TerminologyEntry:" + PANCREAS_TERMINOLOGY + "|"
    assert fields.get("Segment1_Tags", "") == ""


def stored_type(path) -> np.dtype:
    from PancreasAILib.volume_io import read_volume

    return read_volume(path).array.dtype


@pytest.mark.parametrize("largest, dtype", [(1, np.uint8), (255, np.uint8), (256, np.uint16), (65535, np.uint16)])
def test_labels_are_stored_in_the_smallest_unsigned_type(tmp_path, labels, largest, dtype):
    array = labels.astype(np.int32) * largest  # 0, largest and 2 x largest ...
    array[array > largest] = largest
    segments = [SegmentInfo(largest, "pancreas", "Pancreas", PANCREAS.color_rgb)]
    path = write_segmentation(Volume(array, np.eye(4)), tmp_path / "case.seg.nrrd", segments)
    assert stored_type(path) == dtype


def test_a_float_label_map_of_whole_numbers_is_accepted(tmp_path, labels):
    path = write_segmentation(Volume(labels.astype(np.float32), np.eye(4)), tmp_path / "case.seg.nrrd", [PANCREAS, CYST])
    assert stored_type(path) == np.uint8


def test_an_empty_label_map_takes_its_type_from_the_segments():
    from PancreasAILib.segmentation_file import _label_array

    assert _label_array(np.zeros((0, 6, 7), np.int64), [PANCREAS]).dtype == np.uint8
    assert _label_array(np.zeros((0, 6, 7), np.int64), [SegmentInfo(300, "a", "A", (1, 0, 0))]).dtype == np.uint16
