"""Faults and bad input on both command lines, run as a user runs them: a process of its own, in a
working directory of its own, with relative paths.

Every case asserts the exit code, the one-line message, that no traceback is shown, that nothing
partial is left, and that every file the user had is still there unchanged.
"""

import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from PancreasAILib.volume import Volume
from PancreasAILib.volume_io import read_volume, write_volume

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIRS = ("PancreasAI", "PancreasSegMoNet", "IPMNRisk")


# --- running a command as a user does -------------------------------------------------------

def start(module: str, *args, cwd: Path, env_extra=None, prefix=(), **popen):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(ROOT / d) for d in MODULE_DIRS))
    env.update(env_extra or {})
    return subprocess.Popen([*prefix, sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def run(module: str, *args, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    process = start(module, *args, cwd=cwd, **kwargs)
    stdout, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def segment(*args, cwd: Path, **kwargs):
    return run("PancreasSegMoNetLib", "segment", *args, cwd=cwd, **kwargs)


def assess(*args, cwd: Path, **kwargs):
    return run("IPMNRiskLib", "assess", *args, cwd=cwd, **kwargs)


def assert_one_line_error(result, exit_code: int, pattern: str) -> None:
    """Exit code, exactly one line on stderr matching `pattern`, no traceback anywhere."""
    assert result.returncode == exit_code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert re.search(pattern, lines[0]), lines[0]


def assert_case_failed(result, case: str, pattern: str) -> None:
    """A failing case in a batch: exit 1, one `case: FAILED: ...` line, no traceback."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    failed = [line for line in result.stdout.splitlines() if line.startswith(f"{case}: FAILED: ")]
    assert len(failed) == 1, result.stdout
    assert re.search(pattern, failed[0]), failed[0]


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its SHA256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_user_files_kept(before: dict, folder: Path) -> None:
    after = snapshot(folder)
    assert {name: after.get(name) for name in before} == before


def partial_leftovers(folder: Path) -> list:
    return [str(p) for p in folder.rglob("*") if p.name.startswith((".partial-", ".pancreasai-write-test"))]


# --- the user's files -------------------------------------------------------------------------

@pytest.fixture
def workdir(tmp_path, small_ct_phantom, random_monet_card):
    """A user's folder: a CT and a copy of a model, referred to by relative names."""
    ct = small_ct_phantom
    write_volume(Volume(ct.hu, ct.ijk_to_ras), tmp_path / "ct.nii.gz")
    for source in (random_monet_card.weights_path, random_monet_card.card_path):
        shutil.copy(source, tmp_path / source.name)
    return tmp_path


@pytest.fixture
def mr_workdir(tmp_path, small_mr_phantom, random_vit_card):
    p = small_mr_phantom
    write_volume(Volume(p.t1, p.ijk_to_ras), tmp_path / "t1.nii.gz")
    write_volume(Volume(p.t2, p.ijk_to_ras), tmp_path / "t2.nii.gz")
    for source in (random_vit_card.weights_path, random_vit_card.card_path):
        shutil.copy(source, tmp_path / source.name)
    center, size = p.pancreas_box_ras
    return tmp_path, [f"--roi-center={','.join(map(str, center))}", f"--roi-size={','.join(map(str, size))}"]


MONET = "monet-random.safetensors"
VIT = "vit-random.safetensors"


def vit_model(folder: Path) -> str:
    return next(p.name for p in folder.glob("*.safetensors"))


# --- paths as users type them ------------------------------------------------------------------

def test_segment_with_relative_home_spaced_and_non_ascii_paths(workdir):
    (workdir / "scans ü").mkdir()
    shutil.copy(workdir / "ct.nii.gz", workdir / "scans ü" / "patient 7 é.nii.gz")
    before = snapshot(workdir)
    result = segment("scans ü/patient 7 é.nii.gz", "~/résultats 1", "-o", "~/résultats 1",
                     "--model", MONET, cwd=workdir, env_extra={"HOME": str(workdir)})
    # "~/résultats 1" as an input does not exist: that case fails alone, the other is written.
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    written = workdir / "résultats 1"
    assert read_volume(written / "patient 7 é_pancreas.nii.gz").shape == (16, 128, 128)
    assert (written / "patient 7 é_pancreas.seg.nrrd").stat().st_size > 0
    assert_user_files_kept(before, workdir)


def test_ipmn_assess_and_batch_write_into_relative_folders(mr_workdir):
    folder, region = mr_workdir
    model = vit_model(folder)
    result = assess("--t1", "t1.nii.gz", "--t2", "t2.nii.gz", *region, "-o", "results/", "--model", model,
                    "--no-tta", cwd=folder)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (folder / "results").iterdir()) == [
        "t2_ipmn_grid.png", "t2_ipmn_heatmap.nrrd", "t2_ipmn_result.json", "t2_ipmn_scene.mrb"]
    center, size = (r.split("=")[1] for r in region)
    (folder / "cases.csv").write_text(f'case,t1,t2,roi_center,roi_size\nA,t1.nii.gz,t2.nii.gz,"{center}","{size}"\n')
    result = run("IPMNRiskLib", "batch", "cases.csv", "-o", "out", "--model", model, "--no-tta", "--no-scene",
                 cwd=folder)
    assert result.returncode == 0, result.stderr
    assert (folder / "out" / "results.csv").read_text(encoding="utf-8").count("\n") == 2
    assert partial_leftovers(folder) == []


# --- the output folder ----------------------------------------------------------------------------

def test_an_output_folder_that_is_a_file_is_refused_before_any_work(workdir):
    (workdir / "results").write_text("my notes")
    before = snapshot(workdir)
    # The model does not exist either: the folder is checked first, before anything is loaded.
    result = segment("ct.nii.gz", "-o", "results", "--model", "missing.safetensors", cwd=workdir)
    assert_one_line_error(result, 2, r"^error: The output .*results is a file, not a folder")
    assert_user_files_kept(before, workdir)


def test_ipmn_output_folder_that_is_a_file_is_refused(mr_workdir):
    folder, region = mr_workdir
    (folder / "results").write_text("my notes")
    result = assess("--t1", "t1.nii.gz", "--t2", "t2.nii.gz", *region, "-o", "results", cwd=folder)
    assert_one_line_error(result, 2, r"is a file, not a folder")


def drop_permission_override():
    """A command prefix under which root obeys file permissions, or None where that cannot be had."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    probe = subprocess.run([setpriv, "--bounding-set", "-dac_override,-dac_read_search", "true"],
                           capture_output=True)
    return (setpriv, "--bounding-set", "-dac_override,-dac_read_search") if probe.returncode == 0 else None


def test_an_unwritable_output_folder_is_refused_before_any_work(workdir):
    prefix = drop_permission_override()
    if prefix is None:
        pytest.skip("cannot drop root's permission override here (setpriv missing)")
    locked = workdir / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = segment("ct.nii.gz", "-o", "locked", "--model", MONET, cwd=workdir, prefix=prefix)
    finally:
        locked.chmod(0o755)
    assert_one_line_error(result, 2, r"Cannot write in the output folder .*locked \(Permission denied\)")
    assert list(locked.iterdir()) == []


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a full file system: a 512 kB tmpfs where root may mount one."""
    mount = tmp_path / "small disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
                             capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        filler = mount / "someone else's file.bin"
        with open(filler, "wb", buffering=0) as stream:  # fill it to the last byte
            try:
                while True:
                    stream.write(b"x" * 1024)
            except OSError:
                pass
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_in_one_line_and_leaves_nothing_partial(workdir, small_disk):
    before = snapshot(small_disk)
    # The demo model's small mask fits in ITK's buffers: the writers then report success for
    # empty files, so only reading them back finds the problem.
    result = segment(str(workdir / "ct.nii.gz"), "-o", str(small_disk), cwd=workdir)
    assert_one_line_error(result, 2, r"^error: .*(disk is full|could not be read back|Could not write)")
    assert "full" in result.stderr
    assert sorted(p.name for p in small_disk.iterdir()) == ["someone else's file.bin"]
    assert_user_files_kept(before, small_disk)


def test_a_full_disk_stops_an_ipmn_batch_in_one_line(mr_workdir, small_disk):
    folder, region = mr_workdir
    result = assess("--t1", str(folder / "t1.nii.gz"), "--t2", str(folder / "t2.nii.gz"), *region,
                    "-o", str(small_disk), "--model", str(folder / vit_model(folder)), "--no-tta", cwd=folder)
    assert_one_line_error(result, 2, r"^error: .*full")
    assert sorted(p.name for p in small_disk.iterdir()) == ["someone else's file.bin"]


# --- inputs that are not what they claim ----------------------------------------------------------

def damaged_copies(folder: Path) -> list:
    """(file name, what the message must say) for bad files made from the user's good CT."""
    good = (folder / "ct.nii.gz").read_bytes()
    (folder / "truncated.nii.gz").write_bytes(good[: len(good) * 2 // 3])
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    (folder / "bitflip.nii.gz").write_bytes(bytes(flipped))
    volume = read_volume(folder / "ct.nii.gz")
    raw = write_volume(volume, folder / "ct_raw.nii", compress=False)
    (folder / "truncated_raw.nii").write_bytes(raw.read_bytes()[:-5000])
    mha = write_volume(volume, folder / "ct.mha")
    (folder / "truncated_meta.mha").write_bytes(mha.read_bytes()[:-500])
    sheared = volume.ijk_to_ras.copy()
    sheared[:3, 1] += 0.3 * sheared[:3, 0]  # the j axis leans towards i
    write_nrrd_with_matrix(volume.array, sheared, folder / "sheared.nrrd")
    write_volume(volume.with_array(np.full(volume.shape, np.nan, np.float32)), folder / "nan.nii.gz")
    import SimpleITK as sitk

    image = sitk.ReadImage(str(folder / "ct.nii.gz"))
    sitk.WriteImage(sitk.JoinSeries([image, image]), str(folder / "series4d.nii.gz"))
    sitk.WriteImage(image[:, :, 0], str(folder / "slice2d.nii.gz"))
    return [
        ("series4d.nii.gz", r"has 4 dimensions .*choose a single 3D volume"),
        ("slice2d.nii.gz", r"has 2 dimensions .*a 3D volume is needed"),
        ("truncated.nii.gz", r"truncated.nii.gz is incomplete .*cut short"),
        ("bitflip.nii.gz", r"bitflip.nii.gz is incomplete .*damaged"),
        ("truncated_raw.nii", r"truncated_raw.nii is incomplete .*holds .* bytes of the"),
        ("truncated_meta.mha", r"truncated_meta.mha is incomplete .*cut short"),
        ("sheared.nrrd", r"axes are not perpendicular \(sheared by"),
        ("nan.nii.gz", r"not numbers"),
    ]


def write_nrrd_with_matrix(array: np.ndarray, ijk_to_ras: np.ndarray, path: Path) -> None:
    """A raw NRRD whose space directions are the columns of `ijk_to_ras` (LPS), shear and all."""
    lps = np.diag([-1.0, -1.0, 1.0]) @ ijk_to_ras[:3, :]
    directions = " ".join("(" + ",".join(f"{v:.6f}" for v in lps[:, n]) + ")" for n in range(3))
    k, j, i = array.shape
    header = (f"NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: {i} {j} {k}\n"
              f"space directions: {directions}\nkinds: domain domain domain\nendian: little\n"
              f"encoding: raw\nspace origin: ({','.join(f'{v:.6f}' for v in lps[:, 3])})\n\n")
    path.write_bytes(header.encode() + np.ascontiguousarray(array, "<i2").tobytes())


def test_damaged_and_impossible_inputs_are_refused_naming_the_file(workdir):
    bad_files = damaged_copies(workdir)
    before = snapshot(workdir)
    result = segment(*(name for name, _ in bad_files), "-o", "results", "--model", MONET, cwd=workdir)
    for name, pattern in bad_files:
        case = name.split(".")[0]
        failed = [line for line in result.stdout.splitlines() if line.startswith(f"{case}: FAILED: ")]
        assert len(failed) == 1 and re.search(pattern, failed[0]), (name, result.stdout)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    assert list((workdir / "results").iterdir()) == []
    assert_user_files_kept(before, workdir)


def test_ipmn_refuses_a_truncated_t2_and_a_sheared_t1(mr_workdir):
    folder, region = mr_workdir
    good = (folder / "t2.nii.gz").read_bytes()
    (folder / "t2_cut.nii.gz").write_bytes(good[: len(good) // 2])
    t1 = read_volume(folder / "t1.nii.gz")
    sheared = t1.ijk_to_ras.copy()
    sheared[:3, 2] += 0.2 * sheared[:3, 0]
    write_nrrd_with_matrix(t1.array.astype(np.int16), sheared, folder / "t1_sheared.nrrd")
    model = vit_model(folder)
    cut = assess("--t1", "t1.nii.gz", "--t2", "t2_cut.nii.gz", *region, "-o", "out", "--model", model, cwd=folder)
    assert_case_failed(cut, "t2_cut", r"t2_cut.nii.gz is incomplete")
    leaning = assess("--t1", "t1_sheared.nrrd", "--t2", "t2.nii.gz", *region, "-o", "out", "--model", model,
                     cwd=folder)
    assert_case_failed(leaning, "t2", r"axes are not perpendicular")
    assert list((folder / "out").iterdir()) == []


# --- two runs, one case name ------------------------------------------------------------------------

def test_two_runs_writing_one_case_never_mix_or_silently_replace(workdir):
    """Both start at once on the same case with different thresholds: one result wins whole."""
    runs = [start("PancreasSegMoNetLib", "segment", "ct.nii.gz", "-o", "results", "--model", MONET,
                  "--threshold", threshold, cwd=workdir) for threshold in ("0.3", "0.7")]
    outcomes = [(p.wait(timeout=600), *p.communicate()) for p in runs]
    codes = sorted(code for code, _, _ in outcomes)
    assert codes[0] == 0 and codes[1] in (1, 2), outcomes
    loser = next(out + err for code, out, err in outcomes if code != 0)
    assert "another run" in loser or "already exists" in loser
    assert "Traceback" not in loser
    seg = read_volume(workdir / "results" / "ct_pancreas.seg.nrrd").array
    labels = read_volume(workdir / "results" / "ct_pancreas.nii.gz").array
    np.testing.assert_array_equal(seg > 0, labels > 0)  # both files from the same run
    assert partial_leftovers(workdir) == []


# --- signals ------------------------------------------------------------------------------------------

def interrupt_at(workdir: Path, signal_number: int, delay: float, n_cases: int = 3):
    """Start a batch of `n_cases` CTs, send the signal `delay` s after the output folder appears."""
    inputs = []
    for n in range(n_cases):
        shutil.copy(workdir / "ct.nii.gz", workdir / f"case{n}.nii.gz")
        inputs.append(f"case{n}.nii.gz")
    out = workdir / f"out-{signal_number}-{delay:.2f}"
    # A shell starts background jobs with Ctrl-C ignored, and a child inherits that: give the
    # command line the default a user's terminal gives it.
    process = start("PancreasSegMoNetLib", "segment", *inputs, "-o", out.name, "--model", MONET, cwd=workdir,
                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not out.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(delay)
    process.send_signal(signal_number)
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout, stderr, out, inputs


def check_interrupted_run(code, stdout, stderr, out: Path, inputs, signal_number: int) -> None:
    expected = {signal.SIGINT: 130, signal.SIGTERM: 143}[signal_number]
    assert "Traceback" not in stdout + stderr, stderr
    if code != 0:  # it may have finished before the signal came
        assert code == expected, (code, stderr)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "nothing partial" in lines[0], stderr
    assert partial_leftovers(out.parent) == []
    for name in inputs:
        case = name[: -len(".nii.gz")]
        files = [out / f"{case}_pancreas.seg.nrrd", out / f"{case}_pancreas.nii.gz"]
        present = [f.exists() for f in files]
        assert present in ([True, True], [False, False]), (case, present)
        if all(present):
            assert read_volume(files[1]).shape == (16, 128, 128)


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_the_work_exits_in_one_line_leaving_nothing_partial(workdir, signal_number):
    code, stdout, stderr, out, inputs = interrupt_at(workdir, signal_number, delay=0.5)
    assert code == {signal.SIGINT: 130, signal.SIGTERM: 143}[signal_number], stderr
    check_interrupted_run(code, stdout, stderr, out, inputs, signal_number)


@pytest.mark.slow
def test_signals_at_random_moments_never_leave_half_a_result(workdir):
    chance = random.Random(20261129)
    for signal_number in (signal.SIGINT, signal.SIGTERM) * 4:
        delay = chance.uniform(0.0, 8.0)
        check_interrupted_run(*interrupt_at(workdir, signal_number, delay), signal_number)


# --- geometry on a volume node ----------------------------------------------------------------------

@pytest.mark.parametrize("spacing, shear, pattern", [
    ((0.8, 0.8, 0.0), 0.0, "voxel size of 0 mm along its K axis"),
    ((0.8, 0.8, 2.0), 0.4, "axes are not perpendicular"),
])
def test_impossible_grids_on_volume_nodes_are_refused_in_our_words(mrml_scene, small_ct_phantom, small_mr_phantom,
                                                                  spacing, shear, pattern):
    from PancreasAILib.errors import InputError
    from PancreasAILib.scene import add_volume_node, vtk_matrix
    from IPMNRiskLib import logic as ipmn_logic
    from PancreasSegMoNetLib import logic as monet_logic

    def node_with(array, name):
        node = add_volume_node(mrml_scene, Volume(array, np.eye(4)), name)
        matrix = np.diag([*spacing, 1.0])
        matrix[:3, 1] += shear * matrix[:3, 0]
        node.SetIJKToRASMatrix(vtk_matrix(matrix))
        return node

    ct = node_with(small_ct_phantom.hu, "CT")
    with pytest.raises(InputError, match=pattern):
        monet_logic.segment(ct)
    t1, t2 = node_with(small_mr_phantom.t1, "T1"), node_with(small_mr_phantom.t2, "T2")
    roi = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetCenter(10, 10, 10)
    roi.SetSize(20, 20, 20)
    with pytest.raises(InputError, match=pattern):
        ipmn_logic.assess(t1, t2, roi)


def test_a_model_under_the_home_folder_is_found_with_a_tilde(workdir, tmp_path):
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    for name in (MONET, MONET.replace(".safetensors", ".json")):
        shutil.copy(workdir / name, home / "models" / name)
    result = segment("ct.nii.gz", "-o", "out", "--model", f"~/models/{MONET}", cwd=workdir,
                     env_extra={"HOME": str(home)})
    assert result.returncode == 0, result.stderr
    assert (workdir / "out" / "ct_pancreas.nii.gz").exists()


def test_without_pytorch_the_message_says_how_to_get_it(workdir):
    """`sys.modules["torch"] = None` makes every `import torch` fail, as on a machine without it."""
    (workdir / "no_torch").mkdir()
    (workdir / "no_torch" / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    pythonpath = os.pathsep.join([str(workdir / "no_torch"), *(str(ROOT / d) for d in MODULE_DIRS)])
    result = segment("ct.nii.gz", "-o", "out", "--model", MONET, cwd=workdir, env_extra={"PYTHONPATH": pythonpath})
    assert_one_line_error(result, 2, r"^error: PyTorch is not installed.*pip install torch")
    assert list((workdir / "out").iterdir()) == []
