"""The apply / progress / status / cancel widgets both modules show around a running task."""

from typing import Callable, Sequence

import slicer
from slicer.i18n import tr as _

from .dependencies import ensureDependencies, offerEngine

class BackgroundRunPanel:
    """The apply button, progress bar, status label and cancel button of a module whose work
    runs as a task (`PancreasAILib.tasks`): starts the task, shows its progress and outcome
    (warnings included), cancels it, and keeps the buttons' state and tool tips in step.

    missingInput() - what the user still has to choose, "" when the work can start.
    applyToolTip, runningToolTip - the apply button's tool tip when it can start / while running.
    startFailedMessage - shown with the error when the task cannot start.
    failedMessage - shown when the task failed; "{reason}" is replaced by what it said.
    """

    def __init__(self, applyButton, cancelButton, progressBar, statusLabel, missingInput: Callable[[], str],
                 applyToolTip: str, runningToolTip: str, startFailedMessage: str, failedMessage: str) -> None:
        self.applyButton = applyButton
        self.cancelButton = cancelButton
        self.progressBar = progressBar
        self.statusLabel = statusLabel
        self.missingInput = missingInput
        self.applyToolTip = applyToolTip
        self.runningToolTip = runningToolTip
        self.startFailedMessage = startFailedMessage
        self.failedMessage = failedMessage
        self.task = None  # the running task, if any
        self.preparing = False  # installing packages before the task (pip lets clicks through)
        self._cancelledWhilePreparing = False
        cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.showProgress(0.0, _("Ready."))

    def isRunning(self) -> bool:
        return self.task is not None

    def showProgress(self, fraction: float, status: str) -> None:
        """Show `fraction` (0 to 1) of the work done and what is being done."""
        self.progressBar.value = round(100 * fraction)
        self.statusLabel.text = status

    def updateButtons(self) -> None:
        """Enable cancel while running, apply when nothing runs or installs and no input is
        missing; the apply button's tool tip says why it is disabled."""
        self.cancelButton.enabled = self.isRunning()
        busy = self.isRunning() or self.preparing
        reason = self.runningToolTip if busy else self.missingInput()
        self.applyButton.enabled = not reason
        self.applyButton.toolTip = reason or self.applyToolTip

    def run(self, startTask: Callable[[], object]) -> None:
        """Offer to install missing packages (and, once, OpenVINO), then follow the task
        `startTask()` starts. The task's onFinished must call `taskFinished`. An error while
        starting is shown to the user, then raised on (as `slicer.util.tryWithErrorDisplay` does).

        pip's progress lets Qt events through: a second click while installing is ignored, and
        a scene closed meanwhile (`cancel()`) means the task is not started at all."""
        if self.isRunning() or self.preparing:
            return
        self.preparing, self._cancelledWhilePreparing = True, False
        self.updateButtons()
        try:
            ready = ensureDependencies(slicer.util.mainWindow())
            if ready:
                offerEngine(slicer.util.mainWindow())  # optional: the run goes on either way
        finally:
            self.preparing = False
            self.updateButtons()
        if not ready:
            return
        if self._cancelledWhilePreparing:
            self.showProgress(0.0, _("Cancelled; the scene was not changed."))
            return
        with slicer.util.tryWithErrorDisplay(self.startFailedMessage, waitCursor=True):
            task = startTask()
            # A process that cannot start (on Windows) has already ended, and taskFinished
            # has shown why: only a task still running is followed.
            if task.is_running():
                self.task = task
                self.showProgress(0.0, _("Starting..."))
        self.updateButtons()

    def cancel(self) -> None:
        """Stop the running task, if any, without a word (for closing scenes and modules); while
        packages install, the task will not start."""
        if self.preparing:
            self._cancelledWhilePreparing = True
        if self.task is not None:
            self.task.cancel()

    def onCancelButton(self) -> None:
        if self.task is not None:
            self.showProgress(self.progressBar.value / 100.0, _("Cancelling..."))
            self.task.cancel()

    def showDone(self, summary: str, warnings: Sequence[str] = ()) -> None:
        """Show a finished task's result: `summary`, then each warning on a line of its own
        (the status label's tool tip repeats them, for long ones)."""
        lines = [summary, *(_("Warning: {warning}").format(warning=warning) for warning in warnings)]
        self.showProgress(1.0, "\n".join(lines))
        self.statusLabel.toolTip = "\n\n".join(warnings)

    def taskFinished(self, succeeded: bool, errorMessage: str) -> None:
        """Forget the ended task and show a failure (status and message box) or a cancellation
        (no `errorMessage`); on success the caller shows its result."""
        self.task = None
        self.updateButtons()
        if succeeded:
            return
        if errorMessage:
            self.showProgress(0.0, _("Failed."))
            slicer.util.errorDisplay(self.failedMessage.format(reason=errorMessage))
        else:
            self.showProgress(0.0, _("Cancelled; the scene was not changed."))
