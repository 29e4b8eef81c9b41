"""Inference engines: which one runs a network, at which precision, and running it.

- **OpenVINO** is the CPU engine: our own PyTorch module is converted once per weights file
  and cached by the weights' SHA256 (`<model cache>/engines/`), then compiled for this CPU.
- **PyTorch** runs on CUDA and Apple MPS, and on the CPU where OpenVINO is not installed.

Precision: float32 unless the CPU computes bfloat16 natively (AVX512_BF16 or AMX, read by
`cpu.detect_cpu_features`) *and* the model card records a passed agreement check of bf16
against float32 (`record_precision_check`, written by each module's `check-precision`
command). `precision="fp32"` always forces the exact float32 path.

An engine takes a float32 numpy batch and returns the network's outputs as float32 numpy
arrays, so callers never touch torch or OpenVINO tensors.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .cpu import CpuFeatures, detect_cpu_features, usable_cores
from .errors import InputError
from .weights import TEXT_ENCODING, ModelCard, default_cache_dir, sha256_of_file, verify_weights_file

logger = logging.getLogger(__name__)

ENGINES = ("auto", "openvino", "pytorch")
PRECISIONS = ("auto", "fp32", "bf16")
#: Bumped whenever the graphs we convert change, so stale cached conversions are not used.
CONVERSION_VERSION = 1
#: OpenVINO's names for our precisions.
_OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16"}


@dataclass(frozen=True)
class EngineChoice:
    """engine: 'openvino' or 'pytorch'; precision: 'fp32' or 'bf16'; device: 'cpu', 'cuda'
    or 'mps'; notes: why a faster choice was not made (shown to the user once)."""

    engine: str
    precision: str
    device: str
    notes: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """What the result files and nodes record, e.g. 'openvino 2026.4.1 fp32 cpu'."""
        return f"{self.engine} {engine_version(self.engine)} {self.precision} {self.device}"


def engine_version(engine: str) -> str:
    if engine == "openvino":
        import openvino

        return openvino.__version__.split("-")[0]
    import torch

    return torch.__version__.split("+")[0]


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


# --- the card's agreement check --------------------------------------------------------------

def precision_check(card: ModelCard, precision: str) -> Optional[dict]:
    """The card's record of the agreement check of `precision` against float32, if any."""
    record = card.data.get("precision_checks", {}).get(precision)
    return record if isinstance(record, dict) else None


def passed_precision_check(card: ModelCard, precision: str) -> bool:
    """True when the card records a passed check for these very weights (SHA256)."""
    record = precision_check(card, precision)
    return bool(record and record.get("passed") is True and record.get("weights_sha256") == card.sha256)


