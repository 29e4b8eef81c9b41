"""CPU benchmarks of PancreasAI: MoNet against the paper's baselines, and end-to-end segmentation.

    ./pancreasai.sh bench [--quick] [--only monet|ipmn] [--repeats N] [--output FILE] [--update-results]

Prints Markdown tables and writes them to output/bench/RESULTS.md (with --quick, to the temp
folder; --output FILE elsewhere); --update-results rewrites the committed
Testing/Benchmarks/RESULTS.md that the README quotes:
the machine, then
1. CPU time of the networks for 150 slices of 256 x 256, measured interleaved (each repeat
   times every network once, so changes in machine load hit all of them alike);
2. `segment_ct` end to end on a synthetic 512 x 512 x 150 CT: wall time with a breakdown per
   step, and peak memory, each run in a fresh process;
3. IPMN risk (placeholder).
`--quick` runs the same code on a few slices with one repeat, as a smoke test: its numbers
mean nothing.

The script re-runs itself with the hidden `--worker` option for the measurements of section 2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
#: The paper's baselines and the parameter count live beside the training scripts (not installed).
TRAINING_SCRIPTS = ROOT / "Resources" / "Training"

COMMITTED_RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
DEFAULT_OUTPUT = ROOT / "output" / "bench" / "RESULTS.md"
DEMO_CARD = ROOT / "PancreasSegMoNet" / "Resources" / "Models" / "monet-demo-phantom-v3.json"

# Section 1: the paper's protocol (150 slices, 5 repeats) and the pipeline's batch size.
SLICES = 150
SLICE_SIZE = 256
BATCH_SIZE = 8
REPEATS = 5
SWEEP_BATCH_SIZES = (1, 2, 4, 8, 16, 32)
SWEEP_SLICES = 32  # a multiple of every swept batch size: no odd-sized last batch
SWEEP_MAX_ROUNDS = 3

# Section 2: a typical abdominal CT, and the long scan the 3 GB limit is about.
CT_SHAPE = (150, 512, 512)
LONG_CT_TILES = 4  # 4 x 150 = 600 slices
SEGMENTATION_RUNS = 3
MEMORY_LIMIT_BYTES = 3e9
PHANTOM_SEED = 7

# --quick: every code path, on as little data as still exercises it.
QUICK_SLICES = 2
QUICK_SLICE_SIZE = 64  # divisible by 16, as the U-Nets need
QUICK_SWEEP_BATCH_SIZES = (1, 2)
QUICK_SWEEP_SLICES = 2
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
        text = Path("/proc/cpuinfo").read_text()
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
        for line in Path("/proc/meminfo").read_text().splitlines():
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


def machine_section(quick: bool, load_at_start: str) -> str:
    """Markdown table of what the numbers below were measured on (rendered at the end)."""
    import scipy
    import torch

    model, physical, logical = cpu_description()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    memory = memory_total_gb()
    rows = [
        ("CPU", model),
        ("cores", f"{physical} physical, {logical} logical, {usable} usable by this process"),
        ("memory", f"{memory:.1f} GB" if memory else "n/a"),
        ("PyTorch", f"{torch.__version__}, {torch.get_num_threads()} intra-op threads, "
                    f"oneDNN {'on' if torch.backends.mkldnn.is_available() else 'off'}, CPU only"),
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


# --- section 1: network CPU time -------------------------------------------------------------

@dataclass
class Contender:
    """One network timed in section 1. parameters: with BatchNorm running statistics."""

    name: str
    network: Callable
    batch_size: int
    parameters: int
    paper_name: str


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


def build_contenders(batch_size: int):
    """(contenders, plain MoNet, prepared MoNet): random-initialised networks in eval mode."""
    import torch

    from PancreasSegMoNetLib.network import MoNet, prepare_for_inference

    # The training folder is not a package: import its modules as its scripts do, from the folder.
    if str(TRAINING_SCRIPTS) not in sys.path:
        sys.path.append(str(TRAINING_SCRIPTS))
    from segmentation_baselines import AttentionUNet, UNet
    from trainkit.model_card import count_parameters

    torch.manual_seed(0)
    monet = MoNet().eval()
    randomise_batch_norm(monet, seed=0)
    prepared = prepare_for_inference(monet)
    monet_parameters = count_parameters(monet, include_bn_running_stats=True)
    contenders = [
        Contender("MoNet as shipped (prepare_for_inference)", prepared, batch_size,
                  monet_parameters, "MoNet"),
        Contender("MoNet, plain eval mode", monet, batch_size, monet_parameters, "MoNet")]
    for name, network in (("U-Net-16", UNet(16)), ("U-Net-64", UNet(64)),
                          ("Attention U-Net", AttentionUNet(64))):
        network.eval()
        contenders.append(Contender(name, network, batch_size,
                                    count_parameters(network, include_bn_running_stats=True), name))
    return contenders, monet, prepared


def time_pass(network: Callable, slices, batch_size: int) -> float:
    """Seconds to run `network` over (N, 1, H, W) `slices`, `batch_size` slices at a time."""
    import torch

    with torch.inference_mode():
        started = time.perf_counter()
        for start in range(0, len(slices), batch_size):
            network(slices[start:start + batch_size])
        return time.perf_counter() - started


def warm_up(network: Callable, slices, batch_size: int) -> None:
    """One pass over each batch shape a timed pass will see (the full one and the remainder),
    so that oneDNN's one-off kernel set-up is not timed."""
    sizes = {min(batch_size, len(slices)), len(slices) % batch_size} - {0}
    for size in sizes:
        time_pass(network, slices[:size], size)


