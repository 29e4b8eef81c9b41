"""One reviewer going through a worklist in one MRML scene: what the Review sections of both
Slicer modules do, without Qt, so it runs and is tested in slicer-core.

The session shows one case at a time (the previous case's nodes are removed when the next is
shown), keeps the reviewer's verdicts in step with review.csv, and saves a corrected pancreas.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .review import (ReviewCase, ReviewError, Verdict, open_worklist, record_verdict, reviewed_segmentation_name,
                     verdicts_by_case)
from .review_scene import LoadedCase, load_case, show_case, unload_case


class ReviewSession:
    """`folder`'s cases of `task` ('segmentation', 'ipmn', or None for both), for `reviewer`."""

    def __init__(self, folder, reviewer: str, scene, task: Optional[str] = None):
        self.worklist = open_worklist(folder)
        self.task = task
        self.reviewer = " ".join(str(reviewer).split())
        self.scene = scene
        self.cases = [c for c in self.worklist.cases if task is None or c.task == task]
        self.index = -1
        self.loaded: Optional[LoadedCase] = None

    @property
    def current(self) -> Optional[ReviewCase]:
        return self.cases[self.index] if 0 <= self.index < len(self.cases) else None

    def class_choices(self) -> tuple:
        """The classes a reviewer may give the shown IPMN case: its own task's (a 2-class
        result's two, else the three); () for a segmentation case or none shown."""
        case = self.current
        return case.class_names if case is not None and case.task == "ipmn" else ()

    def verdicts(self) -> dict:
        """This reviewer's verdicts, as review.csv holds them now, keyed by (case, task)."""
        return verdicts_by_case(self.worklist.folder, self.reviewer) if self.reviewer else {}

    def verdict_of(self, case: ReviewCase) -> Optional[Verdict]:
        return self.verdicts().get((case.name, case.task))

    def rows(self) -> list:
        """(case, its verdict or None) in worklist order, for a table."""
        verdicts = self.verdicts()
        return [(case, verdicts.get((case.name, case.task))) for case in self.cases]

    def first_unreviewed(self) -> int:
        verdicts = self.verdicts()
        return next((i for i, c in enumerate(self.cases) if c.reviewable and (c.name, c.task) not in verdicts), 0)

    def go_to(self, index: int, opacity: float = 0.5) -> Optional[ReviewCase]:
        """Show case `index` (clamped to the list); a case that cannot be shown leaves the views
        empty and raises ReviewError saying why."""
        if not self.cases:
            return None
        index = max(0, min(int(index), len(self.cases) - 1))
        unload_case(self.scene, self.loaded)
        self.loaded = None
        self.index = index
        case = self.cases[index]
        if case.reviewable:
            self.loaded = load_case(case, self.scene, self._reviewed_file(case))
            show_case(self.scene, self.loaded, opacity)
        else:
            raise ReviewError(f"'{case.name}' {case.problem}.")
        return case

    def next(self, opacity: float = 0.5) -> Optional[ReviewCase]:
        return self.go_to(self.index + 1, opacity)

    def previous(self, opacity: float = 0.5) -> Optional[ReviewCase]:
        return self.go_to(self.index - 1, opacity)

    def record(self, verdict: str, reviewer_class: str = "", comment: str = "") -> Verdict:
        case = self._current_or_raise()
        edited = ""
        if verdict == "edited":
            edited = self._edited_file(case)
        return record_verdict(self.worklist, Verdict(self.reviewer, case.name, case.task, verdict,
                                                     reviewer_class=reviewer_class, comment=comment,
                                                     edited_file=edited))

    def save_correction(self, segmentation_node=None) -> Path:
        """Save the shown case's pancreas, as the reviewer corrected it (in `segmentation_node`,
        default the segmentation the case was shown with) beside the model's file."""
        from .review_scene import save_reviewed_segmentation

        case = self._current_or_raise()
        if self.loaded is None or case.task != "segmentation":
            raise ReviewError("Only a shown segmentation case has a pancreas to correct.")
        node = segmentation_node or self.loaded.reviewed_segmentation or self.loaded.segmentation
        return save_reviewed_segmentation(self.worklist, case, node, self.loaded.background, self.reviewer)

    def close(self) -> None:
        unload_case(self.scene, self.loaded)
        self.loaded = None

    def _current_or_raise(self) -> ReviewCase:
        if not self.reviewer:
            raise ReviewError("Give the reviewer's name first.")
        if self.current is None:
            raise ReviewError("No case is shown.")
        return self.current

    def _reviewed_file(self, case: ReviewCase) -> Optional[Path]:
        verdict = self.verdict_of(case) if self.reviewer else None
        if verdict is not None and verdict.edited_file:
            return self.worklist.folder / verdict.edited_file
        return None

    def _edited_file(self, case: ReviewCase) -> str:
        name = reviewed_segmentation_name(self.worklist, case.name, self.reviewer)
        return name if (self.worklist.folder / name).is_file() else ""