def record_precision_check(card: ModelCard, precision: str, record: dict) -> ModelCard:
    """Write `record` into the card as its `precision` check (atomically); the weights and
    their SHA256 are untouched. Returns the updated card."""
    data = json.loads(card.card_path.read_text(encoding=TEXT_ENCODING))
    checks = data.setdefault("precision_checks", {})
    checks[precision] = {**record, "weights_sha256": card.sha256,
                         "checked": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    write_json_atomically(card.card_path, data)
    return ModelCard(card.card_path, data)


def write_json_atomically(path: Path, data) -> None:
    """`data` as JSON at `path`, whole or not at all: written under a temporary name in the same
    folder, then renamed over it; nothing is left behind when that fails."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
    try:
        with os.fdopen(handle, "w", encoding=TEXT_ENCODING) as stream:
            stream.write(json.dumps(data, indent=2) + "\n")  # pragma: no mutate (the layout is for people)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# --- the choice --------------------------------------------------------------------------------

def _resolve_device(device: str) -> str:
    from .devices import resolve_device

    return resolve_device(device)


def choose_engine(card: ModelCard, engine: str = "auto", precision: str = "auto", device: str = "auto",
                  cpu: Optional[CpuFeatures] = None, have_openvino: Optional[bool] = None) -> EngineChoice:
    """The engine and precision for `card` on this machine (or on `cpu`, as tests simulate).

    Explicit requests that cannot be honoured are errors that say what to do; 'auto' takes
    the fastest choice that is allowed and notes why a faster one was not.
    """
    engine, precision = (engine or "auto").lower(), (precision or "auto").lower()
    if engine not in ENGINES:
        raise InputError(f"Unknown engine '{engine}'; use {', '.join(ENGINES)}.")
    if precision not in PRECISIONS:
        raise InputError(f"Unknown precision '{precision}'; use {', '.join(PRECISIONS)}.")
    device = _resolve_device(device)
    notes: list[str] = []
    if device != "cpu":
        if engine == "openvino":
            raise InputError(f"OpenVINO runs on the CPU here; with device '{device}' use engine auto or pytorch.")
        if precision == "bf16":
            raise InputError("bf16 is offered on CPUs that compute it natively; on a GPU use fp32 or auto.")
        return EngineChoice("pytorch", "fp32", device)
    have_openvino = openvino_available() if have_openvino is None else have_openvino
    if engine == "openvino" and not have_openvino:
        raise InputError("OpenVINO is not installed: pip install openvino (in Slicer, the module offers "
                         "to install it), or choose engine auto or pytorch.")
    if engine == "auto":
        engine = "openvino" if have_openvino else "pytorch"
        if not have_openvino:
            notes.append("OpenVINO is not installed, so PyTorch runs the network (about 2-3 times "
                         "slower on a CPU): pip install openvino.")
    return EngineChoice(engine, _choose_precision(card, precision, cpu or detect_cpu_features(), notes),
                        device, tuple(notes))


def _choose_precision(card: ModelCard, precision: str, cpu: CpuFeatures, notes: list[str]) -> str:
    if precision == "fp32":
        return "fp32"
    checked = passed_precision_check(card, "bf16")
    if precision == "bf16":
        if not cpu.native_bf16:
            raise InputError(f"This CPU does not compute bf16 natively ({cpu.describe()}); it needs "
                             "AVX512_BF16 or AMX. Use precision fp32 or auto.")
        if not checked:
            raise InputError(f"The model card {card.card_path.name} records no passed bf16 agreement "
                             "check for these weights; run the module's check-precision command first, "
                             "or use precision fp32 or auto.")
        return "bf16"
    if cpu.native_bf16 and not checked:
        notes.append(f"This CPU computes bf16 natively, but {card.card_path.name} records no passed bf16 "
                     "agreement check, so float32 is used (run check-precision to allow bf16).")
    return "bf16" if cpu.native_bf16 and checked else "fp32"


# --- engines -----------------------------------------------------------------------------------

class Engine:
    """A network ready to run: `engine(batch)` -> list of float32 numpy outputs."""

    def __init__(self, choice: EngineChoice) -> None:
        self.choice = choice

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError


class TorchEngine(Engine):
    """Our PyTorch module as it is (bf16 through CPU autocast)."""

    def __init__(self, module, choice: EngineChoice) -> None:
        super().__init__(choice)
        self.module = module.to(choice.device).eval()

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        import torch

        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16,
                                                    enabled=self.choice.precision == "bf16"):
            outputs = self.module(torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(self.choice.device))
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        return [output.float().cpu().numpy() for output in outputs]


class OpenVINOEngine(Engine):
    """A compiled OpenVINO model with one inference request (outputs copied out)."""

    def __init__(self, compiled, choice: EngineChoice) -> None:
        super().__init__(choice)
        self.compiled = compiled
        self.request = compiled.create_infer_request()

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        self.request.infer([np.ascontiguousarray(batch, np.float32)])
        return [np.array(self.request.get_output_tensor(i).data, dtype=np.float32, copy=True)
                for i in range(len(self.compiled.outputs))]


@dataclass(frozen=True)
class NetworkRecipe:
    """How to make the PyTorch module an engine runs. kind: names the graph ('monet-probabilities');
    make_module: () -> torch module in eval mode; input_shape: one example input (batch 1)."""

    kind: str
    make_module: Callable[[], object]
    input_shape: tuple[int, ...]


def build_engine(card: ModelCard, recipe: NetworkRecipe, choice: EngineChoice,
                 cache_dir: Optional[Path] = None) -> Engine:
    """The engine of `choice` for the card's network; the last few are kept for reuse."""
    cache_dir = Path(cache_dir) if cache_dir else engine_cache_dir()
    key = (str(card.card_path), card.sha256, recipe.kind, recipe.input_shape, choice, str(cache_dir))
    if key not in _ENGINES:
        if len(_ENGINES) >= _ENGINES_KEPT:
            _ENGINES.pop(next(iter(_ENGINES)))
        _ENGINES[key] = _new_engine(card, recipe, choice, cache_dir)
    return _ENGINES[key]


_ENGINES: dict = {}
_ENGINES_KEPT = 4


def _new_engine(card: ModelCard, recipe: NetworkRecipe, choice: EngineChoice, cache_dir: Path) -> Engine:
    if choice.engine == "pytorch":
        return TorchEngine(recipe.make_module(), choice)
    import openvino

    # The weights are checked on every build, as without a cache: a missing or damaged file
    # is said, never silently replaced by a conversion made from it earlier.
    verify_weights_file(card)
    model = _openvino_model(card, recipe, cache_dir)
    config = {"INFERENCE_PRECISION_HINT": _OPENVINO_PRECISION[choice.precision],
              "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": usable_cores()}
    compiled = _core().compile_model(model, "CPU", config)
    actual = compiled.get_property("INFERENCE_PRECISION_HINT")
    if actual != getattr(openvino.Type, _OPENVINO_PRECISION[choice.precision]):
        # bf16 that this OpenVINO does not compute on this CPU after all: float32, and said so.
        # The engine's own choice is what the results record.
        note = (f"OpenVINO {engine_version('openvino')} did not compile the network in {choice.precision} "
                f"on this CPU ({actual}); float32 was used.")
        logger.warning(note)
        config["INFERENCE_PRECISION_HINT"] = _OPENVINO_PRECISION["fp32"]
        compiled = _core().compile_model(model, "CPU", config)
        choice = dataclasses.replace(choice, precision="fp32", notes=(*choice.notes, note))
    return OpenVINOEngine(compiled, choice)


@lru_cache(maxsize=1)
def _core():
    import openvino

    return openvino.Core()


def engine_cache_dir() -> Path:
    """Converted networks and measured batch sizes: $PANCREASAI_ENGINE_CACHE, else
    `<model cache>/engines`."""
    configured = os.environ.get("PANCREASAI_ENGINE_CACHE")
    return Path(configured) if configured else default_cache_dir() / "engines"


def conversion_dir(cache_dir: Path, kind: str, weights_sha256: str) -> Path:
    """Where the OpenVINO conversion of one weights file lives: named by the graph, the
    weights' SHA256, our conversion version and OpenVINO's version."""
    return cache_dir / f"{kind}-{weights_sha256[:16]}-v{CONVERSION_VERSION}-openvino-{engine_version('openvino')}"


def _openvino_model(card: ModelCard, recipe: NetworkRecipe, cache_dir: Path):
    """The converted network: read from the cache, or converted from our module and cached.

    A cache that cannot be written (read-only home, full disk) costs a conversion per run,
    never the result.
    """
    import openvino

    folder = conversion_dir(cache_dir, recipe.kind, card.sha256)
    xml = folder / "model.xml"
    if xml.exists():
        problem = _cached_conversion_problem(folder, card)
        if problem is None:
            try:
                return _core().read_model(str(xml))
            except Exception as error:  # unreadable although intact: OpenVINO's own complaint
                problem = f"OpenVINO cannot read it ({error})"
        logger.warning("Converting again: the cached network %s %s.", folder, problem)
        shutil.rmtree(folder, ignore_errors=True)
    import torch

    module = recipe.make_module()
    example = torch.zeros((1, *recipe.input_shape))
    # Tracing warns about Python branches on shapes (fixed for our inputs): not the user's concern.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = openvino.convert_model(module, example_input=example,
                                       input=[(-1, *recipe.input_shape)])
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".part"))
        try:
            # compress_to_fp16=False: the cached weights are the float32 weights, bit for bit
            openvino.save_model(model, str(partial / "model.xml"), compress_to_fp16=False)
            (partial / "source.json").write_text(json.dumps(
                {"weights_sha256": card.sha256, "card": card.name, "kind": recipe.kind,
                 "conversion_version": CONVERSION_VERSION,
                 "files_sha256": {name: sha256_of_file(partial / name) for name in _CONVERTED_FILES}},
                indent=2) + "\n", encoding=TEXT_ENCODING)
            os.replace(partial, folder)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    except OSError as error:
        logger.warning("The converted network could not be cached in %s (%s); it is converted "
                       "again on each run.", folder.parent, error)
    return model


