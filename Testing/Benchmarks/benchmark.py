"""CPU benchmarks of PancreasAI: MoNet against the paper's baselines on every inference engine,
and end-to-end segmentation.

    ./pancreasai.sh bench [--quick] [--only monet|ipmn] [--repeats N] [--output FILE] [--update-results]

Prints Markdown tables and writes them to output/bench/RESULTS.md (with --quick, to the temp
folder; --output FILE elsewhere); --update-results rewrites the committed
Testing/Benchmarks/RESULTS.md that the README quotes:
the machine (CPU features, OpenVINO, measured float32 GEMM peak), then
1. network time of every engine x precision x batch size for MoNet and the paper's baselines,
   scaled to 150 slices of 256 x 256, measured interleaved (each round times every row once,
   so changes in machine load hit all of them alike), with achieved GFLOP/s and agreement
   with PyTorch float32;
2. `segment_ct` end to end on synthetic 512 x 512 x 150 and x 600 CTs, with the engine
   chosen automatically and with PyTorch float32: wall time per step and peak memory, each
   run in a fresh process; the issue's two target ratios;
3. IPMN risk: one assessment on the CPU (per engine where `assess` takes one).
`--quick` runs the same code on a few slices with one repeat, as a smoke test: its numbers
mean nothing.

The script re-runs itself with the hidden `--worker` option for the measurements of section 2.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
#: The paper's baselines and the parameter count live beside the training scripts (not installed).
TRAINING_SCRIPTS = ROOT / "Resources" / "Training"

COMMITTED_RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
DEFAULT_OUTPUT = ROOT / "output" / "bench" / "RESULTS.md"
DEMO_CARD = ROOT / "PancreasSegMoNet" / "Resources" / "Models" / "monet-demo-phantom-v3.json"

# Section 1: times are scaled to the paper's 150 slices; the pipeline's former fixed batch
# size is the reference batch.
SLICES = 150
SLICE_SIZE = 256
BATCH_SIZE = 8
REPEATS = 3
MONET_BATCHES = (1, 2, 4, 8, 16)
MONET_TIMED_SLICES = 32  # a multiple of every batch size: no odd-sized last batch
BASELINE_BATCHES = (8,)
BASELINE_TIMED_SLICES = 8  # U-Net-64 in plain PyTorch takes about 1.3 s per slice on 2 cores
# Where bf16 is emulated (no AVX512_BF16 / AMX) PyTorch's bf16 autocast is ~10-15 x slower
# than float32: one small row shows it.
EMULATED_BF16_BATCH = 4
EMULATED_BF16_SLICES = 4
GEMM_SIZE = 4096
GEMM_REPEATS = 5

# Section 2: a typical abdominal CT, and the long scan the 3 GB limit is about.
CT_SHAPE = (150, 512, 512)
LONG_CT_TILES = 4  # 4 x 150 = 600 slices
SEGMENTATION_RUNS = 3  # per engine: the first in an empty engine cache, then cached ones
MEMORY_LIMIT_BYTES = 3e9
PHANTOM_SEED = 7
TARGET_END_TO_END_RATIO = 0.25
TARGET_PEAK_SHARE = 0.80

# --quick: every code path, on as little data as still exercises it.
QUICK_MONET_BATCHES = (1, 2)
QUICK_MONET_SLICES = 2
QUICK_BASELINE_SLICE_SIZE = 64  # divisible by 16, as the U-Nets need
QUICK_BASELINE_BATCHES = (2,)
QUICK_BASELINE_SLICES = 2
QUICK_BF16_BATCH = 1
QUICK_BF16_SLICES = 1
QUICK_GEMM_SIZE = 512
QUICK_GEMM_REPEATS = 2
QUICK_SEGMENTATION_RUNS = 2
QUICK_CT_SHAPE = (2, 512, 512)


@dataclass(frozen=True)
class PaperFigure:
    """MONET.md's published table: parameters (BN statistics included), TensorFlow CPU seconds
    for 150 slices on a 2.4 GHz 8-core Intel Core i9, mean and sd of 5 repetitions."""

    parameters: int
    seconds: float
    sd: float


PAPER = {
    "MoNet": PaperFigure(403_556, 14.88, 0.32),
    "U-Net-16": PaperFigure(1_946_705, 7.03, 0.21),
    "U-Net-64": PaperFigure(31_054_145, 45.34, 1.77),
    "Attention U-Net": PaperFigure(31_753_349, 53.30, 0.53),
}


_STARTED = time.perf_counter()


def log(message: str) -> None:
    """Progress, with seconds since start, goes to stderr: stdout holds only the Markdown."""
    print(f"[{time.perf_counter() - _STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


# --- machine ---------------------------------------------------------------------------------

def cpu_description() -> tuple[str, int, int]:
    """(CPU model name, physical cores, logical CPUs) from /proc/cpuinfo where it exists."""
    model, cores = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return model, os.cpu_count() or 1, os.cpu_count() or 1
    physical_id = "0"
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name" and not cores:
            model = value
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            cores.add((physical_id, value))
    logical = os.cpu_count() or 1
    return model, len(cores) or logical, logical


def memory_total_gb() -> Optional[float]:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return None


def load_average() -> str:
    """1, 5 and 15 minute load averages: other work on the machine slows every figure."""
    if not hasattr(os, "getloadavg"):
        return "n/a"
    return ", ".join(f"{value:.1f}" for value in os.getloadavg())


@dataclass
class GemmPeak:
    """The machine's measured float32 matrix-multiply rate. samples: GFLOP/s of each
    measurement (the best of `repeats` timed torch.matmul calls of two `size` x `size`
    matrices on `threads` threads), taken before section 1 and after each of its rounds, so
    that a burst of load from other work cannot stand for the machine; the peak is the best."""

    size: int
    repeats: int
    threads: int
    samples: list = field(default_factory=list)

    @property
    def gflops(self) -> float:
        return max(self.samples)

    def measure(self) -> float:
        """Take one more sample; returns it."""
        self.samples.append(gemm_gflops(self.size, self.repeats, self.threads))
        return self.samples[-1]

    def describe(self) -> str:
        return (f"{self.gflops:.0f} GFLOP/s: torch.matmul of two {self.size} x {self.size} float32 "
                f"matrices (2 n^3 FLOP) on {self.threads} threads = all usable cores, best of "
                f"{self.repeats} calls after a warm-up; the best of {len(self.samples)} such measurements "
                f"taken before section 1 and after each of its rounds (they ranged "
                f"{min(self.samples):.0f} - {max(self.samples):.0f}, median {statistics.median(self.samples):.0f})")


def gemm_gflops(size: int, repeats: int, threads: int) -> float:
    """Best float32 GEMM rate of `repeats` torch.matmul calls on `threads` threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=generator)
        b = torch.randn(size, size, generator=generator)
        torch.matmul(a, b)  # warm-up: thread pool, allocation
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - started)
    finally:
        torch.set_num_threads(before)
    return 2.0 * size ** 3 / best / 1e9