def interleaved_times(contenders: list[Contender], slices, repeats: int) -> dict[str, list[float]]:
    """Seconds per contender and repeat; each repeat times every contender once, starting one
    further along the list each time, so neither load changes nor position favour one."""
    for contender in contenders:
        log(f"  warm-up: {contender.name}")
        warm_up(contender.network, slices, contender.batch_size)
    seconds: dict[str, list[float]] = defaultdict(list)
    for repeat in range(repeats):
        shift = repeat % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            elapsed = time_pass(contender.network, slices, contender.batch_size)
            seconds[contender.name].append(elapsed)
            log(f"  repeat {repeat + 1}/{repeats}: {contender.name} (batch "
                f"{contender.batch_size}) {elapsed:.2f} s")
    return seconds


def batch_size_sweep(network: Callable, slices, batch_sizes, rounds: int) -> dict[int, float]:
    """Median seconds per slice of `network` for each batch size (interleaved rounds)."""
    for batch_size in batch_sizes:
        warm_up(network, slices[:batch_size], batch_size)
    per_slice: dict[int, list[float]] = defaultdict(list)
    for _ in range(rounds):
        for batch_size in batch_sizes:
            per_slice[batch_size].append(time_pass(network, slices, batch_size) / len(slices))
    return {batch_size: statistics.median(values) for batch_size, values in per_slice.items()}


def max_abs_difference(first: Callable, second: Callable, slices) -> float:
    """Largest difference between the probabilities (sigmoid of the logits) of two networks."""
    import torch

    with torch.inference_mode():
        return float((torch.sigmoid(first(slices)) - torch.sigmoid(second(slices))).abs().max())


def network_section(args) -> str:
    """Section 1: interleaved CPU times of MoNet and the baselines, with the paper's beside."""
    import torch

    n_slices = QUICK_SLICES if args.quick else SLICES
    size = QUICK_SLICE_SIZE if args.quick else SLICE_SIZE
    sweep_sizes = QUICK_SWEEP_BATCH_SIZES if args.quick else SWEEP_BATCH_SIZES
    sweep_slices = QUICK_SWEEP_SLICES if args.quick else SWEEP_SLICES
    generator = torch.Generator().manual_seed(1)
    slices = torch.rand(max(n_slices, sweep_slices), 1, size, size, generator=generator)
    contenders, monet, prepared = build_contenders(BATCH_SIZE)

    log("Section 1: prepared vs plain MoNet outputs")
    check_slices = slices[:min(BATCH_SIZE, len(slices))]
    difference = max_abs_difference(prepared, monet, check_slices)

    rounds = min(args.repeats, SWEEP_MAX_ROUNDS)
    log(f"Section 1: batch-size sweep of MoNet as shipped ({sweep_slices} slices, {rounds} rounds)")
    sweep = batch_size_sweep(prepared, slices[:sweep_slices], sweep_sizes, rounds)
    fastest = min(sweep, key=sweep.get)
    if fastest != BATCH_SIZE:
        contenders.insert(1, Contender(f"MoNet as shipped, batch {fastest} (fastest)", prepared,
                                       fastest, contenders[0].parameters, "MoNet"))

    log(f"Section 1: {len(contenders)} networks x {args.repeats} repeats on {n_slices} slices")
    seconds = interleaved_times(contenders, slices[:n_slices], args.repeats)
    return render_network_section(contenders, seconds, n_slices, size, args, difference,
                                  len(check_slices), sweep, sweep_slices, rounds)


