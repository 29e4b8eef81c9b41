"""What `test_readme_examples.py` needs to run the README's examples as a user would: the
README's code blocks, a working folder of its own in which shell commands run through bash,
the input files the examples name (made by the project's own phantom generators), and a
static check of the Slicer-console examples against the module files.

The README's commands are typed in the clone's folder (`python Resources/Training/...`,
`pip install -r requirements-dev.txt`). A working folder stands in for it: it links to the
clone's `Resources/` and `requirements-dev.txt`, and everything the commands write and read
lies in it, by relative paths."""

from __future__ import annotations

import ast
import csv
import io
import os
import re
import subprocess
import sys
import textwrap
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: What the README's commands name relative to the clone, linked into every working folder.
CLONE_ENTRIES = ("Resources", "requirements-dev.txt")


# --- the README's code blocks -------------------------------------------------------------------

@dataclass(frozen=True)
class Block:
    """A code block: `kind` is the fence's language ("bash", "python", "text" when none) or
    "indented" (four spaces, as the training sections use); `text` without the indentation."""

    kind: str
    text: str
    line: int  # where it starts in README.md (1-based)


def readme_text() -> str:
    return README.read_text(encoding="utf-8")


def readme_blocks(markdown: Optional[str] = None) -> list[Block]:
    """Every fenced and every indented code block of the README, in order."""
    lines = (readme_text() if markdown is None else markdown).splitlines()
    blocks, index, after_blank = [], 0, True
    while index < len(lines):
        line = lines[index]
        fence = re.match(r"^(\s*)(```+|~~~+)\s*([\w+-]*)\s*$", line)
        if fence:
            indent, marker, language = fence.groups()
            start, body = index + 1, []
            index += 1
            while index < len(lines) and not lines[index].strip().startswith(marker):
                body.append(lines[index][len(indent):] if lines[index].startswith(indent) else lines[index].lstrip())
                index += 1
            blocks.append(Block(language or "text", "\n".join(body), start + 1))
            index += 1
            after_blank = False
            continue
        if after_blank and re.match(r"^ {4,}\S", line):
            start, body = index, []
            while index < len(lines) and (not lines[index].strip() or re.match(r"^ {4,}", lines[index])):
                body.append(lines[index])
                index += 1
            while not body[-1].strip():
                body.pop()
            blocks.append(Block("indented", textwrap.dedent("\n".join(body)), start + 1))
            continue
        after_blank = not line.strip()
        index += 1
    return blocks


def block_text(text: str) -> str:
    """A block as written in a test (indented, between blank lines) as `readme_blocks` gives it."""
    return textwrap.dedent(text).strip("\n")


def readme_block(text: str) -> str:
    """`text` as the README has it: fails, naming the block, when no README block reads so
    (the README's example was edited, and the test that runs it was not)."""
    text = block_text(text)
    if text not in {block.text for block in readme_blocks()}:
        raise AssertionError("README.md has no code block that reads:\n" + textwrap.indent(text, "    ")
                             + "\nIf the example was changed on purpose, change its test in "
                               "Testing/test_readme_examples.py to match.")
    return text


def commands_of(text: str) -> list[str]:
    """The commands of a shell block: one per line, backslash continuations joined, blank and
    comment-only lines left out."""
    commands, current = [], ""
    for line in text.splitlines():
        current += line
        if line.rstrip().endswith("\\"):
            current += "\n"
            continue
        if current.strip() and not current.strip().startswith("#"):
            commands.append(current.strip())
        current = ""
    return commands


def _comment_start(command: str) -> int:
    """Index of the `#` that starts a trailing shell comment, or len(command)."""
    quote = None
    for position, character in enumerate(command):
        if quote:
            if character == quote:
                quote = None
        elif character in "'\"":
            quote = character
        elif character == "#" and (position == 0 or command[position - 1].isspace()):
            return position
    return len(command)


