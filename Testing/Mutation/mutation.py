"""Mutation testing of the core: do our tests catch small, realistic bugs planted in the code?

    ./pancreasai.sh mutation [GROUP ...]      (groups below; default: all; about an hour on 2 cores)

For each group, mutmut (https://github.com/boxed/mutmut) plants every small change it knows in the
group's files, one at a time (a `<` for a `<=`, a `+ 1` for a `- 1`, a constant, a dropped
argument...), and runs the group's own fast test files (`-m "not slow"`) against each. A mutant is
killed when a test fails, survives when all pass, and has no test when no selected test runs its
function. Score = killed / all mutants (so untested code counts against it).

Error messages and warnings are text for people, checked by tests where they matter, not
computed: statements that raise, or append a warning, are left out (`do_not_mutate_patterns`);
the conditions that decide to raise are mutated like any other line.

mutmut needs the packages in a `src/` layout, so each group runs in a copy of the tree under
`output/mutation/<group>/` (Slicer's module folders flattened into `src/`); the repository itself
is never changed. Writes `output/mutation/REPORT.md`: the score per file and the surviving mutants
(`cd output/mutation/<group> && mutmut show NAME` shows one).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "output" / "mutation"
MUTMUT_VERSION = "3.8.1"

# group -> (core files, their own test files)
GROUPS = {
    "geometry": (["PancreasAI/PancreasAILib/volume.py", "PancreasAI/PancreasAILib/orientation.py",
                  "PancreasAI/PancreasAILib/resample.py"],
                 ["test_geometry.py", "test_volume_io.py"]),
    "files": (["PancreasAI/PancreasAILib/volume_io.py", "PancreasAI/PancreasAILib/segmentation_file.py",
               "PancreasAI/PancreasAILib/output_files.py", "PancreasAI/PancreasAILib/interrupts.py"],
              ["test_volume_io.py", "test_segmentation_file.py", "test_output_files.py", "test_interrupts.py"]),
    "weights": (["PancreasAI/PancreasAILib/weights.py"], ["test_weights.py"]),
    "monet": (["PancreasSegMoNet/PancreasSegMoNetLib/network.py", "PancreasSegMoNet/PancreasSegMoNetLib/preprocessing.py",
               "PancreasSegMoNet/PancreasSegMoNetLib/segmentation.py"],
              ["test_monet_model.py", "test_segmentation_pipeline.py"]),
    "grids": (["IPMNRisk/IPMNRiskLib/grids.py", "IPMNRisk/IPMNRiskLib/rollout.py", "IPMNRisk/IPMNRiskLib/tta.py"],
              ["test_ipmn_grids.py", "test_rollout.py", "test_ipmn_tta.py"]),
    "ipmn": (["IPMNRisk/IPMNRiskLib/inference.py", "IPMNRisk/IPMNRiskLib/preprocessing.py"],
             ["test_ipmn_inference.py", "test_ipmn_preprocessing.py"]),
    "route": (["PancreasAI/PancreasAILib/tasks.py", "PancreasAI/PancreasAILib/route.py"],
              ["test_tasks.py", "test_route.py"]),
    "engines": (["PancreasAI/PancreasAILib/engines.py", "PancreasAI/PancreasAILib/cpu.py"], ["test_engines.py"]),
    "review": (["PancreasAI/PancreasAILib/review.py"], ["test_review.py"]),
    "federated": (["Resources/Training/federated_site.py", "Resources/Training/federated_server.py"],
                  ["test_federated.py"]),
    "region": (["IPMNRisk/IPMNRiskLib/automatic_region.py"], ["test_automatic_region.py"]),
    "training": (["Resources/Training/segmentation_metrics.py", "Resources/Training/ipmn_folds.py",
                  "Resources/Training/trainkit/checkpoint.py"],
                 ["test_segmentation_metrics.py", "test_trainkit.py", "test_training_ipmn.py"]),
}
# Where each tree of Python modules goes in the copy's src/ (the import name is kept).
SOURCE_ROOTS = {"PancreasAI": "PancreasAI", "PancreasSegMoNet": "PancreasSegMoNet", "IPMNRisk": "IPMNRisk",
                "Resources/Training": "Resources/Training"}
NOT_MUTATED = [r"^\s*raise \w+\(", r"warnings\.append\(", r"^\s*(print|log)\(", r"^\s*logging\.\w+\("]


def src_path(repo_path: str) -> str:
    """`PancreasAI/PancreasAILib/volume.py` -> `src/PancreasAILib/volume.py`."""
    for root in sorted(SOURCE_ROOTS, key=len, reverse=True):
        if repo_path.startswith(root + "/"):
            return "src/" + repo_path[len(root) + 1:]
    raise ValueError(f"{repo_path} is not under a source root")


def build_copy(group: str) -> Path:
    """A src-layout copy of the tree for one group, with its mutmut set-up."""
    files, tests = GROUPS[group]
    copy = OUTPUT / group
    shutil.rmtree(copy, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "demo-lineage")
    for package in ("PancreasAI/PancreasAILib", "PancreasSegMoNet/PancreasSegMoNetLib", "IPMNRisk/IPMNRiskLib",
                    "Resources/PancreasAIPhantoms"):
        shutil.copytree(ROOT / package, copy / "src" / Path(package).name, ignore=ignore)
    # The training modules are imported by their own names (trainkit, ipmn_folds...).
    shutil.copytree(ROOT / "Resources" / "Training", copy / "src", ignore=ignore, dirs_exist_ok=True)
    # Tests that run a training script by its path find it where the repository has it (unmutated:
    # such a test checks the script, not the group's files).
    shutil.copytree(ROOT / "Resources" / "Training", copy / "Resources" / "Training", ignore=ignore)
    # models.py finds the registries beside its package: both modules' Models/ meet in src/Resources.
    for module in ("PancreasSegMoNet", "IPMNRisk"):
        shutil.copytree(ROOT / module / "Resources", copy / "src" / "Resources", dirs_exist_ok=True)
    shutil.copytree(ROOT / "Testing", copy / "Testing", ignore=shutil.ignore_patterns("__pycache__", "Mutation"))
    patterns = ", ".join(f"'{p}'" for p in NOT_MUTATED)
    (copy / "pyproject.toml").write_text(f"""[tool.pytest.ini_options]