def render_network_section(contenders, seconds, n_slices, size, args, difference, check_count,
                           sweep, sweep_slices, rounds) -> str:
    reference = statistics.median(seconds[contenders[0].name])
    paper_reference = PAPER["MoNet"].seconds
    lines = [
        f"## 1. CPU time for {n_slices} slices of {size} x {size}", "",
        f"Random-initialised networks in eval mode under `torch.inference_mode`, float32, input "
        f"({n_slices}, 1, {size}, {size}) uniform random, {BATCH_SIZE} slices per batch "
        f"(the pipeline's default) unless stated. {args.repeats} repeat(s), interleaved: each repeat "
        "times every network once, in rotating order, so changes in machine load hit all alike; "
        "one warm-up per network first. Parameters include the BatchNorm running mean and "
        "variance, as the paper counts them. Paper: TensorFlow, 2.4 GHz 8-core Intel Core i9, "
        "mean +- sd of 5 repetitions, 150 slices.", "",
        "| network | parameters (paper) | batch | median s | min - max s | vs MoNet | "
        "paper s (TF, i9 8-core) | paper vs MoNet |",
        "|---|---|---|---|---|---|---|---|"]
    for contender in contenders:
        times = seconds[contender.name]
        paper = PAPER[contender.paper_name]
        median = statistics.median(times)
        lines.append(
            f"| {contender.name} | {contender.parameters:,} ({paper.parameters:,}) | "
            f"{contender.batch_size} | {median:.2f} | {min(times):.2f} - {max(times):.2f} | "
            f"{median / reference:.2f} | {paper.seconds:.2f} +- {paper.sd:.2f} | "
            f"{paper.seconds / paper_reference:.2f} |")
    fastest = min(sweep, key=sweep.get)
    lines += [
        "",
        f"MoNet as shipped and in plain eval mode agree: max abs difference of the output "
        f"probabilities {difference:.1e} on {check_count} slice(s) (BatchNorm statistics randomised "
        "so that folding them into the convolutions changes the weights).", "",
        f"MoNet as shipped by batch size ({sweep_slices} slices, median of {rounds} interleaved "
        f"round(s)); batch {fastest} is the fastest"
        + (", so the table above has no extra row for it." if fastest == BATCH_SIZE else "."), "",
        "| batch | ms per slice | vs fastest |", "|---|---|---|",
        *(f"| {size} | {1000 * value:.0f} | {value / sweep[fastest]:.2f} |"
          for size, value in sweep.items()), ""]
    return "\n".join(lines)


# --- section 2: end-to-end segmentation (measured in worker processes) -----------------------

