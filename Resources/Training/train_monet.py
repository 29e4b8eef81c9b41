"""Train MoNet for PancreasSegMoNet with the paper's protocol; writes .safetensors + model card.

Data: the Medical Segmentation Decathlon Task07_Pancreas folder (--msd), any folder pair of
CT and label NIfTI (--images/--labels), or our synthetic CT phantoms (--phantoms N, which is
how the bundled demo weights were made). Slices go through exactly the pre-processing the
module uses at inference (PancreasSegMoNetLib.preprocessing).

Protocol defaults (Knolle, Kaissis et al. 2021): 70/30 split by patient, 256 x 256 slices,
soft Dice loss, NAdam lr 5e-4, lr / 10 after 2 epochs without validation improvement,
rotation +-10 degrees, zoom +-0.25, shift 0.2, He-uniform initialisation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
for sub in ("PancreasAI", "PancreasSegMoNet"):
    sys.path.insert(0, str(HERE.parents[2] / sub))

from PancreasAILib.orientation import axial_reorientation  # noqa: E402
from PancreasAILib.volume import Volume  # noqa: E402
from PancreasAILib.weights import save_model  # noqa: E402
from PancreasSegMoNetLib.preprocessing import DEFAULT_PREPROCESSING, label_slices, model_slices  # noqa: E402

logger = logging.getLogger("train_monet")

PROTOCOL = {
    "split": "random 70/30 by patient",
    "validation_fraction": 0.3,
    "loss": "soft Dice",
    "optimizer": "NAdam",
    "learning_rate": 5e-4,
    "lr_schedule": "ReduceLROnPlateau factor 0.1 patience 2 (validation loss)",
    "augmentation": {"rotation_degrees": 10.0, "zoom": 0.25, "shift": 0.2},
    "init": "He-uniform",
}


def slices_of_case(ct: Volume, labels: Volume, preprocessing: dict, empty_fraction: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """All slices with pancreas plus a random `empty_fraction` of the others, on the model grid."""
    reorientation = axial_reorientation(ct)
    image, _ = model_slices(reorientation.apply_volume(ct), preprocessing)
    label = label_slices(reorientation.apply_volume(labels.with_array(labels.array > 0)), preprocessing)
    has_pancreas = label.reshape(len(label), -1).any(axis=1)
    keep = has_pancreas | (rng.random(len(label)) < empty_fraction)
    return image[keep], label[keep]


def phantom_cases(count: int, first_seed: int):
    from PancreasSegMoNetLib.phantom import make_ct_phantom

    for seed in range(first_seed, first_seed + count):
        phantom = make_ct_phantom(seed)
        yield f"phantom-{seed:04d}", Volume(phantom.hu, phantom.ijk_to_ras), Volume(phantom.pancreas.astype(np.uint8), phantom.ijk_to_ras)


def soft_dice_loss(probabilities, target, smooth: float = 1.0):
    intersection = (probabilities * target).sum()
    return 1 - (2 * intersection + smooth) / (probabilities.sum() + target.sum() + smooth)


def augment(images, labels, generator, rotation_degrees: float, zoom: float, shift: float):
    """Random rotation, zoom and shift, the same for a slice and its label. (B, 1, H, W)."""
    import torch
    import torch.nn.functional as F

    batch = images.shape[0]
    angle = (torch.rand(batch, generator=generator) * 2 - 1) * math.radians(rotation_degrees)
    scale = 1 + (torch.rand(batch, generator=generator) * 2 - 1) * zoom
    offset = (torch.rand(batch, 2, generator=generator) * 2 - 1) * shift * 2  # normalised coords span 2
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = torch.cos(angle) * scale
    theta[:, 0, 1] = -torch.sin(angle) * scale
    theta[:, 1, 0] = torch.sin(angle) * scale
    theta[:, 1, 1] = torch.cos(angle) * scale
    theta[:, :, 2] = offset
    grid = F.affine_grid(theta, images.shape, align_corners=False)
    # Outside the slice is air: 0 after windowing.
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    labels = F.grid_sample(labels, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return images, labels


def train(args) -> Path:
    import torch

    from PancreasSegMoNetLib.model import MoNet, count_parameters

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    preprocessing = dict(DEFAULT_PREPROCESSING)
    cases = list(phantom_cases(args.phantoms, args.first_seed))
    order = rng.permutation(len(cases))
    n_val = max(1, int(round(len(cases) * PROTOCOL["validation_fraction"])))
    val_ids, train_ids = set(order[:n_val].tolist()), order[n_val:]
    data_hash = hashlib.sha256()
    train_x, train_y, val_x, val_y = [], [], [], []
    for index, (case_id, ct, labels) in enumerate(cases):
        data_hash.update(ct.array.tobytes())
        data_hash.update(labels.array.tobytes())
        x, y = slices_of_case(ct, labels, preprocessing, args.empty_fraction, rng)
        (val_x if index in val_ids else train_x).append(x)
        (val_y if index in val_ids else train_y).append(y)
    train_x, train_y = np.concatenate(train_x), np.concatenate(train_y)
    val_x, val_y = np.concatenate(val_x), np.concatenate(val_y)
    if len(val_x) > args.max_val_slices:
        pick = np.sort(rng.choice(len(val_x), args.max_val_slices, replace=False))
        val_x, val_y = val_x[pick], val_y[pick]
    logger.info("%d training slices from %d cases, %d validation slices from %d cases",
                len(train_x), len(train_ids), len(val_x), len(val_ids))

    model = MoNet()
    optimizer = torch.optim.NAdam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=2)
    generator = torch.Generator().manual_seed(args.seed)
    best = (math.inf, None)
    history = []
    for epoch in range(args.epochs):
        model.train()
        started = time.time()
        losses = []
        for step in range(args.steps_per_epoch):
            pick = torch.randint(len(train_x), (args.batch_size,), generator=generator)
            images = torch.from_numpy(train_x[pick.numpy()][:, None])
            labels = torch.from_numpy(train_y[pick.numpy()][:, None])
            images, labels = augment(images, labels, generator, **PROTOCOL["augmentation"])
            loss = soft_dice_loss(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        val_loss, val_dice = evaluate(model, val_x, val_y)
        scheduler.step(val_loss)
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
                        "val_slice_dice": val_dice, "lr": optimizer.param_groups[0]["lr"]})
        logger.info("epoch %d: train loss %.4f, val loss %.4f, val Dice %.4f, lr %.1e (%.0f s)",
                    epoch + 1, np.mean(losses), val_loss, val_dice, optimizer.param_groups[0]["lr"],
                    time.time() - started)
        if val_loss < best[0]:
            best = (val_loss, {k: v.detach().clone() for k, v in model.state_dict().items()})
            save(best[1], args, preprocessing, history, data_hash.hexdigest(), count_parameters)
    return Path(args.output)


def evaluate(model, images: np.ndarray, labels: np.ndarray, batch_size: int = 16) -> tuple[float, float]:
    import torch

    model.eval()
    intersection = total = 0.0
    with torch.inference_mode():
        for b0 in range(0, len(images), batch_size):
            p = model(torch.from_numpy(images[b0:b0 + batch_size, None]))
            g = torch.from_numpy(labels[b0:b0 + batch_size, None])
            intersection += float((p * g).sum())
            total += float(p.sum() + g.sum())
    soft = 1 - (2 * intersection + 1) / (total + 1)
    return soft, 1 - soft


def save(state_dict, args, preprocessing, history, data_sha256, count_parameters) -> None:
    from PancreasSegMoNetLib.model import MoNet

    card = {
        "name": Path(args.output).stem,
        "title": args.title,
        "architecture": "MoNet",
        "architecture_params": {"in_channels": 1, "n_classes": 1},
        "parameters": {"trainable": count_parameters(MoNet(), False),
                       "with_bn_running_stats": count_parameters(MoNet(), True)},
        "task": "pancreas segmentation on CT",
        "classes": ["pancreas"],
        "preprocessing": preprocessing,
        "postprocessing": {"threshold": 0.5, "keep_largest_component": True},
        "intended_use": args.intended_use,
        "training": {"data": f"{args.phantoms} synthetic CT phantoms (seeds {args.first_seed}-"
                             f"{args.first_seed + args.phantoms - 1}), PancreasSegMoNetLib.phantom",
                     "data_sha256": data_sha256, "protocol": PROTOCOL,
                     "epochs_run": len(history), "steps_per_epoch": args.steps_per_epoch,
                     "batch_size": args.batch_size, "seed": args.seed,
                     "command": " ".join(sys.argv)},
        "metrics": {"validation": history[-1] if history else {}},
        "history": history,
        "licence": "Apache-2.0",
    }
    save_model(state_dict, args.output, card)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantoms", type=int, default=40, help="number of synthetic CT phantoms")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--steps-per-epoch", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=PROTOCOL["learning_rate"])
    parser.add_argument("--empty-fraction", type=float, default=0.15,
                        help="fraction of slices without pancreas kept for training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-val-slices", type=int, default=10**9,
                        help="validate on a fixed random subset of this many slices (saves time)")
    parser.add_argument("--output", required=True, help="path of the .safetensors to write")
    parser.add_argument("--title", default="MoNet")
    parser.add_argument("--intended-use", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
