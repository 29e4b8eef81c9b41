"""Write the small sample volumes the module self-tests use, and print their SHA256.

    .venv/bin/python Resources/make_sample_data.py

The phantoms are made by our own generator (PancreasAIPhantoms), which is not shipped: the
extension ships these files instead. The output is the same on every run; paste a changed
SHA256 into PancreasAI/PancreasAILib/sample_data.py.

- PancreasSegMoNet/Resources/SampleData: a (16, 128, 128) CT phantom (int16 HU) and its
  pancreas as a `.seg.nrrd` (one segment, "Pancreas").
- IPMNRisk/Resources/SampleData: a high-risk T1/T2 MR phantom, its whole field of view (the
  automatic region segments the pancreas in it; the classifier only samples inside the box)
  rounded to int16 to keep the files small, and the box as a Slicer ROI (`.mrk.json`, written by Slicer's own markups
  writer from slicer-core, so Slicer reads it as it wrote it).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for sub in ("PancreasAI", "PancreasSegMoNet", "IPMNRisk", "Resources"):
    sys.path.insert(0, str(ROOT / sub))

from PancreasAILib import sample_data  # noqa: E402
from PancreasAILib.segmentation_file import SegmentInfo, write_segmentation  # noqa: E402
from PancreasAILib.volume import Volume  # noqa: E402
from PancreasAILib.volume_io import write_volume  # noqa: E402

CT_SEED, CT_SHAPE = 1000, (16, 128, 128)
MR_SEED, MR_RISK_CLASS = 2000, 2


def write_ct_sample(folder: Path) -> list[Path]:
    from PancreasAIPhantoms.ct import make_ct_phantom
    from PancreasSegMoNetLib.pancreas_segment import (PANCREAS_TERMINOLOGY, SEGMENT_COLOR, SEGMENT_ID,
                                                      SEGMENT_NAME)

    phantom = make_ct_phantom(seed=CT_SEED, shape=CT_SHAPE)
    ct = write_volume(Volume(phantom.hu, phantom.ijk_to_ras), folder / sample_data.CT_VOLUME_FILE)
    pancreas = Volume(phantom.pancreas.astype(np.uint8), phantom.ijk_to_ras)
    segment = SegmentInfo(1, SEGMENT_ID, SEGMENT_NAME, SEGMENT_COLOR, PANCREAS_TERMINOLOGY)
    mask = write_segmentation(pancreas, folder / sample_data.CT_PANCREAS_FILE, [segment])
    return [ct, mask]


def write_mr_sample(folder: Path) -> list[Path]:
    from PancreasAIPhantoms.mr import make_mr_phantom

    phantom = make_mr_phantom(seed=MR_SEED, risk_class=MR_RISK_CLASS)
    center, size = (np.asarray(v, float) for v in phantom.pancreas_box_ras)

    def rounded(array: np.ndarray) -> Volume:
        return Volume(np.round(array).astype(np.int16), phantom.ijk_to_ras)

    t1 = write_volume(rounded(phantom.t1), folder / sample_data.MR_T1_FILE)
    t2 = write_volume(rounded(phantom.t2), folder / sample_data.MR_T2_FILE)
    region = _write_roi(folder / sample_data.MR_REGION_FILE, center, size)
    return [t1, t2, region]


def _write_roi(path: Path, center: np.ndarray, size: np.ndarray) -> Path:
    import slicer

    scene = slicer.vtkMRMLScene()
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", sample_data.MR_REGION_NODE)
    roi.SetCenter([float(v) for v in center])
    roi.SetSize([float(v) for v in size])
    storage = slicer.vtkMRMLMarkupsROIJsonStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    if not storage.WriteData(roi):
        raise RuntimeError(f"Slicer's markups writer could not write {path}")
    return path


def main() -> int:
    paths = []
    for module, writer in (("PancreasSegMoNet", write_ct_sample), ("IPMNRisk", write_mr_sample)):
        folder = ROOT / module / "Resources" / "SampleData"
        folder.mkdir(parents=True, exist_ok=True)
        paths += writer(folder)
    for path in paths:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"{digest}  {path.stat().st_size:>8,} bytes  {path.relative_to(ROOT)}")
    print(f"{sum(path.stat().st_size for path in paths):,} bytes in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
