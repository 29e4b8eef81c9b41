"""The demo: segment the bundled sample CT (and assess the sample MRI pair when IPMNRisk is
ready), write results, a PNG and a Slicer scene, and say where they are.

    ./pancreasai.sh demo [--output DIR] [--ct FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for sub in ("PancreasAI", "PancreasSegMoNet", "IPMNRisk"):
    sys.path.insert(0, str(ROOT / sub))

SAMPLE_SEED = 4242  # a phantom the demo weights never saw in training


def sample_ct(folder: Path) -> Path:
    """The bundled sample: a synthetic abdominal CT made by our own generator."""
    from PancreasAILib.volume import Volume
    from PancreasAILib.volume_io import write_volume
    from PancreasSegMoNetLib.phantom import make_ct_phantom

    path = folder / "sample_ct_phantom.nii.gz"
    if not path.exists():
        phantom = make_ct_phantom(SAMPLE_SEED)
        write_volume(Volume(phantom.hu, phantom.ijk_to_ras), path)
    return path


def demo_segmentation(ct_path: Path, output: Path) -> list[Path]:
    from PancreasAILib.mrml import add_volume_node, create_scene, save_scene_bundle
    from PancreasAILib.render import overlay_png
    from PancreasAILib.volume_io import read_volume
    from PancreasSegMoNetLib.cli import output_paths, segment_files
    from PancreasSegMoNetLib.mrml import import_mask_file

    print(f"\n== PancreasSegMoNet: segmenting {ct_path.name} ==")
    failures = segment_files([ct_path], output, overwrite=True)
    if failures:
        raise SystemExit("The demo segmentation failed; see the message above.")
    seg_path, label_path = output_paths(ct_path, output)
    ct, mask = read_volume(ct_path), read_volume(label_path)
    png = overlay_png(ct, mask.array, output / f"{ct_path.name.split('.')[0]}_pancreas.png",
                      window=(-160, 240), title="PancreasSegMoNet demo weights - not for diagnosis")
    scene = create_scene()
    ct_node = add_volume_node(scene, ct, "sample CT")
    segmentation = import_mask_file(ct_node, label_path)
    segmentation.SetName("sample CT pancreas")
    mrb = save_scene_bundle(scene, output / f"{ct_path.name.split('.')[0]}_scene.mrb")
    return [seg_path, label_path, png, mrb]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "output" / "demo")
    parser.add_argument("--ct", type=Path, help="a CT of your own instead of the synthetic sample")
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    ct_path = args.ct or sample_ct(args.output)
    written = demo_segmentation(ct_path, args.output)
    print("\nWritten:")
    for path in written:
        print(f"  {path}")
    print("\nOpen the .mrb in 3D Slicer (File > Add Data) to review, or look at the PNG.\n"
          "The bundled weights were trained on synthetic phantoms: a demonstration, not a diagnosis.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
