"""How well the automatic region (IPMNRiskLib.automatic_region) boxes the true pancreas of MR
phantoms, against the box an expert would draw.

    python Resources/Training/evaluate_automatic_region.py --output DIR
        [--segmentation-model NAME_OR_PATH] [--phantoms 12] [--first-seed 7000]

Cases: MR phantoms (PancreasAIPhantoms.mr) of seeds first-seed ... first-seed + N - 1, the risk
classes in turn (normal, low-risk, high-risk); seeds from 7000 were never used to train the
bundled MR demo model (seeds 0-59). The region is found on T2 as IPMNRisk finds it.

Per case:
  dice            the segmentation's Dice with the true pancreas (on T2's grid)
  pancreas_inside the share of the true pancreas's voxels whose centres lie inside the found box
                  (1: the ViT's crop holds the whole gland)
  box_iou         the intersection over union of the found box and the phantom's expert box
                  (the true pancreas's box with a 4-12 mm margin, the box a radiologist draws)
  centre_mm       the distance between the two boxes' centres
  found_ml, true_ml  the segmentation's and the true pancreas's volumes
A case where nothing is found counts with Dice, pancreas_inside and box_iou 0.

Writes DIR/automatic_region.csv (one row per case), DIR/automatic_region.md (mean +- sd, the
worst case, run time) and DIR/automatic_region.png (the overlap figure: per case, the T2 slice
through the middle of the true pancreas with its outline, the found box and the expert's box),
and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

# trainkit first: importing it says how to install the project's packages when they are missing.
import trainkit  # noqa: F401

from PancreasAILib.errors import InputError
from PancreasAILib.volume import Volume
from IPMNRiskLib.grids import RegionBox

from segmentation_metrics import dice_coefficient

COLUMNS = ["case", "seed", "risk_class", "dice", "pancreas_inside", "box_iou", "centre_mm", "found_ml", "true_ml",
           "seconds", "message"]
METRICS = ("dice", "pancreas_inside", "box_iou", "centre_mm")
CSV_FILE, TABLE_FILE, FIGURE_FILE = "automatic_region.csv", "automatic_region.md", "automatic_region.png"


def box_iou(a: RegionBox, b: RegionBox) -> float:
    """Intersection over union of two axis-aligned RAS boxes."""
    low = np.maximum(np.subtract(a.center_ras, np.divide(a.size_mm, 2)), np.subtract(b.center_ras,
                                                                                     np.divide(b.size_mm, 2)))
    high = np.minimum(np.add(a.center_ras, np.divide(a.size_mm, 2)), np.add(b.center_ras, np.divide(b.size_mm, 2)))
    overlap = float(np.prod(np.clip(high - low, 0, None)))
    return overlap / (float(np.prod(a.size_mm)) + float(np.prod(b.size_mm)) - overlap)


def share_inside(mask: Volume, box: RegionBox) -> float:
    """The share of the mask's voxels whose centres lie inside `box`."""
    kji = np.argwhere(np.asarray(mask.array) > 0)
    if not len(kji):
        return 0.0
    ras = mask.ijk_to_ras_points(kji[:, ::-1].astype(float))
    low = np.subtract(box.center_ras, np.divide(box.size_mm, 2))
    high = np.add(box.center_ras, np.divide(box.size_mm, 2))
    return float(np.mean(np.all((ras >= low) & (ras <= high), axis=1)))


def measure_case(name: str, seed: int, phantom, model: Optional[str], device: str = "cpu") -> tuple[dict, dict]:
    """One row of the table for one MR phantom, and what its panel of the figure shows."""
    from IPMNRiskLib.automatic_region import find_region

    t2 = Volume(phantom.t2, phantom.ijk_to_ras)
    truth = Volume(phantom.pancreas.astype(np.uint8), phantom.ijk_to_ras)
    expert = RegionBox(*phantom.pancreas_box_ras)
    voxel_ml = float(np.prod(truth.spacing)) / 1000.0
    row = {"case": name, "seed": seed, "risk_class": phantom.risk_class,
           "true_ml": round(float(truth.array.sum()) * voxel_ml, 2), "message": ""}
    started = time.perf_counter()
    panel = {"name": name, "t2": t2, "truth": truth, "expert": expert, "found": None}
    try:
        found = find_region(t2, model, device=device, engine="pytorch")
    except InputError as error:
        return {**row, "dice": 0.0, "pancreas_inside": 0.0, "box_iou": 0.0, "centre_mm": "", "found_ml": 0.0,
                "seconds": round(time.perf_counter() - started, 2), "message": str(error)}, panel
    panel["found"] = found.region
    return {**row, "dice": dice_coefficient(found.mask.array, truth.array),
            "pancreas_inside": share_inside(truth, found.region), "box_iou": box_iou(found.region, expert),
            "centre_mm": float(np.linalg.norm(np.subtract(found.region.center_ras, expert.center_ras))),
            "found_ml": round(found.volume_ml, 2), "seconds": round(time.perf_counter() - started, 2)}, panel


