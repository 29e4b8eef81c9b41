"""Ctrl-C and SIGTERM land where Python can take them: never inside an import, exec'd code or
PyTorch (where CI saw `terminate called ... KeyboardInterrupt` and exit -6, and exit -2 after
our "Cancelled" line)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from PancreasAILib.interrupts import Terminated, fragile, interrupts_at_safe_points, signals_deferred

ROOT = Path(__file__).resolve().parents[1]


def send(number: int = signal.SIGINT) -> None:
    signal.raise_signal(number)


@pytest.fixture(autouse=True)
def waited():
    """Each wait_for_it() that ended without the signal (the exception at the block's end
    would hide it)."""
    waits.clear()
    yield waits
    assert waits == [], "the signal did not come while our own code ran"


waits: list[str] = []


def wait_for_it() -> None:
    """Our own code, where the held signal lands (it is tried again every 20 ms)."""
    for _ in range(500):
        time.sleep(0.002)
    waits.append("in vain")


def test_a_signal_during_an_import_comes_after_the_module_is_whole(tmp_path, monkeypatch):
    (tmp_path / "slow_module.py").write_text(textwrap.dedent("""
        import signal
        signal.raise_signal(signal.SIGINT)
        LOADED = [n for n in range(1000)]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_at_safe_points():
            import slow_module
            reached.append(len(slow_module.LOADED))
            wait_for_it()
    assert reached == [1000]
    assert len(sys.modules.pop("slow_module").LOADED) == 1000


def test_a_signal_during_a_long_import_still_waits_for_its_end(tmp_path, monkeypatch):
    """The retries every 20 ms look at the running code again; none lands inside the import."""
    (tmp_path / "slower_module.py").write_text(textwrap.dedent("""
        import signal, time
        signal.raise_signal(signal.SIGINT)
        until = time.monotonic() + 0.2
        while time.monotonic() < until:
            pass
        LOADED = True
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(KeyboardInterrupt) as caught:
        with interrupts_at_safe_points():
            __import__("slower_module")
            wait_for_it()
    assert sys.modules.pop("slower_module").LOADED
    assert caught.value.__context__ is None  # one clean interruption, nothing went wrong first


def test_nested_blocks_keep_the_outer_one_working(tmp_path, monkeypatch):
    (tmp_path / "late_module.py").write_text("import signal\nsignal.raise_signal(signal.SIGINT)\nLOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        with interrupts_at_safe_points():
            with interrupts_at_safe_points():
                pass
            __import__("late_module")
            wait_for_it()
    assert sys.modules.pop("late_module").LOADED


def test_on_another_thread_the_blocks_do_nothing():
    import threading

    errors = []

    def work():
        try:
            with interrupts_at_safe_points(), signals_deferred():
                pass
        except BaseException as error:  # noqa: B036 (reported below)
            errors.append(error)

    before = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert errors == [] and signal.getsignal(signal.SIGINT) is before


def test_a_signal_in_execd_code_comes_after_exec_returns():
    namespace: dict = {}
    with pytest.raises(KeyboardInterrupt):
        with interrupts_at_safe_points():
            exec("import signal\nsignal.raise_signal(signal.SIGINT)\nafter = 1", namespace)
            namespace["ours"] = True
            wait_for_it()
    assert namespace["after"] == 1 and namespace["ours"]


def test_a_signal_inside_pytorch_waits_until_pytorch_returns():
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(5)])
    visited = []

    def visit(module):  # called by torch.nn.Module.apply: a torch frame is below us
        if not visited:
            send(signal.SIGTERM)
        visited.append(module)

    with pytest.raises(Terminated):
        with interrupts_at_safe_points():
            model.apply(visit)
            visited.append("ours")
            wait_for_it()
    assert len(visited) == 7  # the five layers, the Sequential, then our line


def test_our_own_code_is_interrupted_at_once():
    reached = []
    with pytest.raises(KeyboardInterrupt) as caught:
        with interrupts_at_safe_points():
            send()
            for _ in range(10**6):  # a retry would let this run on
                reached.append(1)
    assert len(reached) < 10
    assert caught.value.__context__ is None


def test_a_caller_in_execd_code_does_not_hold_the_signal_back():
    """`python -c`, Slicer's console and `exec` run our commands from exec'd code: only frames
    above the block count."""
    with pytest.raises(KeyboardInterrupt):
        exec("with interrupts_at_safe_points():\n"
             "    with interrupts_at_safe_points():\n"  # an inner block changes nothing
             "        pass\n"
             "    send()\n"
             "    wait_for_it()", globals())


def test_fragile_recognises_the_three_places():
    here = sys._getframe()
    assert not fragile(here)
    assert fragile(eval("__import__('sys')._getframe()"))
    torch = pytest.importorskip("torch")
    frames = []
    torch.nn.Linear(1, 1).apply(lambda module: frames.append(sys._getframe()))
    assert fragile(frames[0])


def test_signals_deferred_holds_even_our_own_code_and_raises_at_its_end():
    seen = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_at_safe_points():
            with signals_deferred():
                send()
                seen.append("inside")
            seen.append("after")
    assert seen == ["inside"]


def test_signals_deferred_on_its_own_restores_the_handlers_it_found():
    before = {n: signal.getsignal(n) for n in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    with pytest.raises(Terminated):
        with signals_deferred():
            send(signal.SIGTERM)
    assert {n: signal.getsignal(n) for n in before} == before


def test_the_first_signal_wins_and_none_is_left_for_later():
    with pytest.raises(Terminated):
        with signals_deferred():
            send(signal.SIGTERM)
            send(signal.SIGINT)
    with interrupts_at_safe_points():
        pass  # a leftover would be raised here


def run_python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "PancreasAI"))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=120, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_ctrl_c_in_execd_code_still_exits_130():
    """CPython marks a KeyboardInterrupt raised in exec'd code as unhandled even once caught,
    and then kills itself with SIGINT (exit -2) instead of returning our 130."""
    result = run_python("""
        import sys
        from PancreasAILib.cli_support import run_command

        def work():
            exec("import signal\\nsignal.raise_signal(signal.SIGINT)\\nx = 1")
            return 0

        sys.exit(run_command(work))
    """)
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip() == "Cancelled: nothing partial was left; results finished before are kept."


def test_sigterm_during_an_import_exits_143_in_one_line(tmp_path):
    (tmp_path / "slow_module.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n")
    result = run_python(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from PancreasAILib.cli_support import run_command

        def work():
            import slow_module
            return 0

        sys.exit(run_command(work))
    """)
    assert result.returncode == 143, result.stderr
    assert result.stderr.strip().startswith("Stopped (SIGTERM)")


def test_a_finished_block_leaves_no_timer_behind():
    """A retry timer left running would end the process with SIGALRM after our command."""
    result = run_python("""
        import signal, time
        from PancreasAILib.interrupts import interrupts_at_safe_points

        with interrupts_at_safe_points():
            pass
        time.sleep(1.3)
        print("still here")
    """)
    assert result.returncode == 0 and result.stdout.strip() == "still here", result


def test_no_retry_timer_is_left_running_in_this_process():
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts_at_safe_points():
                send()
                wait_for_it()
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)  # a leftover would end the test run with SIGALRM