def with_arguments(command: str, *arguments: str) -> str:
    """`command` with `arguments` added at its end (before a trailing comment). argparse takes
    the last value of an option given twice, so this is how a test shortens a long command."""
    end = _comment_start(command)
    return " ".join([command[:end].rstrip(), *arguments])


def markdown_table_after(heading_line: str, markdown: Optional[str] = None) -> list[list[str]]:
    """The cells of the first Markdown table after the line that starts with `heading_line`."""
    lines = (readme_text() if markdown is None else markdown).splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith(heading_line))
    rows, table_started = [], False
    for line in lines[start + 1:]:
        if line.startswith("|"):
            table_started = True
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(set(cell) <= set("-: ") for cell in cells):
                rows.append(cells)
        elif table_started:
            break
    return rows[1:]  # without the header row


def code_spans(text: str) -> list[str]:
    """The inline `code` of Markdown text (fenced blocks left out)."""
    prose = re.sub(r"^\s*(```|~~~).*?^\s*\1[^\n]*$", "", text, flags=re.MULTILINE | re.DOTALL)
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]


# --- a working folder of its own ----------------------------------------------------------------

class Workspace:
    """A folder to run README commands in, as a user would type them into bash there: `python`,
    `pip`, `torchrun`, `pancreas-seg` and `ipmn-risk` are the ones of the environment running
    the tests; nothing is downloaded (Hugging Face hub offline, pip without an index); the
    model download cache is the folder's own."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for name in CLONE_ENTRIES:
            link = folder / name
            if not link.exists():
                link.symlink_to(ROOT / name)

    def path(self, relative: str) -> Path:
        return self.folder / relative

    def environment(self) -> dict:
        environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        environment.update({
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PANCREASAI_VENV": sys.prefix,
            "PANCREASAI_CACHE": str(self.folder / ".pancreasai-cache"),
            "HF_HUB_OFFLINE": "1",
            "PIP_NO_INDEX": "1",
            "MPLBACKEND": "Agg",
        })
        environment.pop("PANCREASAI_MODEL_MIRROR", None)
        return environment

    def run(self, command: str, timeout: float = 300, check: bool = True, **environment) -> subprocess.CompletedProcess:
        """`command` through bash in this folder; with `check`, fails showing its output when it
        does not exit 0."""
        completed = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=self.folder,
                                   env={**self.environment(), **environment}, capture_output=True,
                                   encoding="utf-8", errors="replace", timeout=timeout)
        if check:
            assert completed.returncode == 0, explain(completed)
        return completed


def explain(completed: subprocess.CompletedProcess) -> str:
    return (f"`{completed.args[-1]}` exited with {completed.returncode}\n--- stdout (end)\n"
            f"{completed.stdout[-4000:]}\n--- stderr (end)\n{completed.stderr[-4000:]}")


# --- input files, made by the project's own generators -------------------------------------------

def write_ct(path: Path, seed: int, shape=(12, 96, 96)) -> Path:
    """A small synthetic abdominal CT with a pancreas (`PancreasAIPhantoms.ct`)."""
    from PancreasAILib.volume import Volume
    from PancreasAILib.volume_io import write_volume
    from PancreasAIPhantoms.ct import make_ct_phantom

    phantom = make_ct_phantom(seed, shape=shape)
    return write_volume(Volume(phantom.hu, phantom.ijk_to_ras), path)


def write_dicom_series(volume, folder: Path, modality: str = "CT", series_uid: str = "1.2.826.0.1.3680043.8.498.70") -> Path:
    """`volume` as a DICOM series, one file per slice, with the tags a reader needs for its geometry."""
    import SimpleITK as sitk

    from PancreasAILib.volume_io import sitk_from_volume

    folder.mkdir(parents=True, exist_ok=True)
    image = sitk_from_volume(volume.with_array(np.round(volume.array).astype(np.int16)))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    orientation = "\\".join(f"{v:.10f}" for v in (*direction[:, 0], *direction[:, 1]))
    spacing = image.GetSpacing()
    storage = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}[modality]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        tags = {"0008|0016": storage, "0008|0018": f"{series_uid}.{k + 1}", "0008|0060": modality,
                "0010|0020": "PHANTOM", "0020|000d": "1.2.826.0.1.3680043.8.498.1", "0020|000e": series_uid,
                "0020|0013": str(k + 1),
                "0020|0032": "\\".join(f"{p:.10f}" for p in image.TransformIndexToPhysicalPoint((0, 0, k))),
                "0020|0037": orientation, "0028|0030": f"{spacing[1]:.10f}\\{spacing[0]:.10f}",
                "0018|0050": f"{spacing[2]:.10f}"}
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IM{k:04d}.dcm"))
        writer.Execute(slice_image)
    return folder


def write_dicom_ct(folder: Path, seed: int, shape=(12, 96, 96)) -> Path:
    from PancreasAILib.volume import Volume
    from PancreasAIPhantoms.ct import make_ct_phantom

    phantom = make_ct_phantom(seed, shape=shape)
    return write_dicom_series(Volume(phantom.hu, phantom.ijk_to_ras), folder, "CT")


def write_msd_folder(task: Path, count: int = 3, shape=(12, 64, 64)) -> Path:
    """A Medical Segmentation Decathlon Task07_Pancreas folder of tiny CT phantoms: dataset.json,
    imagesTr/, labelsTr/ (1 pancreas, 2 tumour in the upper half) and macOS `._` companions."""
    import json

    from PancreasAILib.volume import Volume
    from PancreasAILib.volume_io import write_volume
    from PancreasAIPhantoms.ct import make_ct_phantom

    entries = []
    for index in range(1, count + 1):
        phantom = make_ct_phantom(index, shape=shape)
        labels = phantom.pancreas.astype(np.uint8)
        labels[shape[0] // 2:][labels[shape[0] // 2:] > 0] = 2
        name = f"pancreas_{index:03d}.nii.gz"
        write_volume(Volume(phantom.hu, phantom.ijk_to_ras), task / "imagesTr" / name)
        write_volume(Volume(labels, phantom.ijk_to_ras), task / "labelsTr" / name)
        for folder in ("imagesTr", "labelsTr"):
            (task / folder / f"._{name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (task / "dataset.json").write_text(json.dumps({
        "name": "Pancreas", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "pancreas", "2": "cancer"},
        "numTraining": count, "training": entries, "test": []}))
    return task


def write_folder_pair(images: Path, labels: Path, count: int = 3, shape=(12, 64, 64)) -> None:
    """A folder of CT phantoms and a folder of their label maps with the same file names."""
    from PancreasAILib.volume import Volume
    from PancreasAILib.volume_io import write_volume
    from PancreasAIPhantoms.ct import make_ct_phantom

    for index in range(count):
        phantom = make_ct_phantom(100 + index, shape=shape)
        write_volume(Volume(phantom.hu, phantom.ijk_to_ras), images / f"site_{index:02d}.nrrd")
        write_volume(Volume(phantom.pancreas.astype(np.uint8), phantom.ijk_to_ras), labels / f"site_{index:02d}.nrrd")


def copy_of_demo_monet(path: Path, name: str) -> Path:
    """A MoNet model file of one's own: the demo weights saved again under `name` with
    `save_model`, as the README's "Adding a model" does (without the demo card's checks)."""
    from PancreasSegMoNetLib.registry import model_registry

    return _copy_of_model(model_registry().resolve(None), path, name)


def copy_of_demo_vit(path: Path, name: str) -> Path:
    """The same for the demo IPMN ViT."""
    from IPMNRiskLib.registry import model_registry

    return _copy_of_model(model_registry().resolve(None), path, name)


def _copy_of_model(card, path: Path, name: str) -> Path:
    from safetensors.torch import load_file

    from PancreasAILib.weights import save_model

    left_out = ("weights_file", "sha256", "format_version", "precision_checks")
    fields = {k: v for k, v in card.data.items() if k not in left_out}
    return save_model(load_file(str(card.weights_path)), path, {**fields, "name": name}).weights_path


@dataclass(frozen=True)
class MrStudy:
    t1: object  # Volume
    t2: object
    pancreas: object  # Volume, uint8 mask
    center_ras: np.ndarray
    size_mm: np.ndarray


def mr_study(seed: int, risk_class: int, center_ras=None, shape=(12, 48, 48), spacing=(4.5, 4.5, 6.0)) -> MrStudy:
    """A synthetic T1/T2 pair (`PancreasAIPhantoms.mr`); with `center_ras`, moved so that the
    centre of the box around its pancreas lies there."""
    from PancreasAIPhantoms.mr import make_mr_phantom
    from PancreasAILib.volume import Volume

    phantom = make_mr_phantom(seed, risk_class, shape=shape, spacing=spacing)
    center, size = (np.asarray(v, dtype=float) for v in phantom.pancreas_box_ras)
    ijk_to_ras = phantom.ijk_to_ras.copy()
    if center_ras is not None:
        ijk_to_ras[:3, 3] += np.asarray(center_ras, dtype=float) - center
        center = np.asarray(center_ras, dtype=float)
    return MrStudy(Volume(phantom.t1, ijk_to_ras), Volume(phantom.t2, ijk_to_ras),
                   Volume(phantom.pancreas.astype(np.uint8), ijk_to_ras), center, size)


def write_image(volume, path: Path) -> Path:
    """A volume file, or a DICOM series when `path` has no volume file ending (a folder)."""
    from PancreasAILib.volume_io import is_volume_file, write_volume

    if is_volume_file(path):
        return write_volume(volume, path)
    return write_dicom_series(volume, path, "MR", series_uid=f"1.2.826.0.1.3680043.8.498.{zlib.crc32(str(path).encode())}")


def write_pancreas_segmentation(mask, path: Path) -> Path:
    """A `.seg.nrrd` with the "Pancreas" segment, as `pancreas-seg` writes it."""
    from PancreasAILib.segmentation_file import write_segmentation
    from PancreasSegMoNetLib.cli import PANCREAS_SEGMENT

    return write_segmentation(mask, path, [PANCREAS_SEGMENT])


def write_cohort_files(csv_text: str, folder: Path, first_seed: int = 0) -> list[dict]:
    """Write the images and masks that the rows of a cohort (or batch) CSV name, relative to
    `folder`: a T1/T2 phantom of the row's label whose pancreas box is centred on the row's
    roi_center (when given), a pancreas mask where roi_mask names one. Returns the rows."""
    from ipmn_data import parse_label

    rows = list(csv.DictReader(io.StringIO(csv_text)))
    for number, row in enumerate(rows):
        label = parse_label(row["label"]) if row.get("label") else 2
        center = [float(v) for v in row["roi_center"].split(",")] if row.get("roi_center") else None
        study = mr_study(first_seed + number, label, center)
        write_image(study.t1, folder / row["t1"])
        write_image(study.t2, folder / row["t2"])
        if row.get("roi_mask"):
            write_image(study.pancreas, folder / row["roi_mask"])
    return rows


# --- the Slicer-console examples, checked against the module files ---------------------------------

def _module_classes(module: str) -> dict[str, dict[str, ast.FunctionDef]]:
    """Classes of `<module>/<module>.py` and their methods, read without importing it."""
    tree = ast.parse((ROOT / module / f"{module}.py").read_text(encoding="utf-8"))
    return {node.name: {item.name: item for item in node.body if isinstance(item, ast.FunctionDef)}
            for node in tree.body if isinstance(node, ast.ClassDef)}


def _returned_lib_function(method: ast.FunctionDef):
    """The Lib function whose result `method` returns (`return assess(...)` after
    `from IPMNRiskLib.logic import assess`), imported; None if there is none."""
    import importlib

    imported = {alias.asname or alias.name: (node.module, alias.name)
                for node in ast.walk(method) if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    for node in ast.walk(method):
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name):
            if node.value.func.id in imported:
                module, name = imported[node.value.func.id]
                return getattr(importlib.import_module(module), name)
    return None


def _signature_problems(where: str, method: ast.FunctionDef, call: ast.Call) -> list[str]:
    arguments = method.args
    names = [a.arg for a in arguments.posonlyargs + arguments.args][1:]  # without self
    keywords = names + [a.arg for a in arguments.kwonlyargs]
    problems = []
    if len(call.args) > len(names) and arguments.vararg is None:
        problems.append(f"{where} takes at most {len(names)} positional arguments, the README gives {len(call.args)}")
    for keyword in call.keywords:
        if keyword.arg is not None and keyword.arg not in keywords and arguments.kwarg is None:
            problems.append(f"{where} has no argument '{keyword.arg}' (it has {', '.join(keywords)})")
    return problems


def console_example_problems(code: str) -> list[str]:
    """What the Slicer-console `code` uses that does not exist: the modules' classes, their
    methods and arguments (from the module files), attributes of the results those methods
    return (from the Lib functions they return), `slicer.util` functions and scene methods
    (from slicer-core). The statements are followed in order, as the console runs them."""
    import slicer
    import slicer.util

    checker = _ConsoleChecker(slicer)
    checker.visit(ast.parse(code))
    return checker.problems


class _ConsoleChecker(ast.NodeVisitor):
    def __init__(self, slicer) -> None:
        self.slicer = slicer
        self.modules: dict[str, dict] = {}
        self.instances: dict[str, tuple[str, str]] = {}  # variable -> (module, class)
        self.results: dict[str, object] = {}  # variable -> the Lib function whose result it holds
        self.problems: list[str] = []

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if (ROOT / alias.name / f"{alias.name}.py").is_file():
                self.modules[alias.name] = _module_classes(alias.name)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            if isinstance(target, ast.Name):
                self.instances.pop(target.id, None)
                self.results.pop(target.id, None)
        target, value = node.targets[0], node.value
        if not (isinstance(target, ast.Name) and isinstance(value, ast.Call)):
            return
        func = value.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in self.modules:
            if func.attr in self.modules[func.value.id]:
                self.instances[target.id] = (func.value.id, func.attr)
            else:
                self.problems.append(f"{func.value.id}.py defines no class '{func.attr}'")
        method = self._method(value)
        if method is not None:
            self.results[target.id] = _returned_lib_function(method)

    def _method(self, call: ast.Call):
        func = call.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in self.instances:
            module, cls = self.instances[func.value.id]
            return self.modules[module][cls].get(func.attr)
        return None

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in self.instances:
            module, cls = self.instances[func.value.id]
            method = self._method(node)
            if method is None:
                self.problems.append(f"{module}.{cls} has no method '{func.attr}'")
            else:
                self.problems.extend(_signature_problems(f"{module}.{cls}.{func.attr}", method, node))
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        import dataclasses

        if isinstance(node.value, ast.Name) and node.value.id in self.results:
            function = self.results[node.value.id]
            returned = getattr(function, "__annotations__", {}).get("return")
            if isinstance(returned, str):
                returned = vars(sys.modules[function.__module__]).get(returned)
            if dataclasses.is_dataclass(returned):
                fields = {field.name for field in dataclasses.fields(returned)}
                if node.attr not in fields:
                    self.problems.append(f"the result of {function.__name__} has no '{node.attr}' "
                                         f"(it has {', '.join(sorted(fields))})")
        if isinstance(node.value, ast.Attribute) and isinstance(node.value.value, ast.Name) \
                and node.value.value.id == "slicer":
            owner = node.value.attr
            if owner == "util" and not hasattr(self.slicer.util, node.attr):
                self.problems.append(f"slicer.util has no '{node.attr}'")
            if owner == "mrmlScene" and not hasattr(self.slicer.vtkMRMLScene, node.attr):
                self.problems.append(f"the MRML scene has no method '{node.attr}'")
        self.generic_visit(node)