def _box_on_slice(box: RegionBox, volume: Volume) -> tuple[float, float, float, float]:
    """(i low, j low, i high, j high) in voxel units of a box around `volume`'s axes (the
    phantoms' boxes are aligned with their grid)."""
    ijk = volume.ras_to_ijk_points(box.corners_ras())
    return float(ijk[:, 0].min()), float(ijk[:, 1].min()), float(ijk[:, 0].max()), float(ijk[:, 1].max())


def write_overlap_figure(path: Path, panels: list[dict], model: str) -> Path:
    """Per case: the T2 slice through the middle of the true pancreas, the pancreas's outline
    (green), the expert's box (white, dashed) and the found box (red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), dpi=100, squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, panel in zip(axes.ravel(), panels):
        t2, truth = panel["t2"], panel["truth"]
        k = int(round(np.mean(np.flatnonzero(truth.array.any(axis=(1, 2))))))
        axis.imshow(t2.array[k], cmap="gray", origin="lower")
        axis.contour(truth.array[k], levels=[0.5], colors="lime", linewidths=1.0)
        for box, style in ((panel["expert"], {"edgecolor": "white", "linestyle": "--"}),
                           (panel["found"], {"edgecolor": "red", "linestyle": "-"})):
            if box is None:
                continue
            i0, j0, i1, j1 = _box_on_slice(box, t2)
            axis.add_patch(Rectangle((i0, j0), i1 - i0, j1 - j0, fill=False, linewidth=1.2, **style))
        axis.set_title(panel["name"] + ("" if panel["found"] is not None else " (nothing found)"), fontsize=8)
    figure.suptitle(f"{model}: pancreas (green), expert box (white, dashed), automatic box (red); "
                    "voxel axes", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def summary_table(rows: list[dict], model: str, seconds: float) -> str:
    """Markdown: mean +- sd of each metric, the worst case, how long it took."""
    lines = [f"Automatic region ({model}) on {len(rows)} MR phantoms", "",
             "| metric | mean +- sd | worst (case) |", "|---|---|---|"]
    for metric in METRICS:
        values = [(float(r[metric]), r["case"]) for r in rows if r[metric] != ""]
        if not values:
            lines.append(f"| {metric} | n/a | n/a |")
            continue
        numbers = np.array([v for v, _ in values])
        worst = max(values) if metric == "centre_mm" else min(values)
        lines.append(f"| {metric} | {numbers.mean():.3f} +- {numbers.std():.3f} | {worst[0]:.3f} ({worst[1]}) |")
    failed = [r["case"] for r in rows if r["message"]]
    lines += ["", f"Nothing found in: {', '.join(failed) or 'none'}. {seconds:.0f} s in all."]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", "-o", required=True, type=Path)
    parser.add_argument("--segmentation-model", help="PancreasSegMoNet registry name or .safetensors path of an MR "
                                                     "model (default: the first MR model installed)")
    parser.add_argument("--phantoms", type=int, default=12, help="how many MR phantoms (default: 12)")
    parser.add_argument("--first-seed", type=int, default=7000, help="the first phantom's seed (default: 7000)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    from PancreasAILib.cli_support import run_command

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.phantoms < 1:
        parser.error("--phantoms must be at least 1.")
    return run_command(lambda: evaluate(args))


def evaluate(args: argparse.Namespace) -> int:
    from PancreasAIPhantoms.mr import make_mr_phantom
    from IPMNRiskLib.automatic_region import segmentation_card

    card = segmentation_card(args.segmentation_model)  # a missing or CT model stops here, before any work
    started = time.perf_counter()
    rows, panels = [], []
    for index in range(args.phantoms):
        seed = args.first_seed + index
        phantom = make_mr_phantom(seed, index % 3)
        row, panel = measure_case(f"mr-phantom-{seed}", seed, phantom, args.segmentation_model, args.device)
        rows.append(row)
        panels.append(panel)
        print(f"{rows[-1]['case']}: Dice {rows[-1]['dice']:.3f}, pancreas inside {rows[-1]['pancreas_inside']:.3f}, "
              f"box IoU {rows[-1]['box_iou']:.3f}", flush=True)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    with open(output / CSV_FILE, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows)
    write_overlap_figure(output / FIGURE_FILE, panels, card.name)
    table = summary_table(rows, card.name, time.perf_counter() - started)
    (output / TABLE_FILE).write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