STEPS = (
    ("checks", "input checks (value range, obliquity)"),
    ("loading", "model loading (SHA256, weights, BatchNorm folding)"),
    ("preprocessing", "pre-processing: resample slices to 256 x 256, window"),
    ("network", f"network (MoNet, batches of {BATCH_SIZE})"),
    ("back_resampling", "back-resampling of probabilities to the CT grid"),
    ("cleanup", "clean-up (largest connected component)"),
    ("other", "other (reorientation, thresholding, copies)"),
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
    """Stands in for the network segment_ct builds, adding each call's time to 'network'."""

    def __init__(self, network, timer: StepTimer) -> None:
        self._network = network
        self._timed_call = timer.wrap("network", network)

    def __call__(self, batch):
        return self._timed_call(batch)

    def __getattr__(self, name: str):
        return getattr(self._network, name)


def instrument_segmentation(timer: StepTimer) -> None:
    """Time segment_ct's steps by replacing the names it calls in its module (the library is
    not edited; the replacements live only in this worker process)."""
    from PancreasSegMoNetLib import segmentation

    build_monet = timer.wrap("loading", segmentation.build_monet)
    segmentation.build_monet = lambda *args, **kwargs: TimedNetwork(build_monet(*args, **kwargs), timer)
    segmentation.check_ct = timer.wrap("checks", segmentation.check_ct)
    segmentation.model_slices = timer.wrap("preprocessing", segmentation.model_slices)
    # segment_ct's own `resample` is only the way back: pre-processing calls it from its module.
    segmentation.resample = timer.wrap("back_resampling", segmentation.resample)
    segmentation.largest_component = timer.wrap("cleanup", segmentation.largest_component)


def load_ct(ct_dir: Path):
    return np.load(ct_dir / "hu.npy"), np.load(ct_dir / "ijk_to_ras.npy")


def save_ct(ct_dir: Path, hu: np.ndarray, ijk_to_ras: np.ndarray) -> Path:
    ct_dir.mkdir(parents=True, exist_ok=True)
    np.save(ct_dir / "hu.npy", hu)
    np.save(ct_dir / "ijk_to_ras.npy", ijk_to_ras)
    return ct_dir


def worker(kind: str, ct_dir: Path, card_path: Optional[Path], result_path: Path) -> None:
    """Run in a fresh process: 'baseline' imports torch and loads the CT, nothing else;
    'segment' then runs segment_ct once with its steps timed. Writes a JSON result."""
    import torch  # noqa: F401  (part of the baseline the segmentation's memory is measured against)

    hu, ijk_to_ras = load_ct(ct_dir)
    result: dict = {"shape": list(hu.shape)}
    if kind == "segment":
        from PancreasAILib.volume import Volume
        from PancreasAILib.weights import read_model_card
        from PancreasSegMoNetLib import segmentation

        timer = StepTimer()
        instrument_segmentation(timer)
        card = read_model_card(card_path)
        started = time.perf_counter()
        segmented = segmentation.segment_ct(Volume(hu, ijk_to_ras), card, device="cpu",
                                            batch_size=BATCH_SIZE)
        total = time.perf_counter() - started
        steps = dict(timer.seconds)
        steps["other"] = total - sum(steps.values())
        result.update(total=total, steps=steps, mask_voxels=segmented.voxel_count,
                      model=segmented.model_name)
    result["peak_rss_bytes"] = own_peak_rss_bytes()
    result_path.write_text(json.dumps(result))


def own_peak_rss_bytes() -> int:
    """Peak resident memory of this process since it started its program.

    Linux's ru_maxrss (RUSAGE_SELF, RUSAGE_CHILDREN or wait4) would not do: exec records the
    peak of the memory it replaces, which for a process started by subprocess is the parent's,
    so every worker would report at least the benchmark's own peak. VmHWM belongs to the new
    program only."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # Unix only

    # Elsewhere ru_maxrss is the best there is: bytes on macOS, KiB on other systems.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def run_worker(kind: str, ct_dir: Path, card_path: Optional[Path] = None) -> dict:
    """Run `worker` in a fresh process and return its result."""
    handle, name = tempfile.mkstemp(prefix=f"{kind}-", suffix=".json", dir=ct_dir.parent)
    os.close(handle)
    result_path = Path(name)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind,
               "--ct", str(ct_dir), "--result", str(result_path)]
    if card_path is not None:
        command += ["--card", str(card_path)]
    completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"The {kind} worker failed (exit {completed.returncode}):\n"
                           + completed.stdout[-3000:])
    return json.loads(result_path.read_text())


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


def segmentation_section(args, workdir: Path) -> str:
    """Section 2: segment_ct on a synthetic CT; wall time per step and peak memory."""
    from PancreasAIPhantoms.ct import make_ct_phantom

    shape = QUICK_CT_SHAPE if args.quick else CT_SHAPE
    log(f"Section 2: synthetic CT {shape}")
    phantom = make_ct_phantom(PHANTOM_SEED, shape=shape)
    ct_dir = save_ct(workdir / "ct", phantom.hu, phantom.ijk_to_ras)
    spacing = phantom.spacing
    card_path, model_note = benchmark_model_card(workdir)
    runs_wanted = 1 if args.quick else SEGMENTATION_RUNS

    baseline = run_worker("baseline", ct_dir)
    runs = []
    for run in range(runs_wanted):
        runs.append(run_worker("segment", ct_dir, card_path))
        log(f"  segment_ct run {run + 1}/{runs_wanted}: {runs[-1]['total']:.2f} s, "
            f"peak {runs[-1]['peak_rss_bytes'] / 1e9:.2f} GB")
    memory_rows = [memory_row(f"{shape[2]} x {shape[1]} x {shape[0]}", runs, baseline)]

    if args.quick:
        long_row = f"| {shape[2]} x {shape[1]} x {shape[0] * LONG_CT_TILES} | not measured in --quick | | | | |"
    else:
        log(f"Section 2: {LONG_CT_TILES * shape[0]}-slice CT")
        long_dir = save_ct(workdir / "ct-long", np.tile(phantom.hu, (LONG_CT_TILES, 1, 1)),
                           phantom.ijk_to_ras)
        del phantom
        long_baseline = run_worker("baseline", long_dir)
        long_run = run_worker("segment", long_dir, card_path)
        log(f"  segment_ct: {long_run['total']:.2f} s, peak {long_run['peak_rss_bytes'] / 1e9:.2f} GB")
        long_row = memory_row(f"{shape[2]} x {shape[1]} x {shape[0] * LONG_CT_TILES} (the CT above "
                              f"stacked {LONG_CT_TILES} times)", [long_run], long_baseline)
    memory_rows.append(long_row)
    return render_segmentation_section(shape, spacing, model_note, runs, memory_rows)


def memory_row(label: str, runs: list[dict], baseline: dict) -> str:
    peak = max(run["peak_rss_bytes"] for run in runs)
    added = peak - baseline["peak_rss_bytes"]
    wall = statistics.median(run["total"] for run in runs)
    fits = "yes" if peak <= MEMORY_LIMIT_BYTES else "**no**"
    return (f"| {label} | {wall:.2f} | {peak / 1e9:.2f} | {baseline['peak_rss_bytes'] / 1e9:.2f} | "
            f"{added / 1e9:.2f} | {fits} |")


def render_segmentation_section(shape, spacing, model_note: str, runs: list[dict],
                                memory_rows: list[str]) -> str:
    totals = [run["total"] for run in runs]
    total = statistics.median(totals)
    mask_fraction = 100.0 * statistics.median(run["mask_voxels"] for run in runs) / np.prod(shape)
    lines = [
        f"## 2. End-to-end segmentation of a {shape[2]} x {shape[1]} x {shape[0]} CT", "",
        f"`segment_ct` on a synthetic portal-venous CT (`make_ct_phantom({PHANTOM_SEED}, "
        f"shape={tuple(shape)})`, int16 HU, {spacing[0]:.2f} x {spacing[1]:.2f} x {spacing[2]:.1f} mm), "
        f"with {model_note}; CPU, batches of {BATCH_SIZE}. Each run is a fresh process, so it "
        "includes loading the model and PyTorch's first-call set-up, as a user's first "
        "segmentation does. Steps are timed by wrapping the functions segment_ct calls, from "
        f"the benchmark. Median of {len(runs)} run(s); the mask covered {mask_fraction:.2f} % of "
        "the voxels.", "",
        "| step | median s | share |", "|---|---|---|"]
    for key, label in STEPS:
        seconds = statistics.median(run["steps"].get(key, 0.0) for run in runs)
        lines.append(f"| {label} | {seconds:.2f} | {100 * seconds / total:.0f} % |")
    lines += [
        f"| **total** (min - max {min(totals):.2f} - {max(totals):.2f}) | **{total:.2f}** | 100 % |", "",
        "Peak memory: peak resident set (VmHWM) of each worker process; the baseline is a process that only "
        "imports torch and loads the same CT, so *added* is what segmentation needs on top "
        f"(libraries included). 1 GB = 10^9 bytes; the limit is {MEMORY_LIMIT_BYTES / 1e9:.0f} GB "
        "for the whole process.", "",
        "| CT (columns x rows x slices) | wall s | peak GB | baseline GB | added GB | within "
        f"{MEMORY_LIMIT_BYTES / 1e9:.0f} GB |",
        "|---|---|---|---|---|---|", *memory_rows, ""]
    return "\n".join(lines)


# --- section 3: IPMN -------------------------------------------------------------------------

IPMN_REPEATS = 5
IPMN_DEMO_CARD = ROOT / "IPMNRisk" / "Resources" / "Models" / "ipmn-vit-demo-phantom-v2.json"


def ipmn_models(workdir: Path) -> list[tuple[str, object]]:
    """(label, card): ViT-B/16 as in the paper (random weights: the time does not depend on
    them) and the bundled demo ViT (or a random one of its architecture when absent)."""
    import torch

    from IPMNRiskLib.grids import INPUT_FORMAT
    from IPMNRiskLib.network import CLASS_NAMES, DEMO_ARCHITECTURE, PAPER_ARCHITECTURE, create_vit
    from PancreasAILib.weights import read_model_card, save_model

    cards = []
    for label, (name, params) in (("ViT-B/16 (paper)", PAPER_ARCHITECTURE), ("demo ViT", DEMO_ARCHITECTURE)):
        if label == "demo ViT" and IPMN_DEMO_CARD.exists():
            cards.append((label + " (bundled)", read_model_card(IPMN_DEMO_CARD)))
            continue
        torch.manual_seed(0)
        card = save_model(create_vit(name, params).state_dict(), workdir / f"{name}.safetensors", {
            "name": name, "architecture": name, "architecture_params": params,
            "classes": list(CLASS_NAMES), "preprocessing": dict(INPUT_FORMAT)})
        cards.append((label, card))
    return cards


def ipmn_section(args) -> str:
    """Seconds for one assessment (T1/T2 phantom, region given) on the CPU, end to end from
    volumes to probabilities and heat map: without rollout, with rollout, with rollout and
    the 8 test-time views. Interleaved repeats, median and range."""
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
    repeats = 1 if args.quick else IPMN_REPEATS
    with tempfile.TemporaryDirectory(prefix="pancreasai-bench-ipmn-") as workdir:
        cards = ipmn_models(Path(workdir))
        times = defaultdict(list)
        for label, card in cards:  # warm-up: first load, first call
            assess(t1, t2, region, card, rollout=False, tta=False)
        for repeat in range(repeats):
            for label, card in cards:
                for setting, options in settings:
                    started = time.perf_counter()
                    assess(t1, t2, region, card, **options)
                    times[(label, setting)].append(time.perf_counter() - started)
            log(f"IPMN repeat {repeat + 1}/{repeats} done")
    lines = ["## 3. IPMN risk: one assessment on the CPU", "",
             f"A {phantom.t2.shape[2]} x {phantom.t2.shape[1]} x {phantom.t2.shape[0]} T1/T2 phantom pair, "
             "region given; from volumes to class probabilities (and heat map on T2's grid when "
             "rollout is on), model loading included. Median of "
             f"{repeats} interleaved repeats, range in brackets.", "",
             "| model | parameters | " + " | ".join(s for s, _ in settings) + " |",
             "|---|---|" + "---|" * len(settings)]
    for label, card in cards:
        from IPMNRiskLib.network import create_vit
        parameters = sum(p.numel() for p in create_vit(card.architecture, card.architecture_params).parameters())
        cells = []
        for setting, _ in settings:
            values = times[(label, setting)]
            cells.append(f"{np.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")
        lines.append(f"| {label} | {parameters:,} | " + " | ".join(cells) + " |")
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
                        help=f"repeats of section 1 (default {REPEATS}; 1 with --quick)")
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


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker, args.ct, args.card, args.result)
        return 0
    started, load_at_start = time.perf_counter(), load_average()
    parts = []
    if args.only in (None, "monet"):
        parts.append(network_section(args))
        with tempfile.TemporaryDirectory(prefix="pancreasai-bench-") as workdir:
            parts.append(segmentation_section(args, Path(workdir)))
    if args.only in (None, "ipmn"):
        parts.append(ipmn_section(args))
    parts.insert(0, machine_section(args.quick, load_at_start))
    parts.append(f"Benchmark run time: {time.perf_counter() - started:.0f} s.\n")
    markdown = "\n".join(parts)
    print(markdown)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(markdown, encoding="utf-8")
    log(f"Written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
