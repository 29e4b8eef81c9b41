"""The region found automatically: MoNet segments the pancreas on the T2 image, and the box
around its largest piece, with a margin, is the region the ViT crops.

The segmentation model is a PancreasSegMoNet model whose card says "modality": "MR" (the first
such model of PancreasSegMoNet's registry unless one is named): trained by
`Resources/Training/train_monet.py --modality mr`, on Cyst-X's MR masks at a site, or, for the
bundled demo, on the T2 images of our MR phantoms. The mask is kept with the result, so that
the radiologist sees what the box was drawn around and can replace it with their own.

    found = find_region(t2)              # AutomaticRegion: region, mask, model, ...
    found.region                          # grids.RegionBox, as a drawn box gives it
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from PancreasAILib.errors import InputError, ModelFileError
from PancreasAILib.progress import ProgressCallback, no_progress
from PancreasAILib.volume import Volume

from .grids import RegionBox

#: What a console call or the batch CSV passes as the region to mean "find it".
AUTOMATIC = "automatic"
#: Added on every side of the segmentation's bounding box: the middle of the 4-12 mm margin an
#: expert leaves around the gland (our MR phantoms' boxes), so the crop shows the gland's edge.
MARGIN_MM = 8.0
#: The PancreasSegMoNet module folder, for a Python that has IPMNRisk's folder on its path only
#: (a background task): both modules ship in one extension.
SEGMENTATION_MODULE_DIR = Path(__file__).resolve().parents[2] / "PancreasSegMoNet"


@dataclass
class AutomaticRegion:
    """region: the box; mask: uint8 pancreas mask on the T2 grid; model: the segmentation
    model's name, sha256 its weights'; volume_ml: the mask's volume."""

    region: RegionBox
    mask: Volume
    model: str
    sha256: str
    volume_ml: float
    seconds: float
    margin_mm: float
    warnings: list[str] = field(default_factory=list)

    def record(self) -> dict:
        """What the result's "region" says about where it came from."""
        return {"source": AUTOMATIC, "segmentation_model": self.model, "segmentation_model_sha256": self.sha256,
                "pancreas_ml": round(self.volume_ml, 2), "margin_mm": self.margin_mm}


def segmentation_package():
    """(PancreasSegMoNetLib.registry, PancreasSegMoNetLib.segmentation), importing the module's
    folder when this Python does not have it on its path."""
    try:
        import PancreasSegMoNetLib  # noqa: F401  (on the path in Slicer and in an installed project)
    except ImportError:
        if SEGMENTATION_MODULE_DIR.is_dir() and str(SEGMENTATION_MODULE_DIR) not in sys.path:
            sys.path.append(str(SEGMENTATION_MODULE_DIR))
    try:
        from PancreasSegMoNetLib import registry, segmentation
    except ImportError as error:
        raise InputError("Finding the region automatically needs the PancreasSegMoNet module of this extension, "
                         "which cannot be imported here; place a box, a segmentation or a point instead.") from error
    return registry, segmentation


def segmentation_card(model: Optional[str] = None):
    """The MR segmentation model's card: `model` (a PancreasSegMoNet registry name or a
    .safetensors path), else the first model of PancreasSegMoNet's registry whose card is MR."""
    registry, _ = segmentation_package()
    known = registry.model_registry()
    if model:
        card = known.resolve(model)
    else:
        cards = [known.resolve(name, download=False) for name in known.names if _is_bundled(known, name)]
        mr = [card for card in cards if card.preprocessing.get("modality") == "MR"]
        if not mr:
            raise ModelFileError("No MR pancreas segmentation model is installed, so the region cannot be found "
                                 "automatically. Train one (Resources/Training/train_monet.py --modality mr) and "
                                 "give it as the segmentation model, or place a box, a segmentation or a point.")
        card = mr[0]
    if card.preprocessing.get("modality") != "MR":
        raise ModelFileError(f"The segmentation model '{card.name}' was trained on "
                             f"{card.preprocessing.get('modality', 'CT')}, not on MRI: the automatic region needs an "
                             "MR model (its card's preprocessing says \"modality\": \"MR\").")
    return card


def _is_bundled(known, name: str) -> bool:
    entry = known.entries[name]
    return bool(entry.bundled_card and entry.bundled_card.exists())


def find_region(t2: Volume, model: Optional[str] = None, margin_mm: float = MARGIN_MM, device: str = "auto",
                engine: str = "auto", progress: ProgressCallback = no_progress) -> AutomaticRegion:
    """Segment the pancreas on `t2` with the MR MoNet (`segmentation_card(model)`) and return the
    box around the mask's largest piece grown by `margin_mm` on every side. A T2 in which
    nothing is found is refused, saying what to do instead."""
    _, segmentation = segmentation_package()
    card = segmentation_card(model)
    result = segmentation.segment_ct(t2, card, keep_largest_component=True, device=device, engine=engine,
                                     progress=progress)
    if not np.any(result.mask.array):
        raise InputError(f"The MR segmentation model '{card.name}' found no pancreas on the T2 image, so the "
                         "region cannot be found automatically: place a box, a segmentation or a point on the "
                         "pancreas instead.")
    tight = RegionBox.from_mask(result.mask)
    region = RegionBox(tight.center_ras, tuple(float(s) + 2 * margin_mm for s in tight.size_mm))
    warnings = [w for w in result.warnings if not w.startswith("No pancreas was found")]
    return AutomaticRegion(region, result.mask, card.name, card.sha256, result.volume_ml, result.seconds,
                           float(margin_mm), warnings)
