"""Write calibration cases for the bf16 agreement checks of the demo models (phantoms).

    .venv/bin/python Resources/make_calibration_data.py FOLDER
    .venv/bin/pancreas-seg check-precision FOLDER/ct --model PATH/TO/monet.json
    .venv/bin/ipmn-risk check-precision --cases FOLDER/mr/cases.csv --model PATH/TO/vit.json

FOLDER/ct holds CT phantoms (NIfTI, HU) of seeds the demo MoNet was not trained on, at a
clinical in-plane size; FOLDER/mr holds T1/T2 phantoms of each risk class with a `cases.csv`
as `ipmn-risk batch` reads it (region = the phantom's expert box). The output is the same on
every run. A site checks its own weights on its own cases instead: any CTs, any case list.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from PancreasAILib.volume import Volume
from PancreasAILib.volume_io import write_volume
from PancreasAIPhantoms.ct import make_ct_phantom
from PancreasAIPhantoms.mr import make_mr_phantom

#: Held out: the demo MoNet was trained on CT seeds 0-119, the demo ViT on MR seeds 0-599 (validation 1000-1049).
CT_SEEDS = (5001, 5002, 5003)
CT_SHAPE = (40, 384, 384)
MR_CASES = ((6001, 0), (6002, 1), (6003, 2), (6004, 2))


def write_ct_cases(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in CT_SEEDS:
        phantom = make_ct_phantom(seed, shape=CT_SHAPE)
        paths.append(write_volume(Volume(phantom.hu, phantom.ijk_to_ras), folder / f"ct_{seed}.nii.gz"))
    return paths


def write_mr_cases(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed, risk_class in MR_CASES:
        phantom = make_mr_phantom(seed, risk_class)
        name = f"mr_{seed}_class{risk_class}"
        for sequence in ("t1", "t2"):
            write_volume(Volume(getattr(phantom, sequence), phantom.ijk_to_ras), folder / f"{name}_{sequence}.nii.gz")
        centre, size = phantom.pancreas_box_ras
        rows.append({"case": name, "t1": f"{name}_t1.nii.gz", "t2": f"{name}_t2.nii.gz",
                     "roi_center": ",".join(f"{value:.3f}" for value in centre),
                     "roi_size": ",".join(f"{value:.3f}" for value in size)})
    path = folder / "cases.csv"
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    for path in write_ct_cases(args.folder / "ct"):
        print(path)
    print(write_mr_cases(args.folder / "mr"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
