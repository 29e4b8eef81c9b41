"""Measure the IPMN heat maps instead of only drawing them: how faithful each explanation
method is to the model, and whether it points at the lesion and the pancreas.

    python Resources/Training/evaluate_explanations.py --output DIR
        [--model NAME_OR_PATH] [--phantoms 12] [--first-seed 6000] [--step 4]
        [--baseline mean|zero] [--no-tta]

Cases: MR phantoms (PancreasAIPhantoms.mr), patient seeds first-seed ... first-seed + N - 1,
the classes in turn (normal, low-risk, high-risk); the region is the phantom's pancreas box.
Seeds from 6000 were never used to train the bundled demo model. Model: a registry name or a
.safetensors path (default: the registry's first, the demo ViT), run on PyTorch in float32.

Methods: "rollout" (attention rollout, the paper's), "gradient-rollout" (Chefer et al. 2021,
of the predicted class) and "random" (a seeded random map: the floor a method must beat).
Maps are made as `assess` makes them (over the 8 test-time views unless --no-tta).

Metrics, per case and method, on the 12 x 12 patch grid of the 2 x 192 x 192 input:
  deletion_auc   the probability of the predicted class as the most relevant patches are
                 removed, `step` patches at a time (0, step, ..., 144 removed), area under that
                 curve over the removed fraction 0..1 (trapezoid). Lower is more faithful.
  insertion_auc  the same as patches are revealed on an all-removed input. Higher is more
                 faithful.
                 "Removed" sets a 16 x 16 patch of both channels to the baseline: each channel's
                 mean over the whole 192 x 192 grid (--baseline mean, the default: no new
                 intensity appears) or 0 (--baseline zero). The curves use the one original view.
  lesion_mass    the share of the (non-negative) map inside the cyst mask (cases with a lesion
                 only; empty for normal cases), pancreas_mass the same inside the pancreas mask.
  lesion_hit, pancreas_hit  the pointing game: 1 when the map's peak patch is inside the mask.
Masks reach the patch grid exactly as T2 does (the same crop plan, crop stack, central 9 slices
and tiling); a patch is inside a mask when at least half its 16 x 16 pixels are.

Writes DIR/explanations.csv (one row per case and method) and DIR/explanations.md (mean +- sd
per method, run time), and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

# trainkit first: importing it says how to install the project's packages when they are missing.
import trainkit  # noqa: F401

from PancreasAILib.volume import Volume
from IPMNRiskLib.grids import RegionBox, crop_box_stack, tile_grid
from IPMNRiskLib.network import PATCH_GRID, PATCH_SIZE

METHODS = ("rollout", "gradient-rollout", "random")
BASELINES = ("mean", "zero")
COLUMNS = ["case", "seed", "true_class", "predicted_class", "probability", "method", "deletion_auc",
           "insertion_auc", "lesion_mass", "lesion_hit", "pancreas_mass", "pancreas_hit", "map_seconds"]
METRICS = ("deletion_auc", "insertion_auc", "lesion_mass", "lesion_hit", "pancreas_mass", "pancreas_hit")
CSV_FILE, TABLE_FILE = "explanations.csv", "explanations.md"


# --- masks on the patch grid ---------------------------------------------------------------------

def mask_patch_grid(mask: Volume, plan, window: np.ndarray) -> np.ndarray:
    """A mask on T2's grid (K, J, I) -> (12, 12) bool: cut like T2 (the crop plan's reorientation
    and box, resized to 64 x 64 per slice), the central 9 slices tiled 3 x 3 into 192 x 192, and
    a patch inside when at least half of its 16 x 16 pixels are."""
    fraction = Volume(np.asarray(mask.array, np.float32), mask.ijk_to_ras)
    stack = crop_box_stack(plan.reorientation.apply_volume(fraction), plan.box).array
    grid = tile_grid(stack[window])
    return patch_fractions(grid) >= 0.5


def patch_fractions(grid: np.ndarray) -> np.ndarray:
    """(192, 192) -> (12, 12): the mean of each 16 x 16 patch."""
    rows, cols = PATCH_GRID
    return grid.reshape(rows, PATCH_SIZE, cols, PATCH_SIZE).mean(axis=(1, 3))


# --- the metrics --------------------------------------------------------------------------------

def curve_auc(fractions: np.ndarray, probabilities: np.ndarray) -> float:
    """Area under a curve sampled at `fractions` (0..1, increasing), by the trapezoid rule."""
    fractions, probabilities = np.asarray(fractions, float), np.asarray(probabilities, float)
    return float(np.sum((fractions[1:] - fractions[:-1]) * (probabilities[1:] + probabilities[:-1]) / 2.0))


def relevance_order(relevance_map: np.ndarray) -> np.ndarray:
    """Patch indices (row-major on the 12 x 12 grid), most relevant first; ties in index order."""
    return np.argsort(-np.asarray(relevance_map, float).ravel(), kind="stable")


def removed_value(x: np.ndarray, baseline: str) -> np.ndarray:
    """(2, 1, 1): what a removed patch holds in each channel (see the module docstring)."""
    if baseline not in BASELINES:
        raise ValueError(f"The baseline must be one of {', '.join(BASELINES)}, not {baseline!r}.")
    if baseline == "zero":
        return np.zeros((x.shape[0], 1, 1), np.float32)
    return x.mean(axis=(1, 2), keepdims=True).astype(np.float32)


def perturbed_inputs(x: np.ndarray, order: np.ndarray, step: int, mode: str, baseline: str) -> tuple:
    """The inputs of a deletion or insertion curve: (fractions (S,), inputs (S, 2, 192, 192)),
    0, step, 2 step, ... and finally all 144 patches removed (deletion) or revealed (insertion)."""
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be deletion or insertion, not {mode!r}")
    if step < 1:
        raise ValueError("The step must be at least one patch.")
    rows, cols = PATCH_GRID
    total = rows * cols
    counts = sorted(set(range(0, total, step)) | {total})
    empty = np.broadcast_to(removed_value(x, baseline), x.shape)
    inputs = []
    for count in counts:
        chosen = np.zeros(total, bool)
        chosen[order[:count]] = True
        pixels = np.kron(chosen.reshape(rows, cols), np.ones((PATCH_SIZE, PATCH_SIZE), bool))
        if mode == "deletion":
            inputs.append(np.where(pixels, empty, x))
        else:
            inputs.append(np.where(pixels, x, empty))
    return np.asarray(counts, float) / total, np.stack(inputs).astype(np.float32)


def class_probabilities(vit, batch: np.ndarray, target_class: int, chunk: int = 64) -> np.ndarray:
    """softmax(vit(batch))[:, target_class] (S,) float64, in chunks of `chunk` inputs."""
    import torch

    from IPMNRiskLib.tta import softmax

    device = next(vit.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(batch), chunk):
            logits = vit(torch.as_tensor(batch[start:start + chunk], device=device)).float().cpu().numpy()
            out.append(softmax(logits)[:, target_class])
    return np.concatenate(out)


def perturbation_auc(vit, x: np.ndarray, relevance_map: np.ndarray, target_class: int, mode: str,
                     step: int = 4, baseline: str = "mean") -> float:
    """Deletion or insertion AUC of `relevance_map` (12, 12) for the class `target_class`."""
    fractions, inputs = perturbed_inputs(x, relevance_order(relevance_map), step, mode, baseline)
    return curve_auc(fractions, class_probabilities(vit, inputs, target_class))


def mass_inside(relevance_map: np.ndarray, mask: np.ndarray) -> float:
    """The share of the map's (non-negative) relevance inside `mask` (12, 12) bool; NaN for an
    empty mask or a map without relevance."""
    relevance = np.clip(np.asarray(relevance_map, float), 0.0, None)
    if not mask.any() or relevance.sum() <= 0:
        return float("nan")
    return float(relevance[mask].sum() / relevance.sum())


def pointing_game(relevance_map: np.ndarray, mask: np.ndarray) -> float:
    """1.0 when the map's peak patch (the first in row-major order on ties) is inside `mask`,
    0.0 when not; NaN for an empty mask."""
    if not mask.any():
        return float("nan")
    return float(mask.ravel()[int(np.argmax(np.asarray(relevance_map, float)))])


# --- the maps -----------------------------------------------------------------------------------

def explanation_maps(vit, x: np.ndarray, target_class: int, tta: bool, seed: int) -> dict:
    """{method: ((12, 12) map, seconds)} for every method in METHODS."""
    from IPMNRiskLib.tta import gradient_rollout_map, predict

    def timed(make: Callable[[], np.ndarray]) -> tuple:
        started = time.perf_counter()
        return make(), time.perf_counter() - started

    return {"rollout": timed(lambda: predict(vit, x, tta=tta).patch_map),
            "gradient-rollout": timed(lambda: gradient_rollout_map(vit, x, target_class, tta=tta)),
            "random": timed(lambda: np.random.default_rng(seed).random(PATCH_GRID))}


def phantom_cases(count: int, first_seed: int, shape=None, spacing=None) -> list:
    """(name, seed, phantom) for `count` MR phantoms, the classes in turn."""
    from PancreasAIPhantoms.mr import make_mr_phantom

    extra = {k: v for k, v in (("shape", shape), ("spacing", spacing)) if v is not None}
    return [(f"phantom{first_seed + n}_class{n % 3}", first_seed + n,
             make_mr_phantom(seed=first_seed + n, risk_class=n % 3, **extra)) for n in range(count)]


def evaluate_case(vit, card, name: str, seed: int, phantom, step: int, baseline: str, tta: bool) -> list[dict]:
    """The rows of one phantom case, one per method."""
    from IPMNRiskLib.inference import model_input
    from IPMNRiskLib.tta import predict

    t1, t2 = Volume(phantom.t1, phantom.ijk_to_ras), Volume(phantom.t2, phantom.ijk_to_ras)
    prepared = model_input(t1, t2, RegionBox(*phantom.pancreas_box_ras), card)
    probabilities = predict(vit, prepared.x, tta=tta, rollout=False).probabilities
    predicted = int(np.argmax(probabilities))
    masks = {what: mask_patch_grid(Volume(getattr(phantom, what), phantom.ijk_to_ras), prepared.plan,
                                   prepared.window) for what in ("lesion", "pancreas")}
    rows = []
    for method, (relevance_map, seconds) in explanation_maps(vit, prepared.x, predicted, tta, seed).items():
        rows.append({
            "case": name, "seed": seed, "true_class": phantom.risk_class, "predicted_class": predicted,
            "probability": float(probabilities[predicted]), "method": method,
            "deletion_auc": perturbation_auc(vit, prepared.x, relevance_map, predicted, "deletion", step, baseline),
            "insertion_auc": perturbation_auc(vit, prepared.x, relevance_map, predicted, "insertion", step, baseline),
            "lesion_mass": mass_inside(relevance_map, masks["lesion"]),
            "lesion_hit": pointing_game(relevance_map, masks["lesion"]),
            "pancreas_mass": mass_inside(relevance_map, masks["pancreas"]),
            "pancreas_hit": pointing_game(relevance_map, masks["pancreas"]),
            "map_seconds": seconds})
    return rows


# --- the table ----------------------------------------------------------------------------------

def summary_table(rows: list[dict], seconds: float, settings: str) -> str:
    """Markdown: mean +- sd (over cases with a value) of each metric, one row per method."""
    lines = [f"Explanations measured on {len({r['case'] for r in rows})} cases ({settings}); "
             f"run time {seconds:.1f} s.", "",
             "| method | " + " | ".join(METRICS) + " | map s |",
             "|---" * (len(METRICS) + 2) + "|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        cells = []
        for metric in (*METRICS, "map_seconds"):
            values = np.array([r[metric] for r in mine], float)
            values = values[~np.isnan(values)]
            cells.append(f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.3f} "
                         f"(n={len(values)})" if len(values) else "–")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "deletion_auc: lower is better; insertion_auc, *_mass, *_hit: higher is better."]
    return "\n".join(lines) + "\n"


def write_rows(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
                         for r in rows)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", "-o", required=True, type=Path)
    parser.add_argument("--model", help="IPMNRisk registry name or .safetensors path (default: the demo ViT)")
    parser.add_argument("--phantoms", type=int, default=12, help="how many MR phantom patients")
    parser.add_argument("--first-seed", type=int, default=6000, help="the first phantom's seed")
    parser.add_argument("--step", type=int, default=4, help="patches removed / revealed per curve step")
    parser.add_argument("--baseline", choices=BASELINES, default="mean", help="what a removed patch holds")
    parser.add_argument("--no-tta", action="store_true", help="maps from the original view only")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    return parser


def main(argv: Optional[list[str]] = None, cases: Optional[list] = None) -> int:
    """`cases`: (name, seed, phantom) instead of --phantoms (tests pass small phantoms). A model
    that cannot be loaded prints `error: ...` and exits 2, as the other scripts do."""
    from PancreasAILib.cli_support import run_command

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.phantoms < 1 and cases is None:
        parser.error("--phantoms must be at least 1.")
    return run_command(lambda: evaluate(args, cases))


def evaluate(args: argparse.Namespace, cases: Optional[list]) -> int:
    """Measure every method on every case; write the CSV and the table; returns 0."""
    from IPMNRiskLib.network import load_vit
    from IPMNRiskLib.registry import model_registry

    started = time.perf_counter()
    card = model_registry().resolve(args.model)
    vit = load_vit(card).to(args.device)
    cases = cases if cases is not None else phantom_cases(args.phantoms, args.first_seed)
    rows = []
    for n, (name, seed, phantom) in enumerate(cases, start=1):
        rows.extend(evaluate_case(vit, card, name, seed, phantom, args.step, args.baseline, not args.no_tta))
        print(f"{n}/{len(cases)} {name}", flush=True)
    seconds = time.perf_counter() - started
    args.output.mkdir(parents=True, exist_ok=True)
    write_rows(rows, args.output / CSV_FILE)
    settings = (f"model {card.name}, step {args.step} patches, removed = {args.baseline}, "
                f"{'8 test-time views' if not args.no_tta else 'no test-time augmentation'}, {args.device}")
    table = summary_table(rows, seconds, settings)
    (args.output / TABLE_FILE).write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
