"""Train the IPMN risk ViT for IPMNRisk; writes .safetensors + model card.

This first version trains on our synthetic T1/T2 phantoms (how the bundled demo weights were
made). Inputs go through exactly the module's own grid code (IPMNRiskLib.grids), so training
and inference cannot drift apart.

Protocol defaults (Proietto Salanitri et al. 2022, and the authors' code): cross-entropy with
class weights [1, 0.65, 0.45], Adam lr 0.003, batch 8, 3000 optimiser steps, random horizontal
flips and 90-degree rotations applied identically to all 9 slices and both modalities, the
checkpoint with the best validation balanced accuracy is kept.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
for sub in ("PancreasAI", "IPMNRisk"):
    sys.path.insert(0, str(HERE.parents[2] / sub))

from PancreasAILib.volume import Volume  # noqa: E402
from PancreasAILib.weights import save_model  # noqa: E402
from IPMNRiskLib.grids import (DIHEDRAL_VIEWS, INPUT_FORMAT, RegionBox, central_window, crop_stacks,  # noqa: E402
                               make_input, plan_crop, transform_tiles, window_indices)
from IPMNRiskLib.model import CLASS_NAMES, DEMO_ARCHITECTURE, create_vit  # noqa: E402

logger = logging.getLogger("train_ipmn")

PROTOCOL = {
    "loss": "cross-entropy",
    "class_weights": [1.0, 0.65, 0.45],
    "optimizer": "Adam",
    "learning_rate": 0.003,
    "batch_size": 8,
    "steps": 3000,
    "augmentation": "random horizontal flip + 90-degree rotations, same for all tiles and both channels",
    "checkpoint_selection": "best validation balanced accuracy",
}


def case_windows(t1: Volume, t2: Volume, region: RegionBox, window_jitter: int) -> list[np.ndarray]:
    """(2, 192, 192) inputs of one case: windows of 9 consecutive slices of the crop stack
    whose start lies within `window_jitter` slices of the central window (-1: every window)."""
    t1_stack, t2_stack = crop_stacks(plan_crop(t1, t2, region), t1, t2)
    n = t2_stack.shape[0]
    central_start = int(central_window(n)[0])
    starts = range(max(n - 8, 1)) if window_jitter < 0 else sorted(
        {min(max(central_start + d, 0), max(n - 9, 0)) for d in range(-window_jitter, window_jitter + 1)})
    return [make_input(t1_stack[window_indices(s, n)], t2_stack.array[window_indices(s, n)]) for s in starts]


def phantom_samples(seeds, window_jitter: int):
    from IPMNRiskLib.phantom import make_mr_phantom

    inputs, labels, patients = [], [], []
    for seed in seeds:
        for risk_class in range(3):
            phantom = make_mr_phantom(seed, risk_class)
            region = RegionBox(*phantom.pancreas_box_ras)
            windows = case_windows(Volume(phantom.t1, phantom.ijk_to_ras), Volume(phantom.t2, phantom.ijk_to_ras),
                                   region, window_jitter)
            inputs.extend(windows)
            labels.extend([risk_class] * len(windows))
            patients.extend([seed] * len(windows))
    return np.stack(inputs), np.array(labels), np.array(patients)


def balanced_accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    recalls = [np.mean(predicted[truth == c] == c) for c in np.unique(truth)]
    return float(np.mean(recalls))


def evaluate(model, inputs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    import torch

    model.eval()
    with torch.inference_mode():
        logits = torch.cat([model(torch.from_numpy(inputs[b:b + 32])) for b in range(0, len(inputs), 32)])
    predicted = logits.argmax(1).numpy()
    return float(np.mean(predicted == labels)), balanced_accuracy(labels, predicted)


def train(args) -> None:
    import torch

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    started = time.time()
    train_x, train_y, _ = phantom_samples(range(args.first_seed, args.first_seed + args.patients), args.window_jitter)
    val_x, val_y, _ = phantom_samples(range(args.val_first_seed, args.val_first_seed + args.val_patients), 0)
    data_hash = hashlib.sha256(train_x.tobytes() + train_y.tobytes()).hexdigest()
    logger.info("%d training grids from %d phantom patients x 3 classes, %d validation grids (%.0f s)",
                len(train_x), args.patients, len(val_x), time.time() - started)

    architecture, params = args.architecture, dict(DEMO_ARCHITECTURE[1]) if args.architecture == DEMO_ARCHITECTURE[0] else {}
    model = create_vit(architecture, params)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_function = torch.nn.CrossEntropyLoss(weight=torch.tensor(args.class_weights, dtype=torch.float32))
    best = (-1.0, None, {})
    history = []
    for step in range(1, args.steps + 1):
        model.train()
        pick = rng.integers(len(train_x), size=args.batch_size)
        batch = np.stack([transform_tiles(train_x[i], *DIHEDRAL_VIEWS[rng.integers(len(DIHEDRAL_VIEWS))])
                          for i in pick])
        loss = loss_function(model(torch.from_numpy(batch)), torch.from_numpy(train_y[pick]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.eval_every == 0 or step == args.steps:
            accuracy, balanced = evaluate(model, val_x, val_y)
            history.append({"step": step, "train_loss": float(loss.detach()), "val_accuracy": accuracy,
                            "val_balanced_accuracy": balanced})
            logger.info("step %d: loss %.3f, val accuracy %.3f, balanced %.3f (%.0f s)", step, float(loss.detach()),
                        accuracy, balanced, time.time() - started)
            if balanced > best[0]:
                best = (balanced, {k: v.detach().clone() for k, v in model.state_dict().items()}, history[-1])
                save(best[1], args, architecture, params, history, best[2], data_hash)


def save(state_dict, args, architecture, params, history, best_metrics, data_hash) -> None:
    card = {
        "name": Path(args.output).stem,
        "title": args.title,
        "architecture": architecture,
        "architecture_params": params,
        "task": "IPMN risk class from paired T1/T2 MRI (3 x 3 grids of 9 slices, early fusion)",
        "classes": list(CLASS_NAMES),
        "preprocessing": {**INPUT_FORMAT, "n4_bias_correction": False, "edge_preserving_smoothing": False,
                          "intensity_standardisation": False},
        "intended_use": args.intended_use,
        "training": {"data": f"synthetic T1/T2 phantoms (IPMNRiskLib.phantom), patients seeds "
                             f"{args.first_seed}-{args.first_seed + args.patients - 1} x 3 classes",
                     "validation": f"patients seeds {args.val_first_seed}-{args.val_first_seed + args.val_patients - 1} x 3 classes",
                     "data_sha256": data_hash,
                     "protocol": {**PROTOCOL, "learning_rate": args.lr, "steps": args.steps,
                                  "class_weights": args.class_weights, "batch_size": args.batch_size,
                                  "windows": "all sliding windows" if args.window_jitter < 0 else
                                  f"windows starting within {args.window_jitter} slices of the central one"},
                     "seed": args.seed, "command": " ".join(sys.argv)},
        "metrics": {"validation_at_selected_checkpoint": best_metrics},
        "history": history,
        "licence": "Apache-2.0",
    }
    save_model(state_dict, args.output, card)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=60, help="phantom patients (each gives 3 classes)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--val-patients", type=int, default=20)
    parser.add_argument("--val-first-seed", type=int, default=1000)
    parser.add_argument("--architecture", default=DEMO_ARCHITECTURE[0])
    parser.add_argument("--steps", type=int, default=PROTOCOL["steps"])
    parser.add_argument("--batch-size", type=int, default=PROTOCOL["batch_size"])
    parser.add_argument("--lr", type=float, default=PROTOCOL["learning_rate"])
    parser.add_argument("--class-weights", type=float, nargs=3, default=PROTOCOL["class_weights"])
    parser.add_argument("--window-jitter", type=int, default=-1,
                        help="training windows start within this many slices of the central one (-1: all)")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True)
    parser.add_argument("--title", default="IPMN ViT")
    parser.add_argument("--intended-use", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