def measure_gemm_peak(size: int, repeats: int) -> GemmPeak:
    """A GemmPeak on all usable cores with its first sample."""
    from PancreasAILib.cpu import usable_cores

    peak = GemmPeak(size, repeats, usable_cores())
    peak.measure()
    return peak


def openvino_description() -> str:
    from PancreasAILib.engines import engine_version, openvino_available

    return engine_version("openvino") if openvino_available() else "not installed"


def machine_section(quick: bool, load_at_start: str, gemm: Optional[GemmPeak]) -> str:
    """Markdown table of what the numbers below were measured on (rendered at the end)."""
    import scipy
    import torch

    from PancreasAILib.cpu import detect_cpu_features

    model, physical, logical = cpu_description()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    memory = memory_total_gb()
    features = detect_cpu_features()

    def yes(value: bool) -> str:
        return "yes" if value else "no"

    rows = [
        ("CPU", model),
        ("CPU features", f"{features.name}: AVX-512 {yes(features.avx512)}, native BF16 "
                         f"{yes(features.native_bf16)}, AMX {yes(features.amx)} (flags from {features.source})"),
        ("cores", f"{physical} physical, {logical} logical, {usable} usable by this process"),
        ("memory", f"{memory:.1f} GB" if memory else "n/a"),
        ("float32 GEMM peak (measured)", gemm.describe() if gemm else "not measured (--only ipmn)"),
        ("PyTorch", f"{torch.__version__}, {torch.get_num_threads()} intra-op threads, "
                    f"oneDNN {'on' if torch.backends.mkldnn.is_available() else 'off'}, CPU only"),
        ("OpenVINO", openvino_description()),
        ("NumPy / SciPy", f"{np.__version__} / {scipy.__version__}"),
        ("Python", f"{platform.python_version()} ({platform.system()} {platform.release()})"),
        ("load average (1, 5, 15 min) at start / end", f"{load_at_start} / {load_average()}"),
        ("date", datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")),
    ]
    mode = ("**Quick run** (`--quick`): a smoke test on a few slices, one repeat. These numbers "
            "mean nothing; run `./pancreasai.sh bench` for the real ones." if quick else
            "Full run. Run `./pancreasai.sh bench` to measure your own machine.")
    return "\n".join([
        "# PancreasAI benchmarks", "",
        f"Written by `Testing/Benchmarks/benchmark.py`. {mode}", "",
        "## Machine", "", "| | |", "|---|---|",
        *(f"| {key} | {value} |" for key, value in rows), ""])


# --- section 1: network time per engine, precision and batch size ---------------------------

PLAIN = "PyTorch, plain eval (reference)"
SHIPPED = "PyTorch as shipped (prepare_for_inference)"
AUTOCAST = "PyTorch, bf16 autocast"
OPENVINO = "OpenVINO"


@dataclass
class Subject:
    """One network of section 1. plain: the module in eval mode (logits); card and recipe:
    what `engines.build_engine` builds the shipped engines from; slices: (N, 1, H, W) float32
    input timed on; batches: batch sizes timed; bf16_row: whether to time emulated bf16;
    timed: False for the big baselines with --quick (listed, not timed)."""

    name: str
    plain: object
    card: object
    recipe: object
    slices: np.ndarray
    batches: tuple[int, ...]
    parameters: int
    input_note: str
    bf16_row: bool
    timed: bool = True
    flops_per_slice: float = 0.0

    @property
    def reference_batch(self) -> int:
        return BATCH_SIZE if BATCH_SIZE in self.batches else max(self.batches)


@dataclass
class Row:
    """One engine x precision x batch size of one network; `run` None: not measured (`note`
    says why). seconds: one per round for `inputs`; outputs: probabilities of the first round,
    kept until the agreement with the reference is computed."""

    network: str
    engine: str
    precision: str
    batch: int
    run: Optional[Callable] = None
    inputs: Optional[np.ndarray] = None
    note: str = ""
    seconds: list = field(default_factory=list)
    outputs: Optional[np.ndarray] = None
    max_difference: Optional[float] = None
    dice: Optional[float] = None

    def per_150(self) -> float:
        """Median seconds scaled to 150 slices."""
        return statistics.median(self.seconds) / len(self.inputs) * SLICES


def randomise_batch_norm(model, seed: int) -> None:
    """Plausible non-trivial BatchNorm statistics and affine values (fresh ones are mean 0,
    variance 1, scale 1, shift 0), so that folding BatchNorm into the convolutions is tested
    on numbers that change something."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=generator))
            module.weight.data.copy_(0.5 + torch.rand(n, generator=generator))
            module.bias.data.copy_(0.1 * torch.randn(n, generator=generator))


def conv_flops_per_slice(module, input_shape: tuple[int, ...]) -> float:
    """FLOPs of one (1, *input_shape) forward pass counted with forward hooks on every Conv2d
    and ConvTranspose2d: 2 x multiply-accumulates (activations, pooling and sums not counted)."""
    import torch

    total = 0

    def hook(layer, inputs, output) -> None:
        nonlocal total
        kernel = layer.kernel_size[0] * layer.kernel_size[1]
        if isinstance(layer, torch.nn.ConvTranspose2d):  # each input value meets every kernel tap
            macs = inputs[0].numel() * (layer.out_channels // layer.groups) * kernel
        else:
            macs = output.numel() * (layer.in_channels // layer.groups) * kernel
        total += 2 * macs

    handles = [layer.register_forward_hook(hook) for layer in module.modules()
               if isinstance(layer, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    try:
        with torch.inference_mode():
            module(torch.zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
    return float(total)


def phantom_model_slices(phantom, card, count: int) -> tuple[np.ndarray, tuple[int, int]]:
    """`count` consecutive model inputs (N, 1, size, size) of the phantom CT, centred on its
    pancreas, made as segment_ct makes them (`model_slices`); and their slice range."""
    from PancreasAILib.orientation import axial_reorientation
    from PancreasAILib.volume import Volume
    from PancreasSegMoNetLib.preprocessing import model_slices

    ct = Volume(phantom.hu, phantom.ijk_to_ras)
    canonical = axial_reorientation(ct).apply_volume(ct)
    count = min(count, canonical.shape[0])
    with_pancreas = np.flatnonzero(axial_reorientation(ct).apply(phantom.pancreas).any(axis=(1, 2)))
    centre = int(with_pancreas.mean()) if len(with_pancreas) else canonical.shape[0] // 2
    k0 = max(0, min(centre - count // 2, canonical.shape[0] - count))
    slices, _ = model_slices(canonical.slab(k0, k0 + count), card.preprocessing)
    return np.ascontiguousarray(slices[:, None], dtype=np.float32), (k0, k0 + count)


def monet_subject(card, phantom, quick: bool) -> Subject:
    """MoNet with the benchmark card's weights, on phantom slices."""
    from PancreasAILib.weights import load_into, load_state_dict
    from PancreasSegMoNetLib.network import MoNet
    from PancreasSegMoNetLib.registry import ARCHITECTURE, monet_recipe

    if str(TRAINING_SCRIPTS) not in sys.path:
        sys.path.append(str(TRAINING_SCRIPTS))
    from trainkit.model_card import count_parameters

    plain = MoNet(**card.architecture_params)
    load_into(plain, load_state_dict(card, ARCHITECTURE), card)
    plain.eval()
    count = QUICK_MONET_SLICES if quick else MONET_TIMED_SLICES
    slices, (k0, k1) = phantom_model_slices(phantom, card, count)
    return Subject("MoNet", plain, card, monet_recipe(card), slices,
                   QUICK_MONET_BATCHES if quick else MONET_BATCHES,
                   count_parameters(plain, include_bn_running_stats=True),
                   f"phantom CT slices {k0}-{k1 - 1} (through the pancreas), as `model_slices` "
                   f"makes them, {card.name} weights", bf16_row=True)


def baseline_subjects(workdir: Path, quick: bool) -> list[Subject]:
    """U-Net-16, U-Net-64 and Attention U-Net: random weights (BatchNorm randomised), uniform
    noise input, saved as model files so that `build_engine` verifies, converts and caches them."""
    import torch

    from PancreasAILib.engines import NetworkRecipe
    from PancreasAILib.weights import save_model
    from PancreasSegMoNetLib.network import WithProbabilities, prepare_for_inference

    if str(TRAINING_SCRIPTS) not in sys.path:
        sys.path.append(str(TRAINING_SCRIPTS))
    from segmentation_baselines import AttentionUNet, UNet
    from trainkit.model_card import count_parameters

    size = QUICK_BASELINE_SLICE_SIZE if quick else SLICE_SIZE
    count = QUICK_BASELINE_SLICES if quick else BASELINE_TIMED_SLICES
    generator = torch.Generator().manual_seed(1)
    noise = torch.rand(count, 1, size, size, generator=generator).numpy()
    subjects = []
    for seed, (name, make) in enumerate((("U-Net-16", lambda: UNet(16)), ("U-Net-64", lambda: UNet(64)),
                                         ("Attention U-Net", lambda: AttentionUNet(64)))):
        torch.manual_seed(seed)
        network = make().eval()
        randomise_batch_norm(network, seed)
        slug = name.lower().replace(" ", "-")
        # A model file of its own: engines verify the weights and key their caches by its SHA256.
        card = save_model(network.state_dict(), workdir / f"{slug}.safetensors",
                          {"name": slug, "architecture": type(network).__name__, "intended_use": "benchmark only"})
        recipe = NetworkRecipe(f"benchmark-{slug}-probabilities",
                               lambda network=network: WithProbabilities(prepare_for_inference(network)),
                               (1, size, size))
        subjects.append(Subject(name, network, card, recipe, noise,
                                QUICK_BASELINE_BATCHES if quick else BASELINE_BATCHES,
                                count_parameters(network, include_bn_running_stats=True),
                                "uniform noise, random weights", bf16_row=False,
                                timed=not quick or seed == 0))
    return subjects


def subject_rows(subject: Subject, cache_dir: Path, quick: bool) -> list[Row]:
    """Every engine x precision x batch row of one network (unmeasurable ones with a note)."""
    if not subject.timed:
        return [Row(subject.name, "all engines", "", 0,
                    note="not measured in --quick (U-Net-16 runs the same code)")]
    from PancreasAILib.cpu import detect_cpu_features
    from PancreasAILib.engines import EngineChoice, TorchEngine, build_engine, openvino_available
    from PancreasSegMoNetLib.network import WithProbabilities

    def choice(engine: str, precision: str) -> EngineChoice:
        return EngineChoice(engine, precision, "cpu")

    native_bf16 = detect_cpu_features().native_bf16
    rows: list[Row] = []

    def add(engine_label: str, precision: str, run: Callable, batches, count: Optional[int] = None) -> None:
        for batch in batches:
            rows.append(Row(subject.name, engine_label, precision, batch, run,
                            subject.slices[:count or len(subject.slices)]))

    def skip(engine_label: str, precision: str, note: str) -> None:
        rows.append(Row(subject.name, engine_label, precision, 0, note=note))

    add(PLAIN, "fp32", TorchEngine(WithProbabilities(subject.plain), choice("pytorch", "fp32")), subject.batches)
    add(SHIPPED, "fp32", build_engine(subject.card, subject.recipe, choice("pytorch", "fp32"), cache_dir),
        subject.batches)
    autocast = build_engine(subject.card, subject.recipe, choice("pytorch", "bf16"), cache_dir)
    if native_bf16:
        add(AUTOCAST, "bf16", autocast, subject.batches)
    elif subject.bf16_row:
        add(AUTOCAST, "bf16 (emulated)", autocast,
            (QUICK_BF16_BATCH if quick else EMULATED_BF16_BATCH,),
            QUICK_BF16_SLICES if quick else EMULATED_BF16_SLICES)
    else:
        skip(AUTOCAST, "bf16", "not measured: no native bf16 on this CPU (emulated: see MoNet's row)")
    if not openvino_available():
        skip(OPENVINO, "fp32 / bf16", "not measured: OpenVINO is not installed")
        return rows
    log(f"  converting {subject.name} for OpenVINO")
    add(OPENVINO, "fp32", build_engine(subject.card, subject.recipe, choice("openvino", "fp32"), cache_dir),
        subject.batches)
    if native_bf16:
        add(OPENVINO, "bf16", build_engine(subject.card, subject.recipe, choice("openvino", "bf16"), cache_dir),
            subject.batches)
    else:
        skip(OPENVINO, "bf16", "not measured: no native bf16 on this CPU")
    return rows


def timed_pass(run: Callable, inputs: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    """(seconds, probabilities) of `run` over `inputs`, `batch` slices at a time."""
    pieces = []
    started = time.perf_counter()
    for start in range(0, len(inputs), batch):
        pieces.append(run(inputs[start:start + batch])[0])
    return time.perf_counter() - started, np.concatenate(pieces)


def measure_rows(rows: list[Row], rounds: int, gemm: GemmPeak) -> None:
    """Warm up every measured row (one batch: one-off kernel set-up), then time `rounds`
    interleaved rounds: each times every row once, starting further along each time, so
    neither load changes nor position favour a row. Keeps the first round's outputs. After
    each round the GEMM peak takes another sample."""
    measured = [row for row in rows if row.run is not None]
    for row in measured:
        row.run(row.inputs[:row.batch])
    for round_index in range(rounds):
        shift = round_index * len(measured) // rounds
        for row in measured[shift:] + measured[:shift]:
            seconds, outputs = timed_pass(row.run, row.inputs, row.batch)
            row.seconds.append(seconds)
            if row.outputs is None:
                row.outputs = outputs
        log(f"  round {round_index + 1}/{rounds} done; float32 GEMM {gemm.measure():.1f} GFLOP/s")


def dice(first: np.ndarray, second: np.ndarray) -> Optional[float]:
    """Dice of two boolean masks; None when both are empty."""
    total = int(first.sum()) + int(second.sum())
    return 2.0 * int(np.logical_and(first, second).sum()) / total if total else None


def reference_row(rows: list[Row], subject: Subject) -> Row:
    return next(row for row in rows if row.network == subject.name and row.engine == PLAIN
                and row.batch == subject.reference_batch)


def compute_agreement(rows: list[Row], subject: Subject) -> float:
    """Max abs probability difference and mask Dice (threshold 0.5) of each row against the
    plain float32 reference; frees the kept outputs. Returns the reference mask's share of pixels."""
    reference = reference_row(rows, subject).outputs
    for row in rows:
        if row.outputs is None:
            continue
        expected = reference[:len(row.outputs)]
        row.max_difference = float(np.abs(row.outputs - expected).max())
        row.dice = dice(row.outputs > 0.5, expected > 0.5)
    for row in rows:
        row.outputs = None
    return float((reference > 0.5).mean())


def network_section(args, workdir: Path, phantom, card_path: Path, gemm: GemmPeak) -> tuple[str, dict]:
    """Section 1: every engine x precision x batch of MoNet and the baselines, interleaved."""
    from PancreasAILib.weights import read_model_card

    card = read_model_card(card_path)
    cache_dir = workdir / "section-1-engines"
    log("Section 1: building networks and engines")
    subjects = [monet_subject(card, phantom, args.quick)] + baseline_subjects(workdir, args.quick)
    rows: list[Row] = []
    for subject in subjects:
        subject.flops_per_slice = conv_flops_per_slice(subject.plain, subject.slices.shape[1:])
        rows += subject_rows(subject, cache_dir, args.quick)
    log(f"Section 1: {sum(row.run is not None for row in rows)} rows x {args.repeats} rounds")
    measure_rows(rows, args.repeats, gemm)
    coverage = {subject.name: compute_agreement([r for r in rows if r.network == subject.name], subject)
                for subject in subjects if subject.timed}
    summary = network_summary(rows, subjects[0], gemm)
    return render_network_section(subjects, rows, coverage, gemm, args), summary


def network_summary(rows: list[Row], monet: Subject, gemm: GemmPeak) -> dict:
    """What section 2's targets need: MoNet's plain float32 reference time for 150 slices and
    OpenVINO float32's share of the GEMM peak (best batch, and at the reference batch)."""
    reference = reference_row(rows, monet)
    summary = {"plain_seconds": reference.per_150(), "plain_batch": reference.batch}
    openvino = [row for row in rows if row.network == monet.name and row.engine == OPENVINO
                and row.precision == "fp32" and row.seconds]
    if openvino:
        def share(row: Row) -> float:
            return monet.flops_per_slice * SLICES / row.per_150() / 1e9 / gemm.gflops
        best = max(openvino, key=share)
        summary.update(openvino_best_batch=best.batch, openvino_best_share=share(best),
                       openvino_best_gflops=share(best) * gemm.gflops,
                       openvino_reference_share=next((share(r) for r in openvino
                                                      if r.batch == reference.batch), None))
    return summary


def format_agreement(row: Row) -> tuple[str, str]:
    if row.max_difference is None:
        return "", ""
    return (f"{row.max_difference:.1e}",
            "n/a (both empty)" if row.dice is None else f"{row.dice:.4f}")


def render_network_section(subjects: list[Subject], rows: list[Row], coverage: dict, gemm: GemmPeak,
                           args) -> str:
    monet = subjects[0]
    baselines = subjects[1]
    lines = [
        f"## 1. Network time per engine, precision and batch, scaled to {SLICES} slices", "",
        "Each engine is built as the pipeline builds it (`PancreasAILib.engines`: `build_engine` "
        "with the network's recipe, numpy in, probabilities out); *plain eval* is the module in "
        "eval mode without `prepare_for_inference`, the float32 reference. "
        f"MoNet runs on {len(monet.slices)} {monet.input_note}; the baselines on "
        f"{len(baselines.slices)} slices of {baselines.input_note} (saved as model files, "
        "BatchNorm statistics randomised so that folding changes the weights), at their "
        f"batch {baselines.batches[0]} only, to keep the run time sane. Times are the median of "
        f"{args.repeats} interleaved round(s) (each round times every row once, in rotating "
        "order, so load changes hit all rows alike; one warm-up batch per row first), divided by "
        f"the slices timed and multiplied by {SLICES}. *vs plain eval*: against the plain eval row "
        f"of the same network at batch {monet.reference_batch}. GFLOP/s: Conv2d/ConvTranspose2d "
        "FLOPs (2 x multiply-accumulates, counted once per network with forward hooks) per second; "
        f"share of the measured float32 GEMM peak ({gemm.gflops:.0f} GFLOP/s, the best of the GEMM "
        "measurements taken between the rounds, see Machine; the network figures are medians, so "
        "where other work loads the machine the share errs low). "
        f"Agreement: max abs difference of the probabilities (sigmoid outputs) and Dice of the masks "
        f"at 0.5, each against plain eval float32 at batch {monet.reference_batch} on the same "
        "slices (the reference MoNet mask covers "
        f"{100 * coverage[monet.name]:.1f} % of the pixels).", "",
        "| network | engine | precision | batch | s / 150 slices (median) | vs plain eval | "
        "GFLOP/s achieved | share of GEMM peak | max abs prob diff vs fp32 | mask Dice vs fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for subject in subjects:
        own = [row for row in rows if row.network == subject.name]
        reference = reference_row(own, subject).per_150() if subject.timed else None
        for row in own:
            if row.run is None:
                lines.append(f"| {row.network} | {row.engine} | {row.precision} | | {row.note} | | | | | |")
                continue
            seconds = row.per_150()
            gflops = subject.flops_per_slice * SLICES / seconds / 1e9
            difference, mask_dice = format_agreement(row)
            count = len(row.inputs)
            slices_note = "" if count == len(subject.slices) else f" ({count} slice{'s' * (count != 1)})"
            lines.append(
                f"| {row.network} | {row.engine} | {row.precision} | {row.batch} | {seconds:.2f}{slices_note} | "
                f"{seconds / reference:.2f} | {gflops:.1f} | {100 * gflops / gemm.gflops:.0f} % | "
                f"{difference} | {mask_dice} |")
    lines += [
        "", "The networks, with the paper's figures (TensorFlow, 2.4 GHz 8-core Intel Core i9, mean "
        "+- sd of 5 repetitions, 150 slices). Parameters include the BatchNorm running mean and "
        "variance, as the paper counts them.", "",
        "| network | parameters (paper) | GFLOP per slice | timed input | paper s (TF, i9 8-core) | "
        "paper vs MoNet |", "|---|---|---|---|---|---|"]
    for subject in subjects:
        paper = PAPER[subject.name]
        size = subject.slices.shape[-1]
        lines.append(f"| {subject.name} | {subject.parameters:,} ({paper.parameters:,}) | "
                     f"{subject.flops_per_slice / 1e9:.2f} ({size} x {size}) | {subject.input_note} | "
                     f"{paper.seconds:.2f} +- {paper.sd:.2f} | {paper.seconds / PAPER['MoNet'].seconds:.2f} |")
    lines.append("")
    return "\n".join(lines)


# --- section 2: end-to-end segmentation (measured in worker processes) -----------------------

STEPS = (
    ("checks", "input checks (value range, obliquity)"),
    ("loading", "model loading + conversion / compile (`build_engine`)"),
    ("preprocessing", "pre-processing: `model_slices` (resample to 256 x 256, window)"),
    ("network", "network (engine calls; batch-size trials included)"),
    ("back_resampling", "back-resampling: `resampled_at_least`"),
    ("cleanup", "clean-up: `largest_component`"),
    ("other", "other (engine choice, reorientation, thresholding, copies)"),
)


@dataclass(frozen=True)
class EngineRequest:
    """An engine / precision request passed to segment_ct in section 2."""

    key: str
    engine: str
    precision: str
    label: str


END_TO_END_ENGINES = (
    EngineRequest("auto", "auto", "auto", "automatic (shipped default)"),
    EngineRequest("pytorch-fp32", "pytorch", "fp32", "engine pytorch, precision fp32"),
)


class StepTimer:
    """Seconds spent per named step, added up over calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, step: str, function: Callable) -> Callable:
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[step] += time.perf_counter() - started
        return timed


class TimedNetwork:
    """Stands in for the engine segment_ct builds, adding each call's time to 'network'."""

    def __init__(self, network, timer: StepTimer) -> None:
        self._network = network
        self._timed_call = timer.wrap("network", network)

    def __call__(self, batch):
        return self._timed_call(batch)

    def __getattr__(self, name: str):
        return getattr(self._network, name)


def instrument_segmentation(timer: StepTimer) -> list:
    """Time segment_ct's steps by replacing the names it calls in its module (the library is
    not edited; the replacements live only in this worker process). Returns a list that
    receives the batch-size chooser segment_ct asks for."""
    from PancreasSegMoNetLib import segmentation

    build_engine = timer.wrap("loading", segmentation.build_engine)
    segmentation.build_engine = lambda *args, **kwargs: TimedNetwork(build_engine(*args, **kwargs), timer)
    segmentation.check_ct = timer.wrap("checks", segmentation.check_ct)
    segmentation.model_slices = timer.wrap("preprocessing", segmentation.model_slices)
    segmentation.resampled_at_least = timer.wrap("back_resampling", segmentation.resampled_at_least)
    segmentation.largest_component = timer.wrap("cleanup", segmentation.largest_component)
    choosers: list = []
    batch_sizes_for = segmentation.batch_sizes_for

    def recording_batch_sizes_for(*args, **kwargs):
        choosers.append(batch_sizes_for(*args, **kwargs))
        return choosers[-1]

    segmentation.batch_sizes_for = recording_batch_sizes_for
    return choosers


def load_ct(ct_dir: Path):
    return np.load(ct_dir / "hu.npy"), np.load(ct_dir / "ijk_to_ras.npy")


def save_ct(ct_dir: Path, hu: np.ndarray, ijk_to_ras: np.ndarray) -> Path:
    ct_dir.mkdir(parents=True, exist_ok=True)
    np.save(ct_dir / "hu.npy", hu)
    np.save(ct_dir / "ijk_to_ras.npy", ijk_to_ras)
    return ct_dir


def worker(args) -> None:
    """Run in a fresh process: 'baseline' imports torch and loads the CT, nothing else;
    'segment' then runs segment_ct once (engine and precision as asked, the engine cache
    from $PANCREASAI_ENGINE_CACHE) with its steps timed. Writes a JSON result (and the mask
    with --mask)."""
    import torch  # noqa: F401  (part of the baseline the segmentation's memory is measured against)

    hu, ijk_to_ras = load_ct(args.ct)
    result: dict = {"shape": list(hu.shape)}
    if args.worker == "segment":
        from PancreasAILib.volume import Volume
        from PancreasAILib.weights import read_model_card
        from PancreasSegMoNetLib import segmentation

        timer = StepTimer()
        choosers = instrument_segmentation(timer)
        card = read_model_card(args.card)
        started = time.perf_counter()
        segmented = segmentation.segment_ct(Volume(hu, ijk_to_ras), card, device="cpu",
                                            engine=args.engine, precision=args.precision)
        total = time.perf_counter() - started
        steps = dict(timer.seconds)
        steps["other"] = total - sum(steps.values())
        chooser = choosers[-1] if choosers else None
        result.update(total=total, steps=steps, mask_voxels=segmented.voxel_count,
                      model=segmented.model_name, engine=segmented.engine,
                      batch=getattr(chooser, "chosen", None),
                      batch_measured=bool(chooser is not None and chooser.seconds_per_item))
        if args.mask is not None:
            np.save(args.mask, segmented.mask.array)
    result["peak_rss_bytes"] = own_peak_rss_bytes()
    args.result.write_text(json.dumps(result), encoding="utf-8")


def own_peak_rss_bytes() -> int:
    """Peak resident memory of this process since it started its program.

    Linux's ru_maxrss (RUSAGE_SELF, RUSAGE_CHILDREN or wait4) would not do: exec records the
    peak of the memory it replaces, which for a process started by subprocess is the parent's,
    so every worker would report at least the benchmark's own peak. VmHWM belongs to the new
    program only."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # Unix only

    # Elsewhere ru_maxrss is the best there is: bytes on macOS, KiB on other systems.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def run_worker(kind: str, ct_dir: Path, card_path: Optional[Path] = None,
               request: Optional[EngineRequest] = None, engine_cache: Optional[Path] = None,
               mask_path: Optional[Path] = None) -> dict:
    """Run `worker` in a fresh process (engine cache `engine_cache`) and return its result."""
    handle, name = tempfile.mkstemp(prefix=f"{kind}-", suffix=".json", dir=ct_dir.parent)
    os.close(handle)
    result_path = Path(name)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind,
               "--ct", str(ct_dir), "--result", str(result_path)]
    if card_path is not None:
        command += ["--card", str(card_path)]
    if request is not None:
        command += ["--engine", request.engine, "--precision", request.precision]
    if mask_path is not None:
        command += ["--mask", str(mask_path)]
    environment = dict(os.environ)
    if engine_cache is not None:
        environment["PANCREASAI_ENGINE_CACHE"] = str(engine_cache)
    completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=environment)
    if completed.returncode != 0:
        raise RuntimeError(f"The {kind} worker failed (exit {completed.returncode}):\n"
                           + completed.stdout[-3000:])
    return json.loads(result_path.read_text(encoding="utf-8"))


def benchmark_model_card(workdir: Path) -> tuple[Path, str]:
    """The bundled demo model if present, else a random MoNet saved as a model file."""
    if DEMO_CARD.exists():
        return DEMO_CARD, f"bundled demo weights `{DEMO_CARD.stem}`"
    import torch

    from PancreasAILib.weights import save_model
    from PancreasSegMoNetLib.network import MoNet
    from PancreasSegMoNetLib.preprocessing import DEFAULT_PREPROCESSING

    torch.manual_seed(0)
    card = save_model(MoNet().state_dict(), workdir / "monet-random.safetensors", {
        "name": "monet-random", "architecture": "MoNet",
        "architecture_params": {"in_channels": 1, "n_classes": 1},
        "preprocessing": DEFAULT_PREPROCESSING, "postprocessing": {"threshold": 0.5},
        "intended_use": "benchmark only"})
    return card.card_path, ("a random-initialised MoNet (the bundled demo weights were not found, "
                            "so the mask, and the clean-up time, are not representative)")


def describe_shape(shape) -> str:
    """(K, J, I) -> 'I x J x K' (columns x rows x slices)."""
    return f"{shape[2]} x {shape[1]} x {shape[0]}"


def segmentation_section(args, workdir: Path, phantom, card_path: Path, model_note: str,
                         summary: dict) -> str:
    """Section 2: segment_ct on synthetic CTs per engine request; wall time per step, peak
    memory, the agreement of the two engines' masks and the issue's target ratios."""
    shape = phantom.hu.shape
    log(f"Section 2: synthetic CT {shape}")
    ct_dir = save_ct(workdir / "ct", phantom.hu, phantom.ijk_to_ras)
    runs_wanted = QUICK_SEGMENTATION_RUNS if args.quick else SEGMENTATION_RUNS
    caches = {request.key: workdir / f"engine-cache-{request.key}" for request in END_TO_END_ENGINES}
    baseline = run_worker("baseline", ct_dir)
    runs: dict[str, list[dict]] = defaultdict(list)
    masks = {request.key: workdir / f"mask-{request.key}.npy" for request in END_TO_END_ENGINES}
    for run in range(runs_wanted):  # interleaved; run 1 of each starts from an empty engine cache
        for request in END_TO_END_ENGINES:
            last = run == runs_wanted - 1
            runs[request.key].append(run_worker("segment", ct_dir, card_path, request, caches[request.key],
                                                masks[request.key] if last else None))
            log(f"  segment_ct {request.key} run {run + 1}/{runs_wanted}: {runs[request.key][-1]['total']:.2f} s, "
                f"peak {runs[request.key][-1]['peak_rss_bytes'] / 1e9:.2f} GB")
    agreement = mask_agreement(np.load(masks["auto"]), np.load(masks["pytorch-fp32"]))
    memory_rows = [memory_row(describe_shape(shape), request, runs[request.key], baseline)
                   for request in END_TO_END_ENGINES]
    long_shape = (shape[0] * LONG_CT_TILES, *shape[1:])
    if args.quick:
        memory_rows.append(f"| {describe_shape(long_shape)} | all | not measured in --quick | | | | |")
    else:
        memory_rows += long_ct_rows(workdir, phantom, card_path, caches, long_shape)
    return render_segmentation_section(shape, phantom.spacing, model_note, runs, memory_rows, agreement,
                                       summary)


def long_ct_rows(workdir: Path, phantom, card_path: Path, caches: dict, long_shape) -> list[str]:
    """Memory rows of the CT stacked LONG_CT_TILES times (one cached run per engine)."""
    log(f"Section 2: {long_shape[0]}-slice CT")
    long_dir = save_ct(workdir / "ct-long", np.tile(phantom.hu, (LONG_CT_TILES, 1, 1)), phantom.ijk_to_ras)
    long_baseline = run_worker("baseline", long_dir)
    rows = []
    for request in END_TO_END_ENGINES:
        run = run_worker("segment", long_dir, card_path, request, caches[request.key])
        log(f"  segment_ct {request.key}: {run['total']:.2f} s, peak {run['peak_rss_bytes'] / 1e9:.2f} GB")
        rows.append(memory_row(f"{describe_shape(long_shape)} (the CT above stacked {LONG_CT_TILES} times)",
                               request, [run], long_baseline))
    return rows


def mask_agreement(first: np.ndarray, second: np.ndarray) -> dict:
    """Voxel counts, differing voxels and Dice of two masks."""
    first, second = first.astype(bool), second.astype(bool)
    return {"first": int(first.sum()), "second": int(second.sum()),
            "differing": int(np.count_nonzero(first != second)), "dice": dice(first, second)}


def memory_row(label: str, request: EngineRequest, runs: list[dict], baseline: dict) -> str:
    peak = max(run["peak_rss_bytes"] for run in runs)
    added = peak - baseline["peak_rss_bytes"]
    wall = statistics.median(run["total"] for run in runs)
    fits = "yes" if peak < MEMORY_LIMIT_BYTES else "**no**"
    return (f"| {label} | {request.label} | {wall:.2f} | {peak / 1e9:.2f} | "
            f"{baseline['peak_rss_bytes'] / 1e9:.2f} | {added / 1e9:.2f} | {fits} |")


def step_columns(runs: dict[str, list[dict]]) -> list[tuple[str, list[dict]]]:
    """(column header, runs) of the step table: each engine's first run, then its cached runs."""
    columns = []
    for request in END_TO_END_ENGINES:
        own = runs[request.key]
        columns.append((f"{request.label}: first run, empty engine cache (s)", own[:1]))
        if len(own) > 1:
            columns.append((f"{request.label}: cached, median of {len(own) - 1} (s)", own[1:]))
    return columns


def render_segmentation_section(shape, spacing, model_note: str, runs: dict[str, list[dict]],
                                memory_rows: list[str], agreement: dict, summary: dict) -> str:
    columns = step_columns(runs)
    auto_runs = runs["auto"]
    mask_fraction = 100.0 * auto_runs[-1]["mask_voxels"] / np.prod(shape)
    lines = [
        f"## 2. End-to-end segmentation of a {describe_shape(shape)} CT", "",
        f"`segment_ct` on a synthetic portal-venous CT (`make_ct_phantom({PHANTOM_SEED}, "
        f"shape={tuple(shape)})`, int16 HU, {spacing[0]:.2f} x {spacing[1]:.2f} x {spacing[2]:.1f} mm), "
        f"with {model_note}, CPU, batch size as shipped (measured on the first run, then read from "
        "the engine cache). Two requests: the automatic choice (what a user gets: "
        f"{auto_runs[-1]['engine']}) and engine pytorch at precision fp32 "
        f"({runs['pytorch-fp32'][-1]['engine']}). Each run is a fresh process with its own engine "
        "cache folder: the first run of each starts from an empty cache (OpenVINO converts the "
        "network and saves it, and the batch size is measured), later runs read both from the cache. "
        "Runs of the two requests alternate. Steps are timed by wrapping the functions segment_ct "
        "calls, from the benchmark. The mask covered "
        f"{mask_fraction:.2f} % of the voxels.", "",
        "| step | " + " | ".join(header for header, _ in columns) + " |",
        "|---|" + "---|" * len(columns)]
    for key, label in STEPS:
        cells = [f"{statistics.median(run['steps'].get(key, 0.0) for run in column):.2f}"
                 for _, column in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    totals = [f"**{statistics.median(run['total'] for run in column):.2f}**" for _, column in columns]
    batches = [" / ".join(describe_batch(run) for run in column) for _, column in columns]
    lines += [
        "| **total** | " + " | ".join(totals) + " |",
        "| batch size used | " + " | ".join(batches) + " |", "",
        f"Peak memory: peak resident set (VmHWM) of each worker process (the largest over its "
        "runs); the baseline is a process that only imports torch and loads the same CT, so *added* "
        "is what segmentation needs on top (libraries included). 1 GB = 10^9 bytes; the limit is "
        f"{MEMORY_LIMIT_BYTES / 1e9:.0f} GB for the whole process.", "",
        "| CT (columns x rows x slices) | engine | wall s (median) | peak GB | baseline GB | added GB | "
        f"below {MEMORY_LIMIT_BYTES / 1e9:.0f} GB |",
        "|---|---|---|---|---|---|---|", *memory_rows, ""]
    lines += render_targets(runs, agreement, summary, shape)
    return "\n".join(lines)


def describe_batch(run: dict) -> str:
    """The batch size a run ended with, and whether it was measured during the run."""
    if run["batch"] is None:
        return "not settled (trials unfinished: too few slices)"
    return f"{run['batch']}{' (measured in this run)' if run['batch_measured'] else ' (from the cache)'}"


def render_targets(runs: dict[str, list[dict]], agreement: dict, summary: dict, shape) -> list[str]:
    """The issue's targets, from this run's sections 1 and 2."""
    auto = runs["auto"]
    cached = statistics.median(run["total"] for run in (auto[1:] or auto))
    first = auto[0]["total"]
    plain = summary["plain_seconds"]
    ratio = cached / plain

    def met(value: bool) -> str:
        return "yes" if value else "**no**"

    rows = [
        f"| end to end, {describe_shape(shape)}, automatic engine (cached; first run {first:.2f} s = "
        f"{first / plain:.2f}) / plain eager float32 MoNet network time for {SLICES} slices at batch "
        f"{summary['plain_batch']} (section 1) | {cached:.2f} s / {plain:.2f} s = **{ratio:.2f}** | "
        f"<= {TARGET_END_TO_END_RATIO:.2f} | {met(ratio <= TARGET_END_TO_END_RATIO)} |"]
    if "openvino_best_share" in summary:
        share = summary["openvino_best_share"]
        at_reference = summary.get("openvino_reference_share")
        reference_note = (f"; at batch {summary['plain_batch']}: {100 * at_reference:.0f} %"
                          if at_reference is not None else "")
        rows.append(
            f"| MoNet OpenVINO float32 GFLOP/s / measured float32 GEMM peak (section 1, best batch "
            f"{summary['openvino_best_batch']}{reference_note}) | {summary['openvino_best_gflops']:.1f} "
            f"GFLOP/s = **{100 * share:.0f} %** | >= {100 * TARGET_PEAK_SHARE:.0f} % | "
            f"{met(share >= TARGET_PEAK_SHARE)} |")
    else:
        rows.append("| MoNet OpenVINO float32 share of the GEMM peak | not measured: OpenVINO is not "
                    f"installed | >= {100 * TARGET_PEAK_SHARE:.0f} % | |")
    identical = agreement["differing"] == 0
    mask_dice = "n/a (both empty)" if agreement["dice"] is None else f"{agreement['dice']:.4f}"
    rows.append(
        f"| automatic engine's mask = PyTorch fp32 engine's mask ({describe_shape(shape)}) | "
        f"{agreement['first']:,} vs {agreement['second']:,} voxels, {agreement['differing']:,} differ, "
        f"Dice {mask_dice} | identical | {met(identical)} |")
    return ["### Targets", "",
            "| target | measured | goal | met |", "|---|---|---|---|", *rows, ""]


# --- section 3: IPMN -------------------------------------------------------------------------

IPMN_REPEATS = 3
IPMN_DEMO_CARD = ROOT / "IPMNRisk" / "Resources" / "Models" / "ipmn-vit-demo-phantom-v2.json"


def ipmn_models(workdir: Path, quick: bool) -> list[tuple[str, Optional[object], int]]:
    """(label, card, parameters): ViT-B/16 as in the paper (random weights: the time does not
    depend on them; card None with --quick, where the demo ViT runs the same code) and the
    bundled demo ViT (or a random one of its architecture when absent)."""
    import torch

    from IPMNRiskLib.grids import INPUT_FORMAT
    from IPMNRiskLib.network import CLASS_NAMES, DEMO_ARCHITECTURE, PAPER_ARCHITECTURE, create_vit
    from PancreasAILib.weights import read_model_card, save_model

    models = []
    for label, (name, params) in (("ViT-B/16 (paper)", PAPER_ARCHITECTURE), ("demo ViT", DEMO_ARCHITECTURE)):
        torch.manual_seed(0)
        network = create_vit(name, params)
        parameters = sum(p.numel() for p in network.parameters())
        if label == "demo ViT" and IPMN_DEMO_CARD.exists():
            models.append((label + " (bundled)", read_model_card(IPMN_DEMO_CARD), parameters))
        elif quick and label.startswith("ViT-B/16"):
            models.append((label, None, parameters))
        else:
            models.append((label, save_model(network.state_dict(), workdir / f"{name}.safetensors", {
                "name": name, "architecture": name, "architecture_params": params,
                "classes": list(CLASS_NAMES), "preprocessing": dict(INPUT_FORMAT)}), parameters))
    return models


def ipmn_engines(assess: Callable) -> list[tuple[str, dict]]:
    """(label, extra keyword arguments of `assess`): one per engine where `assess` takes an
    engine (OpenVINO where installed, and PyTorch, both at float32); else its default."""
    from PancreasAILib.engines import openvino_available

    parameters = inspect.signature(assess).parameters
    if "engine" not in parameters:
        return [("PyTorch (assess takes no engine)", {})]
    precision = {"precision": "fp32"} if "precision" in parameters else {}
    engines = [("PyTorch fp32", {"engine": "pytorch", **precision})]
    if openvino_available():
        engines.insert(0, ("OpenVINO fp32", {"engine": "openvino", **precision}))
    return engines


def ipmn_section(args) -> str:
    """Seconds for one assessment (T1/T2 phantom, region given) on the CPU, end to end from
    volumes to probabilities and heat map: without rollout, with rollout, with rollout and
    the 8 test-time views; per engine where `assess` takes one. Interleaved repeats, median
    and range."""
    from IPMNRiskLib.grids import RegionBox
    from IPMNRiskLib.inference import assess
    from PancreasAIPhantoms.mr import make_mr_phantom
    from PancreasAILib.volume import Volume

    phantom = make_mr_phantom(4242, 2)
    t1, t2 = Volume(phantom.t1, phantom.ijk_to_ras), Volume(phantom.t2, phantom.ijk_to_ras)
    region = RegionBox(*phantom.pancreas_box_ras)
    settings = (("no rollout, no TTA", dict(rollout=False, tta=False)),
                ("rollout, no TTA", dict(rollout=True, tta=False)),
                ("rollout + 8-view TTA", dict(rollout=True, tta=True)))
    engines = ipmn_engines(assess)
    repeats = 1 if args.quick else IPMN_REPEATS
    log(f"Section 3: IPMN, engines {[label for label, _ in engines]}")
    with tempfile.TemporaryDirectory(prefix="pancreasai-bench-ipmn-") as workdir:
        models = ipmn_models(Path(workdir), args.quick)
        timed = [(label, card) for label, card, _ in models if card is not None]
        times = defaultdict(list)
        for label, card in timed:  # warm-up: first load, first call of each graph (and conversion)
            for _, engine in engines:
                for _, options in settings:
                    assess(t1, t2, region, card, **options, **engine)
        for repeat in range(repeats):
            for label, card in timed:
                for engine_label, engine in engines:
                    for setting, options in settings:
                        started = time.perf_counter()
                        assess(t1, t2, region, card, **options, **engine)
                        times[(label, engine_label, setting)].append(time.perf_counter() - started)
            log(f"IPMN repeat {repeat + 1}/{repeats} done")
    lines = ["## 3. IPMN risk: one assessment on the CPU", "",
             f"A {describe_shape(phantom.t2.shape)} T1/T2 phantom pair, region given; from volumes to "
             "class probabilities (and heat map on T2's grid when rollout is on), model loading "
             "included (the engine's first build, and OpenVINO's conversion, happen in warm-up "
             f"calls of each setting before timing). Median of {repeats} interleaved repeats, range in brackets.", "",
             "| model | engine | parameters | " + " | ".join(s for s, _ in settings) + " |",
             "|---|---|---|" + "---|" * len(settings)]
    for label, card, parameters in models:
        if card is None:
            lines.append(f"| {label} | all | {parameters:,} | not measured in --quick (the demo ViT runs "
                         "the same code) |" + " |" * (len(settings) - 1))
            continue
        for engine_label, _ in engines:
            cells = []
            for setting, _ in settings:
                values = times[(label, engine_label, setting)]
                cells.append(f"{np.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")
            lines.append(f"| {label} | {engine_label} | {parameters:,} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: a few slices, one repeat (numbers mean nothing)")
    parser.add_argument("--only", choices=("monet", "ipmn"),
                        help="run only the MoNet sections (1, 2) or only the IPMN one")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"interleaved rounds of section 1 (default {REPEATS}; 1 with --quick)")
    parser.add_argument("--output", type=Path, default=None,
                        help="Markdown file to write, overwritten (default output/bench/RESULTS.md; "
                             "with --quick, a file in the temp folder)")
    parser.add_argument("--update-results", action="store_true",
                        help=f"write the committed {COMMITTED_RESULTS.relative_to(ROOT)} (what the README quotes)")
    # The measurements of section 2 run this script again in a fresh process.
    parser.add_argument("--worker", choices=("baseline", "segment"), help=argparse.SUPPRESS)
    parser.add_argument("--ct", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--card", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--mask", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else REPEATS
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.update_results and (args.quick or args.output is not None):
        parser.error("--update-results writes the committed results: not with --quick or --output")
    if args.update_results:
        args.output = COMMITTED_RESULTS
    elif args.output is None:
        # Quick numbers mean nothing, and a run is not a release: neither replaces the results
        # the README quotes unless asked to.
        args.output = (Path(tempfile.gettempdir()) / "pancreasai-RESULTS-quick.md" if args.quick
                       else DEFAULT_OUTPUT)
    args.output = Path(os.path.abspath(os.path.expanduser(args.output)))
    return args


def monet_sections(args, workdir: Path) -> tuple[GemmPeak, list[str]]:
    """The GEMM peak, section 1 and section 2 (they share the phantom CT and the model card)."""
    from PancreasAIPhantoms.ct import make_ct_phantom

    gemm = measure_gemm_peak(QUICK_GEMM_SIZE if args.quick else GEMM_SIZE,
                             QUICK_GEMM_REPEATS if args.quick else GEMM_REPEATS)
    log(f"float32 GEMM peak: {gemm.gflops:.1f} GFLOP/s")
    phantom = make_ct_phantom(PHANTOM_SEED, shape=QUICK_CT_SHAPE if args.quick else CT_SHAPE)
    card_path, model_note = benchmark_model_card(workdir)
    network, summary = network_section(args, workdir, phantom, card_path, gemm)
    return gemm, [network, segmentation_section(args, workdir, phantom, card_path, model_note, summary)]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    started, load_at_start = time.perf_counter(), load_average()
    parts, gemm = [], None
    if args.only in (None, "monet"):
        with tempfile.TemporaryDirectory(prefix="pancreasai-bench-") as workdir:
            gemm, monet_parts = monet_sections(args, Path(workdir))
            parts += monet_parts
    if args.only in (None, "ipmn"):
        parts.append(ipmn_section(args))
    parts.insert(0, machine_section(args.quick, load_at_start, gemm))
    parts.append(f"Benchmark run time: {time.perf_counter() - started:.0f} s.\n")
    markdown = "\n".join(parts)
    print(markdown)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(markdown, encoding="utf-8")
    log(f"Written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
