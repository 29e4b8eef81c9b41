"""Tasks and runners (PancreasAILib.tasks, processes, runners) with real processes and real
command lines: what the Slicer GUI relies on, without the application."""

import os
import sys
import time
from pathlib import Path

import pytest

from PancreasAILib.processes import SubprocessProcess, descendant_process_ids
from PancreasAILib.runners import BackgroundRunner, InProcessRunner

SCRIPT_PROGRESS = (
    "import json, sys, time\n"
    "for step in range(3):\n"
    "    print(json.dumps({'progress': step / 3, 'status': f'step {step}'}), flush=True)\n"
    "    time.sleep(0.05)\n"
    "print(json.dumps({'message': 'all done'}), flush=True)\n")


def _outcomes():
    calls = {"progress": [], "finished": []}
    return calls, dict(on_progress=lambda fraction, status: calls["progress"].append((fraction, status)),
                       on_finished=lambda ok, message: calls["finished"].append((ok, message)))


def _module(tmp_path: Path, name: str, source: str) -> str:
    """A tiny package `name` whose __main__ runs `source`; returns its parent folder."""
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "__main__.py").write_text(source, encoding="utf-8")
    return str(tmp_path)


def test_a_background_task_reports_progress_and_success_through_a_real_process(tmp_path):
    calls, handlers = _outcomes()
    task = BackgroundRunner().new_task("progress_demo", [], [_module(tmp_path, "progress_demo", SCRIPT_PROGRESS)],
                                       **handlers)
    task.start()

    assert task.wait_for_finished(60000)
    assert [status for _, status in calls["progress"]] == ["step 0", "step 1", "step 2"]
    assert calls["finished"] == [(True, "all done")]
    assert not task.is_running()


def test_a_background_task_says_why_a_missing_package_failed():
    calls, handlers = _outcomes()
    task = BackgroundRunner().new_task("PancreasAINoSuchPackage", [], **handlers)
    task.start()

    assert task.wait_for_finished(60000)
    (ok, message), = calls["finished"]
    assert not ok and "PancreasAINoSuchPackage" in message


def test_a_program_that_cannot_start_finishes_at_once(tmp_path):
    calls, handlers = _outcomes()
    task = BackgroundRunner(python=str(tmp_path / "no-python")).new_task("json.tool", [], **handlers)
    task.start()

    assert task.wait_for_finished(1000)
    (ok, message), = calls["finished"]
    assert not ok and "Could not start" in message and not task.is_running()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
def test_cancel_stops_a_launcher_and_its_child(tmp_path):
    """PythonSlicer is a launcher whose child runs the code: both must stop."""
    launcher = ("import subprocess, sys\n"
                "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
                "print('started', flush=True)\n"
                "child.wait()\n")
    calls, handlers = _outcomes()
    task = BackgroundRunner().new_task("launcher_demo", [], [_module(tmp_path, "launcher_demo", launcher)],
                                       **handlers)
    task.start()
    deadline = time.monotonic() + 60
    tree = []
    while not tree and time.monotonic() < deadline:
        task.process.poll(0.05)
        tree = descendant_process_ids(task.process_id())
    assert tree, "the launcher did not start its child"

    task.cancel()
    assert task.wait_for_finished(30000)

    assert calls["finished"] == [(False, "Cancelled.")] and task.cancelled
    for pid in tree:
        deadline = time.monotonic() + 30
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(pid), f"process {pid} survived the cancel"


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_output_in_pieces_reaches_the_listener_whole_and_in_the_callers_thread(tmp_path):
    import threading

    source = ("import sys, time\n"
              "sys.stdout.write('{\"progress\": 0.5, \"sta'); sys.stdout.flush(); time.sleep(0.2)\n"
              "sys.stdout.write('tus\": \"half\"}\\n'); sys.stdout.flush()\n")
    threads = []
    calls, handlers = _outcomes()
    progress = handlers["on_progress"]
    handlers["on_progress"] = lambda f, s: (threads.append(threading.current_thread()), progress(f, s))
    task = BackgroundRunner().new_task("pieces_demo", [], [_module(tmp_path, "pieces_demo", source)], **handlers)
    task.start()

    assert task.wait_for_finished(60000)
    assert calls["progress"] == [(0.5, "half")]
    assert threads == [threading.current_thread()]


