"""What the one route from the scene to a result costs (issue #10): a segmentation computed
straight from the node's voxels (what the console did before), the route in this process (the CT
written to a work folder, the command line's work, its files read back), and the route in a
separate process (what the Apply button does: a new Python that imports torch and loads the model).

    .venv/bin/python Testing/Benchmarks/route_benchmark.py [--repeats 3] [--output FILE]

Prints a table of medians and writes it (default output/bench/ROUTE.md). Runs interleaved, so
the machine's load falls on every way alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SHARED_CT = ROOT.parent / "shared" / "data" / "ct_abdomen_3mm.nii.gz"
DEFAULT_OUTPUT = ROOT / "output" / "bench" / "ROUTE.md"


def direct(node, card):
    """The old in-process path: the node's voxels to segment_ct, the mask into the scene."""
    from PancreasAILib.scene import volume_from_node
    from PancreasSegMoNetLib.pancreas_segment import apply_pancreas_mask
    from PancreasSegMoNetLib.segmentation import segment_ct

    result = segment_ct(volume_from_node(node, "CT volume"), card, device="cpu")
    return apply_pancreas_mask(node, result.mask.array)


def route(runner):
    def run(node, card):
        from PancreasSegMoNetLib.logic import segment

        return segment(node, model=str(card.card_path), device="cpu", runner=runner)

    return run


def cases(quick: bool = False):
    """(name, Volume): the shared real CT when it is there, and a 512 x 512 x 64 phantom (a small
    phantom only, with `quick`)."""
    from PancreasAIPhantoms.ct import make_ct_phantom
    from PancreasAILib.volume import Volume
    from PancreasAILib.volume_io import read_volume

    if quick:
        phantom = make_ct_phantom(seed=7, shape=(8, 96, 96))
        return [("phantom CT 96 x 96 x 8", Volume(phantom.hu, phantom.ijk_to_ras))]
    found = []
    if SHARED_CT.exists():
        found.append(("real CT 122 x 101 x 30 (shared/data)", read_volume(SHARED_CT)))
    phantom = make_ct_phantom(seed=7, shape=(64, 512, 512))
    found.append(("phantom CT 512 x 512 x 64", Volume(phantom.hu, phantom.ijk_to_ras)))
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--quick", action="store_true", help="one small phantom, once: checks that it runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1

    from PancreasAILib.runners import BackgroundRunner, InProcessRunner
    from PancreasAILib.scene import add_volume_node, create_scene
    from PancreasSegMoNetLib.registry import model_registry

    card = model_registry().resolve(None)
    ways = [("straight from the node (before)", direct), ("route, in this process (console)", route(InProcessRunner())),
            ("route, separate process (Apply)", route(BackgroundRunner()))]
    rows = []
    for name, volume in cases(args.quick):
        scene = create_scene()
        node = add_volume_node(scene, volume, "CT")
        direct(node, card)  # warm-up: the model is loaded and cached in this process
        times = {label: [] for label, _ in ways}
        for _ in range(args.repeats):
            for label, run in ways:
                started = time.perf_counter()
                run(node, card)
                times[label].append(time.perf_counter() - started)
        base = statistics.median(times[ways[0][0]])
        for label, _ in ways:
            median = statistics.median(times[label])
            rows.append(f"| {name} | {label} | {median:.2f} | {median / base:.2f} | {median - base:+.2f} |")
            print(rows[-1], flush=True)
    table = "\n".join([
        "# The one route: what it costs", "",
        f"Written by `Testing/Benchmarks/route_benchmark.py`; medians of {args.repeats} interleaved runs, "
        f"CPU, the demo MoNet, Python {sys.version.split()[0]}.", "",
        "| input | way | seconds | ratio | extra seconds |", "|---|---|---|---|---|", *rows, ""])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table, encoding="utf-8")
    print(f"-> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
