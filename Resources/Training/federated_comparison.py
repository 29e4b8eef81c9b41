"""Federated against centralised MoNet training on phantoms, with the same total number of
optimiser steps: one central run, and simulated sites (IID, and with --non-iid dealt by pancreas
size) of the same phantoms; every model scored by per-patient Dice on held-out phantoms that
none of them saw (on the model's grid, threshold 0.5, no clean-up).

    python Resources/Training/federated_comparison.py --output runs/fed-vs-central \\
        --phantoms 9 --sites 3 --rounds 10 --local-steps 10 --input-size 64

Options not listed here are train_monet.py's and go to all three runs alike (for example
`--prior-init --loss dice+bce --lr 0.002`). Prints a Markdown table and writes it to
<output>/comparison.md. The central run takes
sites x rounds x local steps steps (`--rounds` epochs of sites x local steps) and keeps, as
train_monet.py does, its epoch of lowest validation loss; a federated run ends with the global
weights of its last round.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from PancreasAILib.weights import read_model_card

import federated
import train_monet
from monet_validation import patient_dice_on_model_grid
from segmentation_data import SliceCache, phantom_cases, prepare_cases
from segmentation_networks import load_network
from trainkit.hashing import FileHashes


def held_out_dice(model_file: Path, seeds: range, shape: Sequence[int], cache_root: Path) -> list[float]:
    """Per-patient Dice of a model on the phantoms of `seeds`."""
    card = read_model_card(model_file)
    cache = SliceCache(cache_root, card.preprocessing)
    prepared, _ = prepare_cases(phantom_cases(len(seeds), seeds.start, shape), cache,
                                FileHashes(cache_root / "file-hashes.json"), show_progress=False)
    slices = [cache.get(case.cache_key) for case in prepared]
    return [d for d in patient_dice_on_model_grid(load_network(card), slices, "cpu") if not np.isnan(d)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="folder for the runs and the table")
    parser.add_argument("--phantoms", type=int, default=9, help="training phantoms (all runs)")
    parser.add_argument("--test-phantoms", type=int, default=6, help="held-out phantoms that score the models")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--phantom-shape", type=int, nargs=3, default=[24, 96, 96])
    args, training_options = parser.parse_known_args(argv)
    output = Path(args.output)
    common = ["--phantoms", str(args.phantoms), "--phantom-shape", *map(str, args.phantom_shape), "--input-size",
              str(args.input_size), "--test-fraction", "0", "--protocol", "ours", "--crop", "0", "--device", "cpu",
              *training_options]
    runs = {"centralised": output / "central" / "monet"}
    minutes = {}
    started = time.perf_counter()
    code = train_monet.main([*common, "--epochs", str(args.rounds), "--steps-per-epoch",
                             str(args.sites * args.local_steps), "--output", str(runs["centralised"])])
    if code:
        return code
    minutes["centralised"] = (time.perf_counter() - started) / 60
    for name, extra in ((f"federated, {args.sites} sites IID", []),
                        (f"federated, {args.sites} sites non-IID", ["--non-iid"])):
        runs[name] = output / name.split(", ")[1].replace(" ", "-") / "monet"
        started = time.perf_counter()
        code = federated.main(["simulate", "--model", "monet", "--sites", str(args.sites), "--rounds", str(args.rounds),
                               "--local-steps", str(args.local_steps), "--output", str(runs[name]), *extra, *common])
        if code:
            return code
        minutes[name] = (time.perf_counter() - started) / 60
    seeds = range(10_000, 10_000 + args.test_phantoms)
    lines = [f"| training ({args.sites * args.rounds * args.local_steps} optimiser steps in all) | "
             f"Dice on {args.test_phantoms} held-out phantoms, mean +- SD | minutes |", "|---|---|---:|"]
    for name, path in runs.items():
        scores = held_out_dice(path.with_suffix(".safetensors"), seeds, args.phantom_shape, output / "test-cache")
        lines.append(f"| {name} | {np.mean(scores):.3f} +- {np.std(scores, ddof=1):.3f} | {minutes[name]:.1f} |")
    table = "\n".join(lines)
    (output / "comparison.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