def test_the_background_environment_puts_the_shared_and_module_folders_first():
    runner = BackgroundRunner("/bin/python", {"PYTHONPATH": "/site", "HOME": "/home/u"})
    environment = runner.task_environment(["/extension/IPMNRisk", "/extension/IPMNRisk"])
    paths = environment["PYTHONPATH"].split(os.pathsep)
    assert paths[1:] == ["/extension/IPMNRisk", "/site"] and Path(paths[0], "PancreasAILib").is_dir()
    assert (environment["HOME"], environment["PYTHONUNBUFFERED"]) == ("/home/u", "1")


def test_an_in_process_task_runs_the_command_line_and_keeps_the_exception(tmp_path, random_monet_card):
    from PancreasAILib.errors import InputError
    from PancreasAILib.volume import Volume
    from PancreasAILib.volume_io import write_volume
    import numpy as np

    blank = write_volume(Volume(np.zeros((2, 40, 40), np.int16), np.eye(4)), tmp_path / "blank.nrrd")
    calls, handlers = _outcomes()
    task = InProcessRunner().new_task(
        "PancreasSegMoNetLib", ["segment", str(blank), "--output", str(tmp_path / "out"), "--model",
                                str(random_monet_card.card_path)], **handlers)
    task.start()  # returns when done

    (ok, message), = calls["finished"]
    assert not ok and "same value (0) everywhere" in message
    assert isinstance(task.error, InputError) and str(task.error) == message
    assert any("Model: monet-random" in text for text in task.messages)


def test_an_in_process_task_cancelled_from_its_progress_stops_before_any_file(tmp_path, small_ct_phantom,
                                                                               random_monet_card):
    from PancreasAILib.volume import Volume
    from PancreasAILib.volume_io import write_volume

    ct = write_volume(Volume(small_ct_phantom.hu, small_ct_phantom.ijk_to_ras), tmp_path / "ct.nrrd")
    calls, handlers = _outcomes()
    task = InProcessRunner().new_task(
        "PancreasSegMoNetLib", ["segment", str(ct), "--output", str(tmp_path / "out"), "--model",
                                str(random_monet_card.card_path)],
        on_progress=lambda fraction, status: task.cancel(), on_finished=handlers["on_finished"])
    task.start()

    assert calls["finished"] == [(False, "Cancelled.")] and task.cancelled
    assert [path.name for path in (tmp_path / "out").iterdir()] == []


def test_a_subprocess_reports_its_end_once_even_when_polled_again():
    ended = []

    class Listener:
        on_standard_output = on_standard_error = staticmethod(lambda data: None)
        on_failed_to_start = staticmethod(lambda reason: ended.append(reason))

        @staticmethod
        def on_process_finished(code, crashed):
            ended.append((code, crashed))

    process = SubprocessProcess()
    process.start(sys.executable, ["-c", "raise SystemExit(3)"], dict(os.environ), Listener())
    assert process.wait_for_finished(30000)
    assert process.poll() and process.wait_for_finished(10)
    assert ended == [(3, False)]


# --- ProcessTask, over a scripted stand-in for its Process ------------------------------------------

class ScriptedProcess:
    """Plays the part of a Process (QtProcess in Slicer): the test writes its output and ends it."""

    def __init__(self) -> None:
        self.killed = False
        ScriptedProcess.last = self

    def start(self, program, arguments, environment, listener) -> None:
        self.command, self.environment, self.listener = [program, *arguments], dict(environment), listener

    def process_id(self) -> int:
        return 0

    def kill(self) -> None:
        self.killed = True

    def write_stdout(self, data: bytes) -> None:
        self.listener.on_standard_output(data)

    def write_stderr(self, data: bytes) -> None:
        self.listener.on_standard_error(data)

    def exit(self, code: int, crashed: bool = False) -> None:
        self.listener.on_process_finished(code, crashed)


