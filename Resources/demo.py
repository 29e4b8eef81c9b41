"""The demo: segment the bundled sample CT and assess the bundled T1/T2 sample pair; write the
results, PNGs and Slicer scenes, and say where they are.

    ./pancreasai.sh demo [--output DIR] [--ct FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for sub in ("PancreasAI", "PancreasSegMoNet", "IPMNRisk"):
    sys.path.insert(0, str(ROOT / sub))

from PancreasAILib.errors import PancreasAIError  # noqa: E402

SAMPLE_SEED = 4242  # a phantom the demo weights never saw in training


def sample_ct(folder: Path) -> Path:
    """The bundled sample: a synthetic abdominal CT made by our own generator."""
    from PancreasAILib.volume import Volume
    from PancreasAILib.volume_io import write_volume
    from PancreasAIPhantoms.ct import make_ct_phantom

    path = folder / "sample_ct_phantom.nii.gz"
    if not path.exists():
        phantom = make_ct_phantom(SAMPLE_SEED)
        write_volume(Volume(phantom.hu, phantom.ijk_to_ras), path)
    return path


def demo_segmentation(ct_path: Path, output: Path) -> list[Path]:
    from PancreasAILib.cli_support import case_name
    from PancreasAILib.scene import save_scene_bundle
    from demo_render import overlay_png
    from PancreasAILib.volume_io import read_volume
    from PancreasSegMoNetLib.cli import output_paths, segment_files
    from PancreasSegMoNetLib.pancreas_segment import build_review_scene

    print(f"\n== PancreasSegMoNet: segmenting {ct_path.name} ==")
    failures = segment_files([ct_path], output, overwrite=True)
    if failures:
        raise PancreasAIError("The demo segmentation failed; see the message above.")
    paths = output_paths(output, case_name(ct_path))
    ct, mask = read_volume(ct_path), read_volume(paths["labelmap"])
    png = overlay_png(ct, mask.array, output / f"{ct_path.name.split('.')[0]}_pancreas.png",
                      window=(-160, 240), title="PancreasSegMoNet demo weights - not for diagnosis")
    scene = build_review_scene(ct, paths["labelmap"], "sample CT")
    mrb = save_scene_bundle(scene, output / f"{ct_path.name.split('.')[0]}_scene.mrb")
    return [ct_path, paths["segmentation"], paths["labelmap"], paths["result"], png, mrb]


def sample_mri_pair(folder: Path) -> tuple[Path, Path, tuple, tuple]:
    """The bundled MRI sample: a synthetic T1/T2 pair with a high-risk IPMN, and its box."""
    from PancreasAIPhantoms.mr import make_mr_phantom
    from PancreasAILib.volume import Volume
    from PancreasAILib.volume_io import write_volume

    phantom = make_mr_phantom(SAMPLE_SEED, risk_class=2)
    t1 = write_volume(Volume(phantom.t1, phantom.ijk_to_ras), folder / "sample_mr_phantom_t1.nii.gz")
    t2 = write_volume(Volume(phantom.t2, phantom.ijk_to_ras), folder / "sample_mr_phantom_t2.nii.gz")
    center, size = phantom.pancreas_box_ras
    return t1, t2, tuple(center), tuple(size)


def demo_ipmn(output: Path) -> list[Path]:
    from IPMNRiskLib.cli import Case, output_paths, run_cases

    t1, t2, center, size = sample_mri_pair(output)
    print("\n== IPMNRisk: assessing the sample T1/T2 pair (synthetic; the phantom has a high-risk IPMN) ==")
    rows = run_cases([Case("sample_mr_phantom", t1, t2, center, size)], output, overwrite=True)
    if rows[0]["status"] != "ok":
        raise PancreasAIError("The demo IPMN assessment failed; see the message above.")
    paths = output_paths(output, "sample_mr_phantom")
    return [t1, t2, *paths.values()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "output" / "demo")
    parser.add_argument("--ct", type=Path, help="a CT of your own instead of the synthetic sample")
    parser.add_argument("--skip-ipmn", action="store_true",
                        help="only segment; without it the IPMN part runs on the bundled MRI sample")
    args = parser.parse_args(argv)

    from PancreasAILib.cli_support import run_command

    return run_command(lambda: run_demo(args.output, args.ct, args.skip_ipmn))


def run_demo(output: Path, ct: Path | None, skip_ipmn: bool) -> int:
    from PancreasAILib.errors import InputError
    from PancreasAILib.output_files import prepare_output_folder, user_path

    output = prepare_output_folder(output)
    if ct is not None and not user_path(ct).exists():
        raise InputError(f"The CT {user_path(ct)} does not exist.")
    ct_path = user_path(ct) if ct is not None else sample_ct(output)
    written = demo_segmentation(ct_path, output)
    if ct is not None:
        written.remove(ct_path)  # the user's own file: read, not written
    if not skip_ipmn:
        if ct is not None:
            print("\n(The IPMN part runs on the bundled synthetic MRI sample; --skip-ipmn leaves it out.)")
        written += demo_ipmn(output)
    print("\nWritten:")
    for path in written:
        print(f"  {path}")
    print("\nOpen the .mrb files in 3D Slicer (File > Add Data) to review, or look at the PNGs.\n"
          "The bundled weights were trained on synthetic phantoms: a demonstration, not a diagnosis.\n"
          "IPMN risk results are for research use only.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
