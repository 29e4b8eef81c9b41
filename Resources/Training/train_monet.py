"""Train MoNet, or one of the paper's baselines, for PancreasSegMoNet: writes .safetensors + model card.

Data (one of):
  --msd DIR                  the Medical Segmentation Decathlon Task07_Pancreas folder as
                             distributed (dataset.json, imagesTr, labelsTr)
  --images DIR --labels DIR  CT and label files paired by file name
  --phantoms N               synthetic CT phantoms (how the bundled demo weights were made)
  --cyst-x DIR               (with --modality mr) the Cyst-X benchmark's MR images and pancreas
                             masks, IPMN_images_masks/<--sequence>/{images,masks}
Every non-zero label is pancreas (Task07: pancreas 1 and tumour 2 merged, as in the paper).

MR (`--modality mr`, not in the paper, which trains on CT): the same network and protocol on
MR slices, for IPMNRisk's automatic region (a pancreas segmentation of the T2 image). MR values
have no unit, so each volume's own percentiles (--mr-percentiles, default 1 99) are scaled to
0..1 instead of an HU window; the card records it ("modality": "MR", "intensity_scaling":
"volume_percentiles"). --phantoms then gives the T2 images of MR phantoms.

Slices go through exactly the pre-processing the module uses at inference
(PancreasSegMoNetLib.preprocessing) and the networks are the module's own classes, so training
and inference cannot drift apart.

Protocol: `--protocol paper` (the default) reproduces the article (Knolle, Kaissis et al.,
PLOS ONE 2021) and, where it is silent, the authors' public code (TUM-AIMED/MoNet): test 30 %
of the patients, validation 10 % of the others, the pancreas's slices with 16 more on each
side, CT clipped to -150..200 HU and scaled per volume, soft Dice, NAdam lr 5e-4, lr / 10 after
2 epochs without validation improvement, batch 16, rotation +-10 degrees, zoom +-0.25 per
axis, shift 0.2, nearest fill, raw masks. `--protocol ours` is what we recommend instead
(Resources/Training/PROTOCOLS.md lists every setting, its source and why ours differs). Any
option given wins over the preset; the model card records each value and whose it is.

The test patients are held out: never trained on, never used for the learning-rate schedule or
the checkpoint. evaluate_segmentation.py --cases-of scores them.

  one GPU or the CPU:  python Resources/Training/train_monet.py --msd Task07_Pancreas --output runs/monet
  several GPUs:        torchrun --nproc_per_node 4 Resources/Training/train_monet.py --msd ... --output ...
  continue a run:      the same command with --resume
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

# trainkit first: importing it says how to install the project's packages when they are missing.
from trainkit.distributed import Distributed
from trainkit.initial_weights import add_initial_weights_argument
from trainkit.protocol import add_protocol_arguments
from trainkit.run_files import RunFiles
from trainkit.script import run_script

from PancreasSegMoNetLib.preprocessing import DEFAULT_PREPROCESSING

from monet_protocol import MoNetProtocol
from monet_training import SCRIPT, finish, start_run, train_epochs
from PancreasSegMoNetLib.preprocessing import MR_PERCENTILES
from segmentation_networks import ARCHITECTURES

logger = logging.getLogger("train_monet")


def train(args, argv: Optional[Sequence[str]] = None) -> int:
    """Run the training the arguments describe; returns the exit code (0 done, 2 refused)."""
    def body(dist: Distributed) -> None:
        run = start_run(args, argv, dist)
        train_epochs(run)
        finish(run)

    return run_script(SCRIPT, argv, log_file=RunFiles.for_output(args.output).log, device=args.device,
                      body=body, logger=logger,
                      on_interrupt="Finished epochs are kept: run the same command with --resume to continue.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data (give one source)")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--msd", metavar="DIR", help="Medical Segmentation Decathlon Task07_Pancreas folder")
    source.add_argument("--images", metavar="DIR", help="folder of CT files (with --labels)")
    source.add_argument("--phantoms", type=int, metavar="N", help="number of synthetic phantoms (CT, or MR T2 "
                                                                  "with --modality mr)")
    source.add_argument("--cyst-x", metavar="DIR", help="the Cyst-X folder (MR: IPMN_images_masks/<sequence>)")
    data.add_argument("--labels", metavar="DIR", help="folder of label files named as the images")
    data.add_argument("--modality", choices=("ct", "mr"), default="ct",
                      help="ct (the paper) or mr: MR intensities scaled by each volume's percentiles (default: ct)")
    data.add_argument("--mr-percentiles", type=float, nargs=2, default=list(MR_PERCENTILES), metavar=("LOW", "HIGH"),
                      help="with --modality mr: the volume's percentiles scaled to 0 and 1 (default: 1 99)")
    data.add_argument("--sequence", choices=("t2", "t1"), default="t2",
                      help="with --cyst-x: the sequence to train on (default: t2, what IPMNRisk's automatic "
                           "region segments)")
    data.add_argument("--patient-pattern", metavar="REGEX",
                      help="regular expression whose first group in a case name is the patient "
                           "(several scans per patient); default: each case is a patient")
    data.add_argument("--first-seed", type=int, default=0, help="seed of the first phantom")
    data.add_argument("--phantom-shape", type=int, nargs=3, metavar=("K", "J", "I"),
                      help="phantom size in voxels (slices, rows, columns; default: the phantoms' own, "
                           "48 256 256 for CT, 24 160 160 for MR)")
    data.add_argument("--cache-dir", metavar="DIR",
                      help="where pre-processed slices are kept (default: slice-cache beside the output)")
    model = parser.add_argument_group("model")
    model.add_argument("--architecture", choices=sorted(ARCHITECTURES), default="monet",
                       help="MoNet or one of the paper's baselines (default: monet)")
    model.add_argument("--input-size", type=int, default=int(DEFAULT_PREPROCESSING["input_size"]),
                       help="slice size in pixels after in-plane resampling (default: %(default)s)")
    add_protocol_arguments(parser, MoNetProtocol)
    run = parser.add_argument_group("run")
    run.add_argument("--output", required=True, help="path of the .safetensors to write (its card goes beside it)")
    run.add_argument("--title", help="title in the model card (default: the architecture's name)")
    run.add_argument("--intended-use", default="", help="intended use, written into the model card")
    run.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")
    run.add_argument("--max-val-slices", type=int, default=10**9,
                     help="validate on a fixed random subset of this many slices (saves time)")
    run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                     help="auto: a GPU when there is one (under torchrun: one per process)")
    run.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    add_initial_weights_argument(run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return train(args, argv)


if __name__ == "__main__":
    sys.exit(main())