@pytest.fixture
def scripted_task():
    """A ProcessTask factory whose process is a ScriptedProcess; returns (task, process, calls)."""
    from PancreasAILib.runners import BackgroundRunner

    def start(package: str = "PancreasSegMoNetLib", arguments=("segment", "in.nrrd"), python_paths=()):
        calls = {"progress": [], "finished": []}
        runner = BackgroundRunner("/slicer/bin/PythonSlicer", {"PYTHONPATH": "/slicer/lib"}, ScriptedProcess)
        task = runner.new_task(
            package, arguments, python_paths,
            on_progress=lambda fraction, status: calls["progress"].append((fraction, status)),
            on_finished=lambda ok, message: calls["finished"].append((ok, message)))
        task.start()
        return task, ScriptedProcess.last, calls

    return start


def test_background_task_runs_the_package_with_the_module_folders_on_pythonpath(scripted_task):
    from PancreasAILib.runners import SHARED_DIR

    task, process, _ = scripted_task(python_paths=["/extension/PancreasSegMoNet"])

    assert process.command == ["/slicer/bin/PythonSlicer", "-m", "PancreasSegMoNetLib", "segment", "in.nrrd"]
    assert process.environment["PYTHONPATH"].split(os.pathsep) == [
        SHARED_DIR, "/extension/PancreasSegMoNet", "/slicer/lib"]
    assert Path(SHARED_DIR, "PancreasAILib", "__init__.py").is_file()


def test_background_task_reports_progress_lines_split_across_reads(scripted_task):
    task, process, calls = scripted_task()

    process.write_stdout(b'{"progress": 0.2, "sta')
    process.write_stdout(b'tus": "Reading"}\nnot json\n{"progress": 0.9, "status": "Writing"}\n')

    assert calls["progress"] == [(0.2, "Reading"), (0.9, "Writing")]


def test_background_task_success_reports_the_last_message_once(scripted_task):
    task, process, calls = scripted_task()

    process.write_stdout(b'{"message": "Model: demo."}\n{"message": "case: pancreas 61.0 ml"}')
    process.exit(0)
    process.exit(0)

    assert calls["finished"] == [(True, "case: pancreas 61.0 ml")]
    assert not task.is_running()
    assert task.messages == ["Model: demo.", "case: pancreas 61.0 ml"]


def test_background_task_failure_reports_what_the_command_line_said(scripted_task):
    task, process, calls = scripted_task()

    process.write_stderr(b"Traceback (most recent call last):\nerror: The CT vol")
    process.write_stdout(b'{"message": "input: FAILED: No pancreas-sized structure was found."}\n')
    process.write_stderr(b"ume holds no image data.\n")
    process.exit(2)

    assert calls["finished"] == [
        (False, "The CT volume holds no image data.\nNo pancreas-sized structure was found.")]


def test_a_crashed_process_is_never_a_success(scripted_task):
    task, process, calls = scripted_task()

    process.write_stderr(b"Segmentation fault")
    process.exit(0, crashed=True)

    assert calls["finished"][0][0] is False and "Segmentation fault" in calls["finished"][0][1]


def test_cancelled_background_task_finishes_as_cancelled(scripted_task):
    task, process, calls = scripted_task()

    task.cancel()
    process.exit(9, crashed=True)

    assert (task.cancelled, process.killed, calls["finished"]) == (True, True, [(False, "Cancelled.")])


def test_an_unexplained_stop_gives_the_exit_code_and_the_last_lines_said(scripted_task):
    task, process, calls = scripted_task()
    process.write_stderr(b"Traceback (most recent call last):\n  File x\nMemoryError\n")
    process.exit(1)

    silent, silent_process, silent_calls = scripted_task()
    silent_process.exit(3)

    assert calls["finished"] == [(False, "The computation stopped unexpectedly (exit code 1).\n\n"
                                         "Traceback (most recent call last):\nFile x\nMemoryError")]
    assert silent_calls["finished"] == [(False, "The computation stopped unexpectedly (exit code 3).")]