#: The files of a saved conversion, whose SHA256 `source.json` records.
_CONVERTED_FILES = ("model.xml", "model.bin")


def _cached_conversion_problem(folder: Path, card: ModelCard) -> Optional[str]:
    """Why a cached conversion cannot be used (None when it can): it must say it was made from
    these weights, and its files must be the ones saved then (a damaged or edited file is
    converted again)."""
    try:
        source = json.loads((folder / "source.json").read_text(encoding=TEXT_ENCODING))
        recorded = source["files_sha256"]
        if source["weights_sha256"] != card.sha256:
            return "was made from other weights"
        if any(sha256_of_file(folder / name) != recorded[name] for name in _CONVERTED_FILES):
            return "has files that changed since it was saved"
    except (OSError, ValueError, KeyError, TypeError):
        return "has no complete record of its source"
    return None


# --- batch size, by measurement ----------------------------------------------------------------

#: Batch sizes tried; each is timed on its second batch (the first pays one-off set-up).
BATCH_CANDIDATES = (1, 2, 4, 8)


class BatchSizes:
    """Splits work into batches, finding this machine's fastest batch size as it goes.

    The first time an engine runs a network on this machine, the first slices are processed
    twice at each candidate size (every result is used: nothing is computed only to be
    timed); the fastest per slice is kept in `<cache>/batch_sizes.json` under a key naming the
    CPU, its flags, the engine, precision, threads and network, and used from then on. A
    `fixed` size skips all this.
    """

    def __init__(self, key: str, store: Optional[Path], fixed: Optional[int] = None,
                 candidates: Sequence[int] = BATCH_CANDIDATES, clock: Callable[[], float] = time.perf_counter) -> None:
        if fixed is not None and fixed < 1:
            raise InputError(f"The batch size must be at least 1 (got {fixed}).")
        self.key, self.store, self.clock = key, store, clock
        self.chosen = fixed or self._stored()
        self.trials = [size for size in candidates for _ in range(2)] if self.chosen is None else []
        self.seconds_per_item: dict[int, float] = {}

    def _stored(self) -> Optional[int]:
        if self.store is None or not self.store.exists():
            return None
        try:
            value = json.loads(self.store.read_text(encoding=TEXT_ENCODING)).get(self.key)
        except (OSError, ValueError, AttributeError):
            return None
        return value if isinstance(value, int) and value >= 1 else None

    def run(self, items: np.ndarray, function: Callable[[np.ndarray], list]) -> list[np.ndarray]:
        """`function` over `items` in batches; the outputs concatenated along the first axis."""
        pieces: list[list[np.ndarray]] = []
        start = 0
        while start < len(items):
            size = self.trials[0] if self.trials else (self.chosen or 1)
            stop = min(start + size, len(items))
            began = self.clock()
            pieces.append(function(items[start:stop]))
            elapsed = self.clock() - began
            if self.trials and stop - start == size:
                self._trial_done(size, elapsed)
            start = stop
        return [np.concatenate(parts) for parts in zip(*pieces)]

    def _trial_done(self, size: int, elapsed: float) -> None:
        self.trials.pop(0)
        if size in self.trials:  # the first of the two: set-up, not timed
            return
        self.seconds_per_item[size] = elapsed / size
        if not self.trials:
            self.chosen = min(self.seconds_per_item, key=self.seconds_per_item.get)
            self._save()

    def _save(self) -> None:
        if self.store is None:
            return
        try:
            known = json.loads(self.store.read_text(encoding=TEXT_ENCODING)) if self.store.exists() else {}
            known = known if isinstance(known, dict) else {}
        except (OSError, ValueError):
            known = {}
        known[self.key] = self.chosen
        try:
            self.store.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomically(self.store, known)
        except OSError as error:
            logger.warning("The measured batch size could not be kept in %s (%s).", self.store, error)


def batch_sizes_for(recipe: NetworkRecipe, choice: EngineChoice, fixed: Optional[int] = None,
                    cpu: Optional[CpuFeatures] = None, cache_dir: Optional[Path] = None) -> BatchSizes:
    """The batch-size chooser of one network on one engine of this machine."""
    cpu = cpu or detect_cpu_features()
    flags = ",".join(sorted(flag for flag in cpu.flags if flag.startswith(("avx", "amx", "fma"))))
    key = (f"{recipe.kind} {recipe.input_shape} | {choice.label} | {usable_cores()} threads | "
           f"{cpu.name} [{flags}]")
    store = (Path(cache_dir) if cache_dir else engine_cache_dir()) / "batch_sizes.json"
    return BatchSizes(key, store, fixed)
