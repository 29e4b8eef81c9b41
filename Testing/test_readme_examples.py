"""The README's commands are tests: every code block of README.md is run here, or listed in
NOT_RUNNABLE with the reason and checked as far as it goes.

Each example runs as a user would type it: through bash, in a working folder of its own,
with relative paths, on input files made by the project's own phantom generators under the
names the example uses (see `readme_examples.Workspace`). Blocks are matched by their text:
editing an example in the README without editing its copy here fails, and so does a README
block that no test knows.

Long training commands run with the README's arguments followed by overrides that only
shorten them (argparse keeps the last value of an option): tiny phantoms, fewer epochs,
steps, patients and folds. Nothing is downloaded: the Hugging Face hub is offline and pip has
no index, so the commands that fetch weights are run until they ask for the download.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shlex
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from readme_examples import (ROOT, Workspace, block_text, code_spans, commands_of, console_example_problems, copy_of_demo_monet,
                             copy_of_demo_vit,
                             markdown_table_after, mr_study, readme_block, readme_blocks, readme_text,
                             with_arguments, write_cohort_files, write_ct, write_dicom_ct, write_folder_pair,
                             write_image, write_msd_folder, write_pancreas_segmentation)

MONET_INTENDED_USE = (
    "For demonstration and testing only, NOT for diagnosis: trained on synthetic CT phantoms made by "
    "PancreasAIPhantoms.ct; it has never seen a real patient's CT and will not segment real pancreases "
    "reliably. Train real weights with Resources/Training/train_monet.py on MSD Task07 or your own data.")
IPMN_INTENDED_USE = (
    "For demonstration and testing only, NOT for diagnosis or any clinical use: a small ViT trained on synthetic "
    "T1/T2 MRI phantoms made by PancreasAIPhantoms.mr; it has never seen a real patient's MRI. Train real weights "
    "with Resources/Training on a real cohort.")

#: The README's code blocks that the tests below run, by name, exactly as the README has them.
EXAMPLES = {
    "two commands": """
./pancreasai.sh demo    # set up .venv, then run the demo on the bundled sample
./pancreasai.sh test    # set up .venv, then run the test suite (23 to 26 minutes on 2 cores)
""",
    "more of the script": """
./pancreasai.sh setup                  # only set up .venv (nothing to do when it is up to date)
./pancreasai.sh test -m "not slow"     # options after "test" go to pytest; this skips the slow tests
./pancreasai.sh bench                  # the benchmarks; the tables go to output/bench/RESULTS.md
""",
    "demo on your own CT": """
./pancreasai.sh demo --ct my_ct.nii.gz --skip-ipmn --output my-demo
""",
    "pancreas-seg": """