testpaths = ["Testing"]
markers = ["slow: takes more than about 20 seconds"]
timeout = 600

[tool.mutmut]
source_paths = ["src/"]
only_mutate = [{", ".join(f'"{src_path(f)}"' for f in files)}]
do_not_mutate_patterns = [{patterns}]
also_copy = ["Testing/", "Resources/Training/"]
pytest_add_cli_args_test_selection = [{", ".join(f'"Testing/{t}"' for t in tests)}]
pytest_add_cli_args = ["-m", "not slow", "-p", "no:cacheprovider"]
""")
    return copy


def run_group(group: str, mutmut: str) -> tuple[Counter, dict, float]:
    """(status counts per file, surviving mutant names per file, seconds)."""
    files, _ = GROUPS[group]
    copy = build_copy(group)
    started = time.perf_counter()
    log = copy / "mutmut.log"
    with open(log, "w") as stream:
        # One thread: mutmut forks a worker per mutant, and a forked child waits forever on
        # the parent's OpenMP thread pool once torch has started one.
        environment = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        finished = subprocess.run([mutmut, "run"], cwd=copy, stdout=stream, stderr=subprocess.STDOUT, check=False,
                                  env=environment)
    seconds = time.perf_counter() - started
    if finished.returncode != 0:  # e.g. a test that fails without any mutant: no score to give
        raise RuntimeError(f"mutmut could not run the {group} group (exit {finished.returncode}); see {log}")
    listing = subprocess.run([mutmut, "results", "--all", "true"], cwd=copy, capture_output=True, text=True)
    module_of = {src_path(f)[len("src/"):-len(".py")].replace("/", "."): f for f in files}
    counts: dict[str, Counter] = {f: Counter() for f in files}
    survivors: dict[str, list[str]] = {f: [] for f in files}
    for line in listing.stdout.splitlines():
        match = re.match(r"\s*(\S+)__mutmut_\d+: (.+)$", line)
        if not match:
            continue
        name, status = line.strip().split(": ", 1)
        module = next((m for m in sorted(module_of, key=len, reverse=True) if name.startswith(m + ".")), None)
        if module is None:
            continue
        counts[module_of[module]][status] += 1
        if status != "killed":
            survivors[module_of[module]].append(f"{name} ({status})")
    return counts, survivors, seconds


def score(counter: Counter) -> float:
    total = sum(counter.values())
    return counter["killed"] / total if total else float("nan")


def report(results: dict) -> str:
    lines = ["# Mutation testing of the core", "",
             f"mutmut {MUTMUT_VERSION}, each file against its own fast tests (`-m \"not slow\"`); "
             "score = killed / all mutants.", "",
             "| group | file | mutants | killed | survived | no tests | other | score |",
             "|---|---|---|---|---|---|---|---|"]
    overall = Counter()
    for group, (counts, _, seconds) in results.items():
        for path, counter in counts.items():
            overall += counter
            other = sum(v for k, v in counter.items() if k not in ("killed", "survived", "no tests"))
            lines.append(f"| {group} | `{path}` | {sum(counter.values())} | {counter['killed']} | "
                         f"{counter['survived']} | {counter['no tests']} | {other} | {score(counter):.1%} |")
    lines += [f"| **all** | | {sum(overall.values())} | {overall['killed']} | {overall['survived']} | "
              f"{overall['no tests']} | | **{score(overall):.1%}** |", "",
              "Run times: " + ", ".join(f"{g} {s / 60:.1f} min" for g, (_, _, s) in results.items()) + ".", "",
              "## Mutants that were not killed", ""]
    for group, (_, survivors, _) in results.items():
        for path, names in survivors.items():
            if names:
                lines.append(f"- `{path}` (`cd output/mutation/{group} && mutmut show NAME`): "
                             + ", ".join(f"`{n}`" for n in names))
    return "\n".join(lines) + "\n"


def ensure_mutmut() -> str:
    found = shutil.which("mutmut", path=str(Path(sys.executable).parent))
    if found is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", f"mutmut=={MUTMUT_VERSION}"], check=True)
        found = shutil.which("mutmut", path=str(Path(sys.executable).parent))
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("groups", nargs="*", metavar="GROUP", help=f"one or more of {', '.join(GROUPS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.groups) - set(GROUPS))
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    mutmut = ensure_mutmut()
    results, failed = {}, []
    for group in args.groups or list(GROUPS):
        print(f"mutation testing: {group} ...", flush=True)
        try:
            results[group] = run_group(group, mutmut)
        except RuntimeError as error:
            print(f"  {error}", flush=True)
            failed.append(str(error))
            continue
        counts = results[group][0]
        for path, counter in counts.items():
            print(f"  {path}: {counter['killed']}/{sum(counter.values())} killed ({score(counter):.1%})", flush=True)
    text = report(results) + "".join(f"\n**Not measured**: {line}\n" for line in failed)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "REPORT.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"Written to {OUTPUT / 'REPORT.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
