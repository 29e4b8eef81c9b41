"""An assessment's result as plain data: written by the command line as JSON, read back by
the Slicer adapter and by batch scripts, so every path reports the same fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .inference import Assessment
from .grids import RegionBox
from .network import task_of_classes


def assessment_summary(assessment: Assessment, region: RegionBox, case: str, card=None,
                       seconds: Optional[float] = None) -> dict:
    """JSON-able fields of one assessment (no arrays but the small ones): the task and its class
    names with one probability each (3-class or 2-class, `network.TASKS`); with the model card,
    its SHA256; with the time the assessment took, that."""
    return {
        "case": case,
        "risk_class": assessment.risk_class,
        "class_name": assessment.class_name,
        "task": task_of_classes(assessment.class_names, "The assessment"),
        "class_names": list(assessment.class_names),
        "probabilities": [float(p) for p in assessment.probabilities],
        "spread": [float(s) for s in assessment.spread],
        "test_time_views": assessment.views,
        "model": assessment.model_name,
        "region": {"center_ras": [float(v) for v in region.center_ras],
                   "size_mm": [float(v) for v in region.size_mm]},
        "model_sha256": card.sha256 if card is not None else "",
        "engine": assessment.engine,
        "precision": assessment.precision,
        "explanation": assessment.explanation,
        "explanation_engine": assessment.explanation_engine,
        "warnings": list(assessment.warnings),
        "seconds": round(seconds, 3) if seconds is not None else None,
        "research_use_notice": assessment.research_use_notice,
    }


def write_summary(summary: dict, path: Path) -> Path:
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return path


def read_summary(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))