pancreas-seg segment ct/*.nii.gz dicom/patient7/ --output results/
pancreas-seg segment cases/ --output results/ --model my-monet.safetensors --device gpu
pancreas-seg models          # the known models and the download cache
""",
    "ipmn-risk": """
ipmn-risk assess --t1 t1.nii.gz --t2 t2.nii.gz --roi-center=-10,45,12 --roi-size=90,60,50 -o results/
ipmn-risk assess --t1 patient8/t1.nrrd --t2 patient8/t2.nrrd --roi-mask patient8/pancreas.seg.nrrd --case patient8 -o results/
ipmn-risk batch cases.csv -o results/     # columns: case,t1,t2,roi_center,roi_size (or roi_mask)
""",
    "demo MR MoNet": """
python Resources/Training/train_monet.py --modality mr --phantoms 60 --input-size 128 \\
    --protocol ours --test-fraction 0.2 --loss dice+bce --epochs 40 --steps-per-epoch 40 \\
    --early-stopping-patience 8 \\
    --initial-weights PancreasSegMoNet/Resources/Models/monet-demo-phantom-v3.safetensors \\
    --output runs/demo/mr/monet-mr-demo-phantom-v1.safetensors \\
    --title "MoNet MR demo (T2 of synthetic MR phantoms; for demonstration and testing, not for diagnosis)" --intended-use "For demonstration and testing only, NOT for diagnosis: trained on the T2 images of synthetic MR phantoms (PancreasAIPhantoms.mr); it has never seen a real patient's MRI. It gives IPMNRisk's automatic region on the demo MR. Train real weights with Resources/Training/train_monet.py --modality mr --cyst-x DIR."
""",
    "MoNet on MRI": """
python Resources/Training/train_monet.py --modality mr --cyst-x data/Cyst-X --protocol ours --output runs/monet-mr/monet-mr.safetensors
python Resources/Training/evaluate_automatic_region.py --output automatic-region --segmentation-model runs/monet-mr/monet-mr.safetensors
""",
    "ipmn-risk automatic": """
ipmn-risk assess --t1 patient9/t1.nrrd --t2 patient9/t2.nrrd --roi-auto --case patient9 -o results/
""",
    "Cyst-X": """
python Resources/Training/crossvalidate_ipmn.py --cyst-x data/Cyst-X --pretrained-hub --output runs/cyst-x-cv
python Resources/Training/crossvalidate_ipmn.py --cyst-x data/Cyst-X --folds-by centre --pretrained-hub --output runs/cyst-x-loco
python Resources/Training/crossvalidate_ipmn.py --cyst-x data/Cyst-X --folds-by patients --folds 5 --pretrained-hub --output runs/cyst-x-ours
python Resources/Training/train_ipmn.py --cyst-x data/Cyst-X --cv-results runs/cyst-x-cv --pretrained-hub --output runs/ipmn-cyst-x
""",
    "Cyst-X 2-class": """
python Resources/Training/crossvalidate_ipmn.py --cyst-x data/Cyst-X --task 2-class --pretrained-hub --output runs/cyst-x-2-class-cv
python Resources/Training/train_ipmn.py --cyst-x data/Cyst-X --task 2-class --cv-results runs/cyst-x-2-class-cv --pretrained-hub --output runs/ipmn-cyst-x-2-class
""",
    "evaluate explanations": """
python Resources/Training/evaluate_explanations.py --output explanations --phantoms 15 --first-seed 6000
""",
    "evaluate review": """
python Resources/Training/evaluate_review.py results/ --output agreement/
""",
    "layout": """
CMakeLists.txt            the Slicer extension
PancreasAI/               hidden module: PancreasAI.py (module + self-test of the process runner)
  PancreasAILib/          the Qt-free core: geometry, files, weights, engines.py, cpu.py, tasks, runners, route.py, scene.py, review.py, review_web.py
  PancreasAIApp/          the Slicer application's side: installer, PythonSlicer runner, widgets, review_panel.py
PancreasSegMoNet/
  PancreasSegMoNet.py     Slicer module (GUI, Logic, Test), thin over the Lib
  PancreasSegMoNetLib/    network.py, preprocessing.py, registry.py, segmentation.py, cli.py, precision_check.py, pancreas_segment.py, logic.py
  Resources/Models/       PancreasSegMoNet-models.json (registry) + demo weights and card
  Resources/SampleData/   the self-test's CT sample (its SHA256 is in PancreasAILib's sample list)
IPMNRisk/                 the IPMN module, same layout
Resources/Training/       training and evaluation scripts (import the installed packages)
Resources/PancreasAIPhantoms/  synthetic CT and MRI phantoms (demo, tests; not shipped)
Resources/demo.py         the demo (and demo_render.py, its pictures)
Resources/make_sample_data.py  writes the bundled sample volumes
Resources/make_calibration_data.py  writes the phantoms the demo cards' bf16 checks ran on
Testing/                  pytest suites (core, slicer-core MRML, CLI, training) and Benchmarks/
pancreasai.sh             set-up, demo, test, bench
""",
    "check precision": """
pancreas-seg check-precision calibration_cts/ --model my-monet.safetensors    # every mask Dice >= 0.99
ipmn-risk check-precision --cases calibration.csv --model my-vit.safetensors  # same class, probabilities within 0.02
""",
    "pip install": """
pip install -r requirements-dev.txt
""",
    "train MoNet on MSD": """
python Resources/Training/train_monet.py --msd data/Task07_Pancreas \\
    --output runs/monet --early-stopping-patience 10
""",
    "train MoNet with torchrun": """
torchrun --standalone --nproc_per_node 4 Resources/Training/train_monet.py \\
    --msd data/Task07_Pancreas --output runs/monet --early-stopping-patience 10
""",
    "train MoNet on a folder pair": """
python Resources/Training/train_monet.py --images data/ct --labels data/labels --output runs/monet-site
""",
    "evaluate segmentation": """
python Resources/Training/evaluate_segmentation.py --msd data/Task07_Pancreas \\
    --cases-of runs/monet.safetensors \\
    --model runs/monet.safetensors --model runs/unet16.safetensors \\
    --model runs/unet64.safetensors --model runs/attention-unet.safetensors \\
    --output runs/evaluation
""",
    "demo MoNet run 1": f"""
python Resources/Training/train_monet.py --phantoms 40 --epochs 11 --steps-per-epoch 20 \\
    --batch-size 8 --crop 192 --loss dice+bce --prior-init --lr 0.002 --lr-patience 4 \\
    --max-val-slices 32 --output runs/demo/v1/monet-demo-phantom-v1.safetensors \\
    --title "MoNet demo (synthetic CT phantoms)" --intended-use "{MONET_INTENDED_USE}"
""",
    "demo MoNet run 2": f"""
python Resources/Training/train_monet.py --phantoms 120 --epochs 24 --steps-per-epoch 20 \\
    --batch-size 8 --crop 192 --loss dice+bce --prior-init --lr 0.002 --lr-patience 4 \\
    --max-val-slices 48 --empty-fraction 0.5 --precision bf16 \\
    --initial-weights runs/demo/v1/monet-demo-phantom-v1.safetensors \\
    --output runs/demo/stage1/monet-demo-phantom-v2.safetensors \\
    --title "MoNet demo (synthetic CT phantoms)" --intended-use "{MONET_INTENDED_USE}"
""",
    "demo MoNet run 3": f"""
python Resources/Training/train_monet.py --phantoms 120 --epochs 32 --steps-per-epoch 20 \\
    --batch-size 8 --crop 192 --loss dice+bce --prior-init --lr 0.0005 --lr-patience 8 \\
    --max-val-slices 128 --empty-fraction 0.5 --precision bf16 \\
    --initial-weights runs/demo/stage1/monet-demo-phantom-v2.safetensors \\
    --output runs/demo/monet-demo-phantom-v2.safetensors \\
    --title "MoNet demo (synthetic CT phantoms)" --intended-use "{MONET_INTENDED_USE}"
""",
    "demo MoNet run 4": f"""
python Resources/Training/train_monet.py --phantoms 120 --epochs 43 --steps-per-epoch 40 \\
    --batch-size 8 --crop 128 --recalibration-slices 0 --loss dice+bce --lr 0.0001 \\
    --lr-patience 1000 --max-val-slices 48 --empty-fraction 0.25 --zoom 0.15 \\
    --initial-weights runs/demo/monet-demo-phantom-v2.safetensors \\
    --output runs/demo/stage3/monet-demo-phantom-v3.safetensors \\
    --title "MoNet demo (synthetic CT phantoms)" --intended-use "{MONET_INTENDED_USE}"
""",
    "demo MoNet run 5": f"""
python Resources/Training/train_monet.py --phantoms 120 --epochs 16 --steps-per-epoch 40 \\
    --batch-size 8 --crop 128 --recalibration-slices 0 --loss dice+bce --lr 0.00002 \\
    --lr-patience 1000 --max-val-slices 48 --empty-fraction 0.25 --zoom 0.15 \\
    --initial-weights runs/demo/stage3/monet-demo-phantom-v3.safetensors \\
    --output runs/demo/monet-demo-phantom-v3.safetensors \\
    --title "MoNet demo (synthetic CT phantoms)" --intended-use "{MONET_INTENDED_USE}"
""",
    "convert a checkpoint": """
python Resources/Training/convert_checkpoint.py x.pth --architecture monet --output x.safetensors \\
    --title "MoNet (site A)" --intended-use "research only"
""",
    "mutation testing": """
./pancreasai.sh mutation geometry files weights   # or no group for all; report in output/mutation/REPORT.md
""",
    "cohort CSV": """
patient,case,t1,t2,label,roi_center,roi_size,roi_mask
P001,P001,P001/t1.nii.gz,P001/t2.nii.gz,normal,"12.5,-140.0,-310.0","90,60,50",
P002,P002-2019,P002/2019_t1.nrrd,P002/2019_t2.nrrd,low-risk IPMN,,,P002/2019_pancreas.nii.gz
P003,P003,P003/t1,P003/t2,2,"-4,-150,-290","100,70,60",
""",
    "cross-validate the cohort": """
python Resources/Training/crossvalidate_ipmn.py --cohort data/ipmn/cohort.csv \\
    --methods all --pretrained-hub --output runs/ipmn-cv
""",
    "train the IPMN model on the cohort": """
python Resources/Training/train_ipmn.py --cohort data/ipmn/cohort.csv --pretrained-hub \\
    --cv-results runs/ipmn-cv --output runs/ipmn-vit-site \\
    --title "IPMN ViT (site cohort)" --intended-use "Research use on ... MRI; not for diagnosis."
""",
    "demo ViT stage 1": f"""
python Resources/Training/train_ipmn.py --patients 400 --val-patients 30 --steps 20000 \\
    --eval-every 1000 --lr 0.001 --lr-schedule warmup-cosine --class-weights 1 1 1 --window-jitter 2 \\
    --output runs/demo/stage1/ipmn-vit-demo-phantom-v2.safetensors \\
    --title "IPMN ViT demo (synthetic T1/T2 phantoms)" --intended-use "{IPMN_INTENDED_USE}"
""",
    "demo ViT stage 2": f"""
python Resources/Training/train_ipmn.py --patients 600 --val-patients 50 --steps 8000 \\
    --eval-every 500 --lr 0.0003 --lr-schedule warmup-cosine --class-weights 1 1 1 --window-jitter 2 \\
    --initial-weights runs/demo/stage1/ipmn-vit-demo-phantom-v2.safetensors \\
    --output runs/demo/ipmn-vit-demo-phantom-v2.safetensors \\
    --title "IPMN ViT demo (synthetic T1/T2 phantoms)" --intended-use "{IPMN_INTENDED_USE}"
""",
    "cross-validate phantoms": """
python Resources/Training/crossvalidate_ipmn.py --phantoms 12 --folds 3 --inner-folds 2 \\
    --methods ablations resnet18 --steps 50 --eval-every 25 --lr-grid 0.003 --output runs/ipmn-cv-phantoms
""",
    "federated simulation": """
python Resources/Training/federated.py simulate --model monet --sites 3 --rounds 10 \\
    --local-steps 50 --output runs/fed-monet --phantoms 9 --input-size 128 \\
    --prior-init --loss dice+bce --lr 0.002
""",
    "federated comparison": """
python Resources/Training/federated_comparison.py --output runs/fed-vs-central --phantoms 9 \\
    --sites 3 --rounds 20 --local-steps 50 --phantom-shape 24 96 96 --input-size 64 \\
    --prior-init --loss dice+bce --lr 0.002
""",
    "federated deployment": """
# server
flower-superlink --ssl-ca-certfile certs/ca.pem --ssl-certfile certs/server.pem \\
    --ssl-keyfile certs/server.key --enable-supernode-auth --disable-runtime-dependency-installation
# coordinator: admit each hospital's public key
flwr supernode register keys/hospital-a.pub hospitals
# each hospital: its own data and working folder
flower-supernode --superlink server.example.org:8000 --root-certificates certs/ca.pem \\
    --auth-supernode-private-key keys/hospital-a.key \\
    --node-config "data='--msd /data/Task07_Pancreas' work-dir='/data/federated-site'"
# coordinator: write the Flower app with the run's settings, and start it
python Resources/Training/federated.py app runs/fed-app --model monet --rounds 50 \\
    --local-steps 100 --min-sites 3 --output /srv/pancreasai/fed-monet --input-size 256
flwr run runs/fed-app hospitals --stream
""",
    "federated connection": """
[superlink.hospitals]
address = "server.example.org:8000"
root-certificates = "/etc/pancreasai/certs/ca.pem"
""",
}

NEEDS_SLICER = (
    "needs the Slicer application: the module files import qt, ctk, slicer.ScriptedLoadableModule, "
    "slicer.i18n and slicer.parameterNodeWrapper, and slicer.util.loadVolume / saveNode / "
    "setSliceViewerLayers call slicer.app (its IO and layout managers); slicer-core 5.11.0.6 has "
    "slicer.util and the MRML classes but none of these. Checked instead: every class, method, "
    "argument and result field the example uses exists (test_slicer_console_examples_use_what_exists)")

#: README blocks no test can run here, with the reason. Keep this short and true.
NOT_RUNNABLE = {
    "Slicer console: segment": ("""
import PancreasSegMoNet
logic = PancreasSegMoNet.PancreasSegMoNetLogic()
ct = slicer.util.getNode("CT")
outcome = logic.segment(ct)                       # blocks; returns a SegmentationOutcome
print(outcome.volume_ml, outcome.voxel_count, outcome.warnings)
segmentation = outcome.segmentation_node          # holds the "Pancreas" segment
logic.segment(ct, segmentation)                   # re-run: replaces only its own "Pancreas" segment
logic.segment(ct, model="/path/to/my-monet.safetensors", device="cpu", threshold=0.6)
""", NEEDS_SLICER),
    "Slicer console: batch": ("""
import glob, os
logic = PancreasSegMoNet.PancreasSegMoNetLogic()
for path in sorted(glob.glob("ct/*.nii.gz")):
    ct = slicer.util.loadVolume(path)
    outcome = logic.segment(ct)
    slicer.util.saveNode(outcome.segmentation_node, path.replace(".nii.gz", "_pancreas.seg.nrrd"))
    slicer.mrmlScene.RemoveNode(ct); slicer.mrmlScene.RemoveNode(outcome.segmentation_node)
""", NEEDS_SLICER),
    "Slicer console: IPMN risk": ("""
import IPMNRisk
logic = IPMNRisk.IPMNRiskLogic()
result = logic.assess(slicer.util.getNode("T1"), slicer.util.getNode("T2"), slicer.util.getNode("R"))
print(result.class_name, result.probabilities, result.spread)
logic.showResult(result)     # heat map over the slice views, centred on the region
open("grid.png", "wb").write(result.grid_png)     # the 3 x 3 grid with the heat map
""", NEEDS_SLICER),
}

# Overrides that only shorten a README command (appended: argparse keeps the last value).
# MoNet: 12 x 64 x 64 phantoms, 64 x 64 network input, one step of two slices per epoch.
MONET_SHORT = "--input-size 64 --batch-size 2 --epochs 1 --steps-per-epoch 1 --max-val-slices 4"
MONET_PHANTOMS_SHORT = f"--phantoms 3 --phantom-shape 12 64 64 --crop 32 {MONET_SHORT}"
# IPMN: 12 x 64 x 64 phantoms, two steps of two grids, validation after the second.
IPMN_SHORT = "--batch-size 2 --steps 2 --eval-every 2"
IPMN_PHANTOMS_SHORT = f"--phantom-shape 12 64 64 --phantom-spacing 3.5 3.5 5.0 {IPMN_SHORT}"
# The site cohort: the README's three example rows plus four phantom patients with a scan of
# each class, so that two outer and two inner folds each hold every class.
EXTRA_COHORT_ROWS = [
    f"P{number:03d},P{number:03d}-{label.split()[0]},P{number:03d}/{label.split()[0]}_t1.nii.gz,"
    f"P{number:03d}/{label.split()[0]}_t2.nii.gz,{label},,,P{number:03d}/{label.split()[0]}_pancreas.nii.gz"
    for number in range(4, 8) for label in ("normal", "low-risk IPMN", "high-risk IPMN")]


#: The working folders' name holds a space and a non-ASCII letter: the README says any path may.
WORK = "work dir é"


def example(name: str) -> str:
    """The README's block `name`, as the README has it (fails if the README differs)."""
    return readme_block(EXAMPLES[name])


def example_commands(name: str) -> list[str]:
    return commands_of(example(name))


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    return Workspace(tmp_path / WORK)


@pytest.fixture(scope="module")
def current_environment():
    """`./pancreasai.sh` must find the environment running these tests up to date, or it would
    install into it: fail instead, saying what to do."""
    stamp = Path(sys.prefix) / ".requirements.sha256"
    want = hashlib.sha256((ROOT / "requirements-dev.txt").read_bytes() + (ROOT / "pyproject.toml").read_bytes())
    if not stamp.is_file() or stamp.read_text(encoding="utf-8").strip() != want.hexdigest():
        pytest.fail(f"{sys.prefix} is not up to date with requirements-dev.txt and pyproject.toml: run "
                    "./pancreasai.sh setup first (these tests never install anything).")
    return sys.prefix


def script_command(command: str) -> str:
    """`./pancreasai.sh ...` run from another folder: the script finds the clone from its own
    path, so the working folder calls it by that path."""
    assert command.startswith("./pancreasai.sh ")
    return shlex.quote(str(ROOT / "pancreasai.sh")) + command[len("./pancreasai.sh"):]


def card_of(workspace: Workspace, output: str) -> dict:
    return json.loads(workspace.path(f"{output}.json").read_text(encoding="utf-8"))


def starts_from(workspace: Workspace, output: str, start: str) -> bool:
    """Whether the card of `output` names the model `start` as its initial weights."""
    started = card_of(workspace, start)
    return card_of(workspace, output)["training"]["initial_weights"] == \
        {"name": started["name"], "sha256": started["sha256"]}


# --- every block is accounted for -----------------------------------------------------------------

def test_every_readme_block_is_run_or_listed_as_not_runnable():
    known = {block_text(text) for text in [*EXAMPLES.values(), *(text for text, _ in NOT_RUNNABLE.values())]}
    blocks = readme_blocks()
    unknown = [block for block in blocks if block.text not in known]
    assert not unknown, "README blocks that no test runs (add them to Testing/test_readme_examples.py):\n" + \
        "\n".join(f"line {block.line}:\n{block.text}" for block in unknown)
    stale = sorted(known - {block.text for block in blocks})
    assert not stale, "Examples in Testing/test_readme_examples.py that the README no longer has:\n" + "\n".join(stale)


def test_every_listed_example_has_a_test():
    source = Path(__file__).read_text(encoding="utf-8")
    unused = [name for name in EXAMPLES if source.count(f'"{name}"') < 2]  # its key, and a test
    assert not unused, f"EXAMPLES without a test that runs them: {unused}"


# --- ./pancreasai.sh ------------------------------------------------------------------------------

@pytest.mark.slow
def test_demo_runs_from_another_folder_and_writes_the_files_the_readme_lists(workspace, current_environment):
    demo = example_commands("two commands")[0]
    completed = workspace.run(with_arguments(script_command(demo), "--output", "out/demo"), timeout=600)
    names = []
    for first_column, _ in markdown_table_after("The demo writes to"):
        spans = code_spans(first_column)
        names += [spans[0]] + [spans[0].rsplit("_", 1)[0] + span for span in spans[1:]]  # `x_t1.nii.gz`, `_t2.nii.gz`
    assert len(names) == 12
    for name in names:
        path = workspace.path("out/demo") / name
        assert path.is_file() and path.stat().st_size > 0, f"the demo did not write {name}, which the README lists"
        said = (f"out/demo/{name}", str(workspace.path("out/demo") / name))
        assert any(text in completed.stdout for text in said), f"the demo does not say where {name} is"
    for scene in ("sample_ct_phantom_scene.mrb", "sample_mr_phantom_ipmn_scene.mrb"):
        assert zipfile.ZipFile(workspace.path("out/demo") / scene).namelist()


def test_test_command_reaches_pytest(workspace, current_environment):
    """Its --version only: running the suite from inside the suite would recurse (the next
    test collects the suite from another folder)."""
    command = example_commands("two commands")[1]
    completed = workspace.run(with_arguments(script_command(command), "--version"), timeout=120)
    assert "pytest" in completed.stdout + completed.stderr


def test_setup_leaves_an_up_to_date_environment_alone(workspace, current_environment):
    command = example_commands("more of the script")[0]
    completed = workspace.run(script_command(command), timeout=60)
    assert "Setting up" not in completed.stdout + completed.stderr


def test_test_command_passes_pytest_options_and_finds_the_suite_from_any_folder(workspace, current_environment):
    """`-m "not slow"` reaches pytest, which finds Testing/ from another folder; collected only,
    as running the suite from inside the suite would recurse."""
    command = example_commands("more of the script")[1]
    completed = workspace.run(with_arguments(script_command(command), "--collect-only", "-q"), timeout=300)
    assert re.search(r"\d+/\d+ tests collected \(\d+ deselected\)", completed.stdout), completed.stdout[-2000:]
    assert "test_readme_examples.py::test_every_readme_block_is_run_or_listed_as_not_runnable" in completed.stdout


def test_bench_command_reaches_the_benchmark_with_the_documented_options(workspace, current_environment):
    """Its --help only: a full benchmark takes many minutes (test_benchmark_smoke runs --quick)."""
    command = example_commands("more of the script")[2]
    completed = workspace.run(with_arguments(script_command(command), "--help"), timeout=120)
    for option in ("--update-results", "--quick", "--output"):
        assert option in completed.stdout, f"./pancreasai.sh bench has no {option}, which the README names"
    assert "output/bench/RESULTS.md" in " ".join(completed.stdout.split())


def test_demo_segments_a_ct_of_ones_own_into_a_relative_folder(workspace, current_environment):
    write_ct(workspace.path("my_ct.nii.gz"), seed=31)
    workspace.run(script_command(example("demo on your own CT")), timeout=300)
    written = sorted(path.name for path in workspace.path("my-demo").iterdir())
    for name in ("my_ct_pancreas.seg.nrrd", "my_ct_pancreas.nii.gz", "my_ct_pancreas.json", "my_ct_pancreas.png",
                 "my_ct_scene.mrb"):
        assert name in written
    assert not [name for name in written if name.startswith("sample_mr_phantom")], "--skip-ipmn still assessed the MRI"


# --- the Slicer console ---------------------------------------------------------------------------

def test_slicer_console_examples_use_what_exists():
    """Run in one console session, in this order; see NEEDS_SLICER for why they are not run."""
    session = "\n".join(readme_block(text) for text, _ in NOT_RUNNABLE.values())
    assert console_example_problems(session) == []


def test_console_check_finds_a_wrong_argument():
    assert console_example_problems("import PancreasSegMoNet\nlogic = PancreasSegMoNet.PancreasSegMoNetLogic()\n"
                                    "logic.segment(ct, thresh=0.6)\n") == \
        ["PancreasSegMoNet.PancreasSegMoNetLogic.segment has no argument 'thresh' (it has volumeNode, "
         "segmentationNode, model, device, threshold, keepLargestComponent, progressCallback, runner, precision)"]


def test_console_check_finds_a_result_field_that_does_not_exist():
    """The grid picture is `grid_png` (PNG bytes); there is no path to it any more."""
    assert console_example_problems("import IPMNRisk\nlogic = IPMNRisk.IPMNRiskLogic()\n"
                                    "result = logic.assess(t1, t2, roi)\nprint(result.grid_png_path)\n") == \
        ["the result of assess has no 'grid_png_path' (it has class_name, class_names, engine, explanation, grid_png, "
         "heat_map_node, model_name, model_sha256, pancreas_node, precision, probabilities, region_node, risk_class, "
         "seconds, spread, summary, table_node, warnings)"]


def test_console_check_knows_that_segment_returns_an_outcome_not_a_node():
    assert console_example_problems("import PancreasSegMoNet\nlogic = PancreasSegMoNet.PancreasSegMoNetLogic()\n"
                                    "segmentation = logic.segment(ct)\nsegmentation.GetSegmentation()\n") == \
        ["the result of segment has no 'GetSegmentation' (it has engine, model_name, model_sha256, precision, "
         "seconds, segmentation_node, threshold, volume_ml, voxel_count, warnings)"]


# --- the command lines ----------------------------------------------------------------------------

@pytest.mark.slow
def test_pancreas_seg_examples(workspace):
    import torch

    from PancreasAILib.volume_io import read_volume

    write_ct(workspace.path("ct/abdomen_01.nii.gz"), seed=11)
    write_ct(workspace.path("ct/abdomen_02.nii.gz"), seed=12)
    write_dicom_ct(workspace.path("dicom/patient7"), seed=13)
    write_ct(workspace.path("cases/case_03.nrrd"), seed=14)
    copy_of_demo_monet(workspace.path("my-monet.safetensors"), "my-monet")
    segment_files, segment_folder_on_gpu, models = example_commands("pancreas-seg")

    completed = workspace.run(segment_files, timeout=300)
    for case, source in (("abdomen_01", "ct/abdomen_01.nii.gz"), ("abdomen_02", "ct/abdomen_02.nii.gz"),
                         ("patient7", "dicom/patient7")):
        label = read_volume(workspace.path(f"results/{case}_pancreas.nii.gz"))
        assert label.shape == read_volume(workspace.path(source)).shape
        assert workspace.path(f"results/{case}_pancreas.seg.nrrd").is_file()
        assert re.search(rf"^{case}: pancreas .* ml", completed.stdout, re.MULTILINE), completed.stdout

    if torch.cuda.is_available():
        completed = workspace.run(segment_folder_on_gpu, timeout=300)
    else:  # as typed it says why it cannot run here; on the CPU it runs
        refused = workspace.run(segment_folder_on_gpu, check=False, timeout=300)
        assert refused.returncode != 0 and "No CUDA GPU" in refused.stdout + refused.stderr, refused.stdout
        assert not workspace.path("results/case_03_pancreas.nii.gz").exists()
        completed = workspace.run(with_arguments(segment_folder_on_gpu, "--device", "cpu"), timeout=300)
    assert "Model: my-monet." in completed.stdout
    assert workspace.path("results/case_03_pancreas.seg.nrrd").is_file()

    listed = workspace.run(models, timeout=120).stdout
    assert "monet-demo-phantom-v3" in listed and f"cache: {workspace.path('.pancreasai-cache')}" in listed


@pytest.mark.slow
def test_check_precision_examples(workspace):
    """Each check writes its verdict, with every case, into the card of the model it checked;
    on a CPU without native bf16 it says that bf16 was emulated."""
    check_monet, check_vit = example_commands("check precision")
    copy_of_demo_monet(workspace.path("my-monet.safetensors"), "my-monet")
    copy_of_demo_vit(workspace.path("my-vit.safetensors"), "my-vit")
    write_ct(workspace.path("calibration_cts/site_ct_01.nii.gz"), seed=31)
    study = mr_study(seed=32, risk_class=2)
    write_image(study.t1, workspace.path("mr/t1.nii.gz"))
    write_image(study.t2, workspace.path("mr/t2.nii.gz"))
    center, size = (",".join(f"{v:.1f}" for v in values) for values in (study.center_ras, study.size_mm))
    workspace.path("calibration.csv").write_text(
        f'case,t1,t2,roi_center,roi_size\nsite_mr_01,mr/t1.nii.gz,mr/t2.nii.gz,"{center}","{size}"\n',
        encoding="utf-8")

    for command, card_name, case in ((check_monet, "my-monet", "site_ct_01"), (check_vit, "my-vit", "site_mr_01")):
        completed = workspace.run(command, check=False, timeout=600)
        record = card_of(workspace, card_name)["precision_checks"]["bf16"]
        assert completed.returncode == (0 if record["passed"] else 1), completed.stderr
        assert [c["case"] for c in record["cases"]] == [case]
        assert record["weights_sha256"] == card_of(workspace, card_name)["sha256"]
        assert "recorded in" in completed.stdout
        assert ("emulat" in completed.stdout) == (not record["native"])


@pytest.mark.slow
def test_ipmn_risk_examples(workspace):
    assess_box, assess_mask, batch = example_commands("ipmn-risk")
    box = mr_study(seed=21, risk_class=2, center_ras=(-10, 45, 12))
    write_image(box.t1, workspace.path("t1.nii.gz"))
    write_image(box.t2, workspace.path("t2.nii.gz"))
    masked = mr_study(seed=22, risk_class=1)
    write_image(masked.t1, workspace.path("patient8/t1.nrrd"))
    write_image(masked.t2, workspace.path("patient8/t2.nrrd"))
    write_pancreas_segmentation(masked.pancreas, workspace.path("patient8/pancreas.seg.nrrd"))
    cases_csv = ("case,t1,t2,roi_center,roi_size,roi_mask\n"
                 "c1,c1/t1.nii.gz,c1/t2.nii.gz,\"5,-20,30\",\"90,60,50\",\n"
                 "c2,c2/t1.nii.gz,c2/t2.nii.gz,,,c2/pancreas.nii.gz\n")
    workspace.path("cases.csv").write_text(cases_csv, encoding="utf-8")
    for number, center in ((1, (5, -20, 30)), (2, None)):
        study = mr_study(seed=22 + number, risk_class=number, center_ras=center)
        write_image(study.t1, workspace.path(f"c{number}/t1.nii.gz"))
        write_image(study.t2, workspace.path(f"c{number}/t2.nii.gz"))
        write_image(study.pancreas, workspace.path(f"c{number}/pancreas.nii.gz"))

    for command in (assess_box, assess_mask, batch):
        workspace.run(command, timeout=300)

    for case in ("t2", "patient8", "c1", "c2"):  # a case is named after its T2 file unless --case names it
        for suffix in ("result.json", "heatmap.nrrd", "grid.png", "scene.mrb"):
            assert workspace.path(f"results/{case}_ipmn_{suffix}").is_file(), f"{case}_ipmn_{suffix}"
    summary = json.loads(workspace.path("results/t2_ipmn_result.json").read_text(encoding="utf-8"))
    assert [round(v) for v in summary["region"]["center_ras"]] == [-10, 45, 12]
    with open(workspace.path("results/results.csv"), newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["case"] for row in rows] == ["c1", "c2"] and {row["status"] for row in rows} == {"ok"}
    for column in ("class_name", "p_normal", "spread_high_risk", "heat_map", "grid_png", "scene"):
        assert all(row[column] for row in rows), column


def test_ipmn_risk_automatic_region_example(workspace):
    """A whole-field MR phantom (the MR demo MoNet was trained on those) of a seed it never saw."""
    from PancreasAIPhantoms.mr import make_mr_phantom
    from PancreasAILib.volume import Volume

    (command,) = example_commands("ipmn-risk automatic")
    phantom = make_mr_phantom(7003, 1)
    write_image(Volume(phantom.t1, phantom.ijk_to_ras), workspace.path("patient9/t1.nrrd"))
    write_image(Volume(phantom.t2, phantom.ijk_to_ras), workspace.path("patient9/t2.nrrd"))

    workspace.run(command + " --no-tta", timeout=300)

    for suffix in ("result.json", "heatmap.nrrd", "grid.png", "scene.mrb", "pancreas.nrrd"):
        assert workspace.path(f"results/patient9_ipmn_{suffix}").is_file(), suffix
    region = json.loads(workspace.path("results/patient9_ipmn_result.json").read_text(encoding="utf-8"))["region"]
    assert region["source"] == "automatic" and region["segmentation_model"] == "monet-mr-demo-phantom-v1"
    center, half = np.asarray(phantom.pancreas_box_ras[0]), np.asarray(phantom.pancreas_box_ras[1]) / 2
    assert np.all(np.abs(np.subtract(region["center_ras"], center)) <= half)  # inside the expert's box


@pytest.mark.slow
def test_monet_on_mri_examples(workspace):
    """Cyst-X's MR images and masks (three small MR phantoms), a short run, then the overlap
    figure of its (untrained) model on one phantom."""
    from PancreasAIPhantoms.mr import make_mr_phantom
    from PancreasAILib.volume import Volume
    from PancreasAILib.volume_io import write_volume

    train, evaluate = example_commands("MoNet on MRI")
    for seed in range(3):
        phantom = make_mr_phantom(seed, seed % 3, shape=(8, 64, 64))
        base = workspace.path("data/Cyst-X/IPMN_images_masks/t2")
        write_volume(Volume(phantom.t2, phantom.ijk_to_ras), base / "images" / f"nyu_{seed:03d}.nii.gz")
        write_volume(Volume(phantom.pancreas.astype(np.uint8), phantom.ijk_to_ras),
                     base / "masks" / f"nyu_{seed:03d}.nii.gz")
    workspace.run(with_arguments(train, "--input-size 32 --batch-size 2 --epochs 1 --steps-per-epoch 1 "
                                        "--test-fraction 0 --validation-fraction 0.34"), timeout=300)
    card = card_of(workspace, "runs/monet-mr/monet-mr")
    assert card["preprocessing"]["modality"] == "MR"
    assert card["training"]["data_source"]["kind"] == "cyst_x"
    workspace.run(with_arguments(evaluate, "--phantoms 1"), timeout=300)
    for name in ("automatic_region.csv", "automatic_region.md", "automatic_region.png"):
        assert workspace.path(f"automatic-region/{name}").is_file(), name


@pytest.mark.slow
def test_demo_mr_monet_run(workspace):
    """The MR demo's command, shortened, from a copy of the CT demo where the README names it;
    its card is the shipped one's in all but the numbers."""
    from PancreasSegMoNetLib.registry import model_registry

    copy_of_demo_monet(workspace.path("PancreasSegMoNet/Resources/Models/monet-demo-phantom-v3.safetensors"),
                       "monet-demo-phantom-v3")
    workspace.run(with_arguments(example("demo MR MoNet"), "--phantoms 3 --phantom-shape 8 64 64 --input-size 32 "
                                 "--batch-size 2 --epochs 1 --steps-per-epoch 1 --max-val-slices 4"), timeout=300)
    card = card_of(workspace, "runs/demo/mr/monet-mr-demo-phantom-v1")
    shipped = model_registry().resolve("monet-mr-demo-phantom-v1").data
    for key in ("title", "intended_use", "task", "classes", "postprocessing"):
        assert card[key] == shipped[key], key
    assert {k: v for k, v in card["preprocessing"].items() if k != "input_size"} == \
        {k: v for k, v in shipped["preprocessing"].items() if k != "input_size"}
    assert starts_from(workspace, "runs/demo/mr/monet-mr-demo-phantom-v1",
                       "PancreasSegMoNet/Resources/Models/monet-demo-phantom-v3")


def test_evaluate_review_example(workspace):
    """Two reviewers' verdicts on four IPMN cases and one segmentation, as the review writes them."""
    from PancreasAILib.review import REVIEW_COLUMNS

    classes = ("normal", "low-risk IPMN", "high-risk IPMN")
    rows = []
    for reviewer, theirs in (("Dr A", (0, 1, 2, 2)), ("Dr B", (0, 2, 2, 1))):
        for number, (model, own) in enumerate(zip((0, 1, 2, 1), theirs)):
            rows.append({"reviewer": reviewer, "case": f"c{number}", "task": "ipmn", "time": "2026-11-30T10:00:00Z",
                         "model": "m", "model_sha256": "0" * 64, "model_class": classes[model],
                         "verdict": "agree" if model == own else "disagree", "reviewer_class": classes[own],
                         "edited_file": "", "comment": ""})
    rows.append({**rows[0], "case": "ct1", "task": "segmentation", "model_class": "", "verdict": "accept",
                 "reviewer_class": ""})
    workspace.path("results").mkdir()
    with open(workspace.path("results/review.csv"), "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=REVIEW_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    completed = workspace.run(example("evaluate review"), timeout=300)
    report = workspace.path("agreement/review_agreement.md").read_text(encoding="utf-8")
    assert "Dr A" in report and "Dr B" in report and "kappa" in report.lower() and report.strip() in completed.stdout
    assert workspace.path("agreement/review_agreement.png").stat().st_size > 0


@pytest.mark.slow
def test_cyst_x_commands(workspace):
    """The four Cyst-X commands and the two of the 2-class task on a Cyst-X-shaped folder of 18
    phantom studies (with both published splits), shortened: a tiny ViT from random weights (no
    hub), 2 steps, one learning rate, 2 inner and 3 patient folds."""
    from test_cyst_x import TINY_RUN, write_cyst_x_folder

    write_cyst_x_folder(workspace.path("data/Cyst-X"))
    tiny = " ".join(shlex.quote(a) for a in TINY_RUN)
    short = f"{tiny} --inner-folds 2 --lr-grid 0.001 --bootstrap 20"
    commands = [command.replace(" --pretrained-hub", "") for command in example_commands("Cyst-X")]
    for command in commands[:3]:
        workspace.run(with_arguments(command, short, "--folds 3" if "--folds 5" in command else ""), timeout=600)
    workspace.run(with_arguments(commands[3], tiny, "--inner-folds 2"), timeout=600)
    for run in ("runs/cyst-x-cv", "runs/cyst-x-loco", "runs/cyst-x-ours"):
        assert workspace.path(f"{run}/early-fusion/benchmark.json").is_file()
        assert workspace.path(f"{run}/early-fusion/calibration.png").is_file()
    assert json.loads(workspace.path("runs/cyst-x-loco/cv.json").read_text(encoding="utf-8"))["outer_folds"]["by"] \
        == "centre"
    card = json.loads(workspace.path("runs/ipmn-cyst-x.json").read_text(encoding="utf-8"))
    assert card["training"]["data_source"]["kind"] == "cyst_x"

    cross_validation, training = [command.replace(" --pretrained-hub", "") for command in
                                  example_commands("Cyst-X 2-class")]
    workspace.run(with_arguments(cross_validation, short), timeout=600)
    workspace.run(with_arguments(training, tiny, "--inner-folds 2"), timeout=600)
    record = json.loads(workspace.path("runs/cyst-x-2-class-cv/cv.json").read_text(encoding="utf-8"))
    assert record["outer_folds"]["file"] == "data splits/classification/2-class/two_inputs.csv"
    benchmark = json.loads(workspace.path("runs/cyst-x-2-class-cv/early-fusion/benchmark.json")
                           .read_text(encoding="utf-8"))
    assert benchmark["task"] == "2-class" and benchmark["auc"].startswith("binary")
    card = json.loads(workspace.path("runs/ipmn-cyst-x-2-class.json").read_text(encoding="utf-8"))
    assert card["classes"] == ["no or low-risk IPMN", "high-risk IPMN"]
    assert card["metrics"]["cross_validation"]["protocol"]["task"] == "2-class"


@pytest.mark.slow
def test_evaluate_explanations_example(workspace):
    """The README's command, on one phantom instead of fifteen."""
    completed = workspace.run(with_arguments(example("evaluate explanations"), "--phantoms 1 --no-tta"), timeout=600)
    table = workspace.path("explanations/explanations.md").read_text(encoding="utf-8")
    assert "gradient-rollout" in table and "rollout" in table and "deletion" in table.lower()
    assert workspace.path("explanations/explanations.csv").stat().st_size > 0
    assert "gradient-rollout" in completed.stdout


# --- what the README names in the clone ------------------------------------------------------------

def test_layout_names_what_the_clone_holds():
    parent = None
    for line in example("layout").splitlines():
        name, _, description = line.strip().partition("  ")
        indented = line.startswith("  ")
        path = (parent / name) if indented and parent else ROOT / name
        assert path.exists(), f"the README's layout lists {path.relative_to(ROOT)}, which does not exist"
        if not indented:
            parent = path
        if path.is_dir():  # files the description names (model.py, cli.py, ...) lie in that folder
            for file_name in re.findall(r"[\w.-]+\.(?:py|json|sh|txt)\b", description):
                assert (path / file_name).exists(), f"the README says {path.relative_to(ROOT)} holds {file_name}"


def test_paths_the_readme_names_exist():
    top = ("PancreasAI/", "PancreasSegMoNet/", "IPMNRisk/", "Resources/", "Testing/", ".ci/")
    text = readme_text()
    named = set(re.findall(r"\]\(([^)\s]+)\)", text)) | set(code_spans(text))
    missing = sorted(path for path in named if path.startswith(top) and not re.search(r"[<>*]", path)
                     and not (ROOT / path.split()[0]).exists())
    assert not missing, f"the README names files that do not exist: {missing}"


def test_pip_install_of_the_requirements_is_satisfied_offline(workspace):
    """Without an index (offline): the environment running the tests already holds every pinned
    requirement, so pip has nothing to fetch."""
    completed = workspace.run(example("pip install"), timeout=300)
    assert "Requirement already satisfied: torch==" in completed.stdout


# --- training MoNet ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def msd_run(tmp_path_factory):
    """A working folder with an MSD Task07 folder of phantoms and the README's training run on
    it (shortened); returns the folder and the run's output."""
    workspace = Workspace(tmp_path_factory.mktemp("msd") / WORK)
    write_msd_folder(workspace.path("data/Task07_Pancreas"))
    completed = workspace.run(with_arguments(example("train MoNet on MSD"), MONET_SHORT), timeout=300)
    return workspace, completed


@pytest.mark.slow
def test_train_monet_on_the_decathlon_folder_writes_what_the_readme_lists(msd_run):
    workspace, _ = msd_run
    listed = [span for first_column, _ in markdown_table_after("This writes")
              for span in code_spans(first_column)]
    assert "runs/monet.safetensors" in listed and "runs/slice-cache/" in listed
    for path in listed:
        assert workspace.path(path).exists(), f"training did not write {path}, which the README lists"
    assert card_of(workspace, "runs/monet")["training"]["data_source"]["kind"] == "msd"


@pytest.mark.slow
def test_train_monet_with_torchrun(workspace):
    write_msd_folder(workspace.path("data/Task07_Pancreas"))
    # --batch-size 4: the README's default of 8 shortened, still divisible by the 4 processes.
    command = with_arguments(example("train MoNet with torchrun"), MONET_SHORT, "--batch-size 4")
    workspace.run(command, timeout=600, OMP_NUM_THREADS="1")
    assert card_of(workspace, "runs/monet")["training"]["cases"] == {"training": 1, "validation": 1, "test": 1}


@pytest.mark.slow
def test_train_monet_on_a_folder_pair(workspace):
    write_folder_pair(workspace.path("data/ct"), workspace.path("data/labels"))
    workspace.run(with_arguments(example("train MoNet on a folder pair"), MONET_SHORT), timeout=300)
    source = card_of(workspace, "runs/monet-site")["training"]["data_source"]
    assert (source["kind"], source["images"]) == ("folders", "data/ct")


@pytest.mark.slow
def test_evaluate_monet_against_the_baselines(msd_run):
    import train_monet

    workspace, _ = msd_run
    for architecture in ("unet16", "unet64", "attention-unet"):  # as the README says: --architecture NAME
        assert train_monet.main(["--msd", str(workspace.path("data/Task07_Pancreas")), *MONET_SHORT.split(),
                                 "--architecture", architecture,
                                 "--output", str(workspace.path(f"runs/{architecture}"))]) == 0
    workspace.run(example("evaluate segmentation"), timeout=300)
    for name in ("per_case_metrics.csv", "summary.md", "dice_boxplot.png", "hd_boxplot.png", "hd95_boxplot.png"):
        assert workspace.path(f"runs/evaluation/{name}").is_file(), name
    with open(workspace.path("runs/evaluation/per_case_metrics.csv"), newline="", encoding="utf-8") as stream:
        models = {row["model"] for row in csv.DictReader(stream)}
    assert len(models) == 4


@pytest.mark.slow
def test_demo_monet_lineage_runs_one_after_another(workspace):
    """The five documented runs, each starting from the previous one's output."""
    for name in ("demo MoNet run 1", "demo MoNet run 2", "demo MoNet run 3", "demo MoNet run 4", "demo MoNet run 5"):
        workspace.run(with_arguments(example(name), MONET_PHANTOMS_SHORT), timeout=300)
    assert starts_from(workspace, "runs/demo/monet-demo-phantom-v3", "runs/demo/stage3/monet-demo-phantom-v3")
    assert starts_from(workspace, "runs/demo/stage3/monet-demo-phantom-v3", "runs/demo/monet-demo-phantom-v2")
    assert card_of(workspace, "runs/demo/monet-demo-phantom-v3")["intended_use"] == MONET_INTENDED_USE



# --- training the IPMN ViT --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cohort_workspace(tmp_path_factory):
    """data/ipmn/cohort.csv: the README's example rows, then four phantom patients more; every
    image, mask and DICOM folder they name, as phantoms of their rows' classes and regions."""
    workspace = Workspace(tmp_path_factory.mktemp("cohort") / WORK)
    text = readme_block(EXAMPLES["cohort CSV"]) + "\n" + "\n".join(EXTRA_COHORT_ROWS) + "\n"
    workspace.path("data/ipmn").mkdir(parents=True)
    workspace.path("data/ipmn/cohort.csv").write_text(text, encoding="utf-8")
    write_cohort_files(text, workspace.path("data/ipmn"))
    return workspace


def test_cohort_csv_example_reads_as_the_readme_describes_it(cohort_workspace):
    from ipmn_data import read_cohort_csv

    assert example("cohort CSV").splitlines()[1:] == \
        cohort_workspace.path("data/ipmn/cohort.csv").read_text(encoding="utf-8").splitlines()[1:4]
    cases = read_cohort_csv(cohort_workspace.path("data/ipmn/cohort.csv"))[:3]
    assert [(c.case_id, c.patient_id, c.label) for c in cases] == \
        [("P001", "P001", 0), ("P002-2019", "P002", 1), ("P003", "P003", 2)]
    for case in cases:  # NIfTI, NRRD and DICOM folders, a box or a mask: every row loads
        t1, t2, region = case.load()
        assert t1.shape == t2.shape
    first_region = cases[0].load()[2]
    assert tuple(first_region.center_ras) == (12.5, -140.0, -310.0) and tuple(first_region.size_mm) == (90, 60, 50)


@pytest.mark.slow
def test_cross_validation_of_the_cohort_runs_until_it_needs_the_hub(cohort_workspace):
    """--pretrained-hub downloads ViT-B/16 weights: offline, the run reads and checks the
    cohort, pre-processes it and splits it, then stops saying how to work offline."""
    command = with_arguments(example("cross-validate the cohort"), IPMN_SHORT, "--folds 2 --inner-folds 2")
    completed = cohort_workspace.run(command, check=False, timeout=600)
    output = completed.stdout + completed.stderr
    assert completed.returncode != 0 and "Could not fetch the pretrained" in output, output[-3000:]
    assert "Offline" in output
    split = json.loads(cohort_workspace.path("runs/ipmn-cv/split.json").read_text(encoding="utf-8"))
    assert "P002-2019" in json.dumps(split)


@pytest.mark.slow
def test_training_on_the_cohort_runs_until_it_needs_the_hub(cohort_workspace):
    command = with_arguments(example("train the IPMN model on the cohort"), IPMN_SHORT, "--inner-folds 2")
    completed = cohort_workspace.run(command, check=False, timeout=600)
    output = completed.stdout + completed.stderr
    assert completed.returncode != 0 and "Could not fetch the pretrained" in output, output[-3000:]
    assert "Offline" in output
    assert "P003" in cohort_workspace.path("runs/ipmn-vit-site.run/data.json").read_text(encoding="utf-8")


@pytest.mark.slow
def test_demo_vit_stages_run_one_after_another(workspace):
    patients = "--patients 2 --val-patients 1"
    for name in ("demo ViT stage 1", "demo ViT stage 2"):
        workspace.run(with_arguments(example(name), patients, IPMN_PHANTOMS_SHORT), timeout=300)
    assert starts_from(workspace, "runs/demo/ipmn-vit-demo-phantom-v2", "runs/demo/stage1/ipmn-vit-demo-phantom-v2")
    assert card_of(workspace, "runs/demo/ipmn-vit-demo-phantom-v2")["intended_use"] == IPMN_INTENDED_USE


@pytest.mark.slow
def test_quick_cross_validation_on_phantoms(workspace):
    from ipmn_networks import METHOD_GROUPS

    command = with_arguments(example("cross-validate phantoms"), "--phantoms 4 --folds 2 --gradcam-cases 1",
                             IPMN_PHANTOMS_SHORT)
    workspace.run(command, timeout=600)
    output = workspace.path("runs/ipmn-cv-phantoms")
    with open(output / "results.csv", newline="", encoding="utf-8") as stream:
        methods = [row["method"] for row in csv.DictReader(stream)]
    assert sorted(methods) == sorted([*METHOD_GROUPS["ablations"], "resnet18"])
    listed = []
    for first_column, _ in markdown_table_after("mobilenet_v2`) or groups"):
        folder = ""  # `<method>/fold-NN/curves.csv`, `result.json`: the second lies beside the first
        for span in code_spans(first_column):
            listed.append(span if "/" in span else folder + span)
            folder = span.rpartition("/")[0] + "/" if "/" in span.rstrip("/") else folder
    assert "results.md" in listed and "split.json" in listed
    for span in listed:
        if span.startswith("../"):  # the pre-processing cache: kept for a cohort, not for phantoms
            continue
        for method in (methods if "<method>" in span else [None]):
            if "gradcam" in span and method != "resnet18":  # Grad-CAM: the CNN baselines only
                continue
            pattern = span.replace("<method>", method or "").replace("NN", "*").replace("<case>", "*")
            assert list(output.glob(pattern)), f"the cross-validation wrote no {pattern}, which the README lists"


# --- models and the test tools -----------------------------------------------------------------

def test_a_pickle_checkpoint_is_refused_and_converted_as_the_readme_says(workspace):
    import torch

    from PancreasSegMoNetLib.network import MoNet

    torch.manual_seed(3)
    torch.save(MoNet().state_dict(), workspace.path("x.pth"))
    write_ct(workspace.path("ct.nii.gz"), seed=41)
    refused = workspace.run("pancreas-seg segment ct.nii.gz --output out --model x.pth", check=False, timeout=300)
    assert refused.returncode == 2 and "convert_checkpoint.py" in refused.stderr, refused.stderr
    command = example("convert a checkpoint")
    workspace.run(command.replace("python Resources/Training/",
                                  f"python {shlex.quote(str(ROOT / 'Resources' / 'Training'))}/"), timeout=300)
    card = json.loads(workspace.path("x.json").read_text(encoding="utf-8"))
    assert card["title"] == "MoNet (site A)" and card["intended_use"] == "research only"
    assert card["sha256"] == hashlib.sha256(workspace.path("x.safetensors").read_bytes()).hexdigest()
    used = workspace.run("pancreas-seg segment ct.nii.gz --output out --model x.safetensors", timeout=300)
    assert "ct: pancreas" in used.stdout


def test_mutation_command_knows_the_groups_the_readme_names(workspace, current_environment):
    """Its --help only: a mutation run takes many minutes per group."""
    command = example_commands("mutation testing")[0]
    completed = workspace.run(with_arguments(script_command(command.split(" geometry")[0]), "--help"), timeout=120)
    for group in ("geometry", "files", "weights", "monet", "grids", "ipmn", "training", "route", "engines", "review",
                  "federated", "region"):
        assert group in completed.stdout
    for group in command.split("#")[0].split()[2:]:
        assert group in completed.stdout
    section = readme_text().split("**Mutation testing**")[1].split("The groups are")[1].split("Statements")[0]
    named = re.findall(r"`(\w+)`", section)
    assert len(named) == 12, named
    for group in named:
        assert group in completed.stdout, f"the README names a mutation group {group} that does not exist"


# --- federated training ---------------------------------------------------------------------------

@pytest.mark.slow
def test_federated_simulation_example(workspace):
    """The README's simulation, shortened: 2 sites of 2 tiny phantoms, one round of one step."""
    workspace.run(with_arguments(example("federated simulation"), "--sites 2 --rounds 1 --local-steps 1",
                                 "--phantoms 4 --phantom-shape 12 64 64 --input-size 64 --batch-size 2",
                                 "--test-fraction 0 --max-val-slices 4 --device cpu"), timeout=600)
    card = card_of(workspace, "runs/fed-monet")
    assert card["training"]["federated"]["rounds"] == 1 and len(card["training"]["federated"]["sites"]) == 2
    assert 0 < card["training"]["federated"]["start"]["output_prior"]["pancreas_fraction"] < 0.5  # --prior-init
    assert "round 1: site 2 validation" in workspace.path("runs/fed-monet.run/federated.log").read_text(encoding="utf-8")


@pytest.mark.slow
def test_federated_comparison_example(workspace):
    """The README's comparison, shortened: 2 sites of 4 tiny phantoms, one round of one step; the
    training options reach all three arms, which are scored on held-out phantoms."""
    workspace.run(with_arguments(example("federated comparison"), "--phantoms 4 --test-phantoms 2 --sites 2",
                                 "--rounds 1 --local-steps 1 --phantom-shape 12 64 64 --batch-size 2"), timeout=600)
    table = workspace.path("runs/fed-vs-central/comparison.md").read_text(encoding="utf-8").splitlines()
    assert table[0].startswith("| training (2 optimiser steps in all) | Dice on 2 held-out phantoms")
    assert [row.split(" | ")[0] for row in table[2:]] == [
        "| centralised", "| federated, 2 sites IID", "| federated, 2 sites non-IID"]
    cards = [card_of(workspace, f"runs/fed-vs-central/{arm}/monet") for arm in ("central", "2-sites-IID",
                                                                                  "2-sites-non-IID")]
    assert all(card["training"]["batch_size"] == 2 for card in cards)
    assert all(card["training"]["protocol"]["prior_init"] and card["training"]["protocol"]["loss"] == "dice+bce"
               for card in cards)
    assert all(float(row.split(" | ")[1].split(" +- ")[0]) >= 0 for row in table[2:])


def test_federated_deployment_commands_use_options_the_tools_have(workspace):
    """Each Flower command's options are in its --help; the app command runs, and Flower accepts
    the app it writes (Testing/test_federated.py runs the same commands on 127.0.0.1)."""
    from flwr.common.config import validate_config

    for command in example_commands("federated deployment"):
        words = shlex.split(command)
        if words[0] == "python":
            workspace.run(command.replace("/srv/pancreasai/", "runs/"), timeout=120)
            continue
        tool = words[:3] if words[:2] == ["flwr", "supernode"] else words[:2] if words[0] == "flwr" else words[:1]
        helped = workspace.run(shlex.join([*tool, "--help"]), timeout=120).stdout
        for option in (word for word in words if word.startswith("--")):
            assert option in helped, f"{' '.join(tool)} has no option {option}"
    import tomllib

    config = tomllib.loads(workspace.path("runs/fed-app/pyproject.toml").read_text(encoding="utf-8"))
    valid, errors, _ = validate_config(config, project_dir=workspace.path("runs/fed-app"))
    assert valid, errors
    assert config["tool"]["flwr"]["app"]["config"]["min-sites"] == 3


def test_federated_connection_example_is_a_connection_flower_reads(tmp_path, monkeypatch):
    from flwr.cli.flower_config import read_superlink_connection

    block = example("federated connection")
    (tmp_path / "config.toml").write_text(f"[superlink]\ndefault = \"hospitals\"\n\n{block}\n", encoding="utf-8")
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    connection = read_superlink_connection("hospitals")
    assert (connection.address, connection.root_certificates) == ("server.example.org:8000",
                                                                  "/etc/pancreasai/certs/ca.pem")