def test_a_task_knows_its_process_only_once_started():
    from PancreasAILib.runners import BackgroundRunner

    task = BackgroundRunner("/slicer/bin/PythonSlicer", {}, ScriptedProcess).new_task("json.tool", [])
    assert task.process_id() is None and not task.wait_for_started(10) and not task.is_running()
    task.start()
    assert task.process_id() == 0 and task.is_running()


def test_a_started_process_says_so(tmp_path):
    task = BackgroundRunner().new_task("json.tool", ["--help"])
    task.start()
    assert task.wait_for_started(30000)
    assert task.wait_for_finished(60000)


def test_a_program_that_cannot_start_is_a_failure_not_a_cancel(tmp_path):
    calls, handlers = _outcomes()
    task = BackgroundRunner(python=str(tmp_path / "no-python")).new_task("json.tool", [], **handlers)
    task.start()

    (ok, message), = calls["finished"]
    assert ok is False and not task.cancelled and message.startswith(f"Could not start {tmp_path / 'no-python'}: ")


def test_an_in_process_task_passes_the_status_of_each_step(tmp_path, small_ct_phantom, random_monet_card):
    from PancreasAILib.volume import Volume
    from PancreasAILib.volume_io import write_volume

    ct = write_volume(Volume(small_ct_phantom.hu, small_ct_phantom.ijk_to_ras), tmp_path / "ct.nrrd")
    calls, handlers = _outcomes()
    task = InProcessRunner().new_task(
        "PancreasSegMoNetLib", ["segment", str(ct), "--output", str(tmp_path / "out"), "--model",
                                str(random_monet_card.card_path)], **handlers)
    task.start()

    statuses = [status for _, status in calls["progress"]]
    assert statuses[0] == "Loading model" and statuses[-1] == "Done" and len(statuses) >= 4
    assert [fraction for fraction, _ in calls["progress"]] == sorted(fraction for fraction, _ in calls["progress"])
    assert calls["finished"][0][0] is True


def test_waiting_for_a_task_never_started_returns_at_once():
    from PancreasAILib.runners import BackgroundRunner

    task = BackgroundRunner("/slicer/bin/PythonSlicer", {}, ScriptedProcess).new_task("json.tool", [])
    assert task.wait_for_finished(10) is False  # the process is not even asked


def test_an_unexpected_fault_of_the_work_is_kept_for_the_caller(monkeypatch):
    from PancreasSegMoNetLib import cli

    def faulty(argv, sink):
        raise RuntimeError("a bug in the work")

    monkeypatch.setattr(cli, "main", faulty)
    calls, handlers = _outcomes()
    task = InProcessRunner().new_task("PancreasSegMoNetLib", ["segment"], **handlers)
    task.start()

    assert calls["finished"] == [(False, "a bug in the work")]
    assert isinstance(task.error, RuntimeError) and not task.cancelled


@pytest.mark.parametrize("stdout, stderr, code, crashed, expected", [
    pytest.param(b'{"message": "case: FAILED: the model FAILED: to load"}\n', b"", 1, False,
                 "the model FAILED: to load", id="a reason that itself says FAILED is kept whole"),
    pytest.param(b"", b"error: The disk is full", 2, False, "The disk is full",
                 id="the last error line counts without a newline"),
    pytest.param(b"", b"", 0, True, "The computation stopped unexpectedly (exit code -1).",
                 id="a crash reported as exit code 0 reads as -1"),
])
def test_the_failure_message_says_what_the_command_said(scripted_task, stdout, stderr, code, crashed, expected):
    task, process, calls = scripted_task()

    process.write_stdout(stdout)
    process.write_stderr(stderr)
    process.exit(code, crashed)

    assert calls["finished"] == [(False, expected)]
