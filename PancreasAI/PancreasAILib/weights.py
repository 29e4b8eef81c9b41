"""Model files: `.safetensors` weights with a JSON model card beside them, and a registry.

The card is the single place for everything that travels with the weights: architecture and
its parameters, pre-processing, classes, training data and protocol, metrics, SHA256 of the
weights file. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shlex
import shutil
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from .errors import ModelFileError, MissingDependencyError
from .progress import ProgressCallback, no_progress

CARD_FORMAT_VERSION = 1
MODEL_FILE_SUFFIXES = (".safetensors", ".json")
#: PyTorch pickle checkpoints: refused by their name, never opened (unpickling can run code).
PICKLE_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".pkl")
CONVERTER = "Resources/Training/convert_checkpoint.py"
#: Cards and registry lists are UTF-8 on every platform (Windows would default to its code page).
TEXT_ENCODING = "utf-8"
#: Files are hashed and downloaded a block at a time, so a large model never sits whole in memory.
READ_BLOCK_BYTES = 1 << 20
#: A download that receives nothing for this long is given up rather than left hanging.
DOWNLOAD_TIMEOUT_S = 60


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(READ_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelCard:
    """A model card read from `<name>.json`; `weights_path` is the `.safetensors` beside it."""

    card_path: Path
    data: dict

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def architecture(self) -> str:
        return self.data["architecture"]

    @property
    def architecture_params(self) -> dict:
        return dict(self.data.get("architecture_params", {}))

    @property
    def preprocessing(self) -> dict:
        return dict(self.data.get("preprocessing", {}))

    @property
    def classes(self) -> list[str]:
        return list(self.data.get("classes", []))

    @property
    def sha256(self) -> str:
        return self.data["sha256"]

    @property
    def weights_path(self) -> Path:
        return self.card_path.parent / self.data["weights_file"]

    @property
    def intended_use(self) -> str:
        return self.data.get("intended_use", "")


def card_path_for(path: Path) -> Path:
    """`x.safetensors` or `x.json` -> `x.json`."""
    return Path(path).with_suffix(".json")


def refuse_pickle_checkpoint(path: Path) -> None:
    """Refuse a PyTorch pickle checkpoint by its name, saying how to convert it."""
    if path.suffix.lower() in PICKLE_CHECKPOINT_SUFFIXES:
        command = shlex.join(["python", CONVERTER, str(path), "--architecture", "monet",
                              "--output", str(path.with_suffix(".safetensors"))])
        raise ModelFileError(
            f"{path} is a PyTorch pickle checkpoint, which PancreasAI does not load because loading "
            f"a pickle can run any code hidden in it; convert it into a .safetensors model file with: "
            f"{command} (for an IPMN risk model, give its ViT instead of monet, e.g. "
            "--architecture vit_base_patch16_224).")


def check_model_file_name(path: Path) -> None:
    """Refuse, by its name alone, a file that is neither a `.safetensors` weights file nor a
    `.json` card (a name without an ending stands for both)."""
    refuse_pickle_checkpoint(path)
    if path.suffix and path.suffix.lower() not in MODEL_FILE_SUFFIXES:
        raise ModelFileError(
            f"{path} is not a PancreasAI model file: give a .safetensors weights file, with its .json "
            "model card beside it.")


def read_model_card(path: str | Path) -> ModelCard:
    """Read the card for a `.safetensors` or `.json` path and check that it is complete."""
    check_model_file_name(Path(path))
    card_path = card_path_for(Path(path))
    if not card_path.exists():
        weights = Path(path).with_suffix(".safetensors")
        if weights.exists():
            raise ModelFileError(
                f"{weights} has no model card ({card_path.name}) beside it; the card says how the "
                "model was trained and how to use it, so the file cannot be used without it.")
        raise ModelFileError(f"No model file at {card_path.with_suffix('.safetensors')}.")
    try:
        data = json.loads(card_path.read_text(encoding=TEXT_ENCODING))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelFileError(f"The model card {card_path} is not valid JSON ({error}).") from error
    if not isinstance(data, dict):
        raise ModelFileError(f"The model card {card_path} is not a JSON object of named fields.")
    missing = [key for key in ("name", "architecture", "weights_file", "sha256") if key not in data]
    if missing:
        raise ModelFileError(f"The model card {card_path} lacks {', '.join(missing)}.")
    return ModelCard(card_path, data)


def verify_weights_file(card: ModelCard) -> None:
    """Check that the weights file exists and its SHA256 is the one the card records."""
    weights = card.weights_path
    if not weights.exists():
        raise ModelFileError(f"The weights file {weights} named by {card.card_path.name} is missing.")
    actual = sha256_of_file(weights)
    if actual != card.sha256:
        raise ModelFileError(
            f"The weights file {weights} is damaged or incomplete: its SHA256 ({actual[:12]}...) "
            f"differs from the model card's ({card.sha256[:12]}...). Delete it and download or "
            "copy it again.")


def load_state_dict(card: ModelCard, architectures: str | Iterable[str]) -> dict:
    """Verified tensors of a model file whose card names one of `architectures`."""
    allowed = {architectures} if isinstance(architectures, str) else set(architectures)
    if card.architecture not in allowed:
        raise ModelFileError(
            f"{card.card_path.name} is a {card.architecture} model; this module needs "
            f"{' or '.join(sorted(allowed))}.")
    verify_weights_file(card)
    try:
        from safetensors.torch import load_file
    except ImportError as error:
        raise MissingDependencyError("The 'safetensors' package is needed to read model files: "
                                     "pip install safetensors") from error
    try:
        return load_file(str(card.weights_path))
    except Exception as error:  # safetensors raises its own error types for bad headers
        raise ModelFileError(f"{card.weights_path} is not a valid .safetensors file ({error}).") from error


def state_dict_misfits(model, state_dict: dict) -> list[str]:
    """What keeps `state_dict` from loading strictly into `model` (empty when it fits): missing
    and unexpected tensor names, and wrong shapes, each with an example."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    shape_errors = [
        f"{key} {tuple(tensor.shape)} vs {tuple(expected[key].shape)}"
        for key, tensor in state_dict.items()
        if key in expected and tuple(expected[key].shape) != tuple(tensor.shape)]
    details = []
    if missing:
        details.append(f"missing {len(missing)} tensors, e.g. {missing[0]}")
    if unexpected:
        details.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
    if shape_errors:
        details.append(f"wrong shapes, e.g. {shape_errors[0]}")
    return details


def load_into(model, state_dict: dict, card: ModelCard) -> None:
    """Load strictly; a mismatch means the file is for another architecture or size.

    Everything is checked before anything is copied, so a refused file leaves `model` as it was
    (torch's own load raises a bare RuntimeError on a shape mismatch even when not strict).
    """
    misfits = state_dict_misfits(model, state_dict)
    if misfits:
        raise ModelFileError(
            f"The weights in {card.weights_path.name} do not fit the {card.architecture} architecture "
            f"described by its card ({'; '.join(misfits)}).")
    model.load_state_dict(state_dict)  # strict, torch's default; checked above with a clearer message


def save_model(state_dict: dict, weights_path: str | Path, card_fields: dict) -> ModelCard:
    """Write `<name>.safetensors` and its card `<name>.json` (with the file's SHA256)."""
    from safetensors.torch import save_file

    weights_path = Path(weights_path).with_suffix(".safetensors")
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().cpu().contiguous() for key, value in state_dict.items()}
    save_file(tensors, str(weights_path), metadata={"architecture": str(card_fields["architecture"])})
    data = {"format_version": CARD_FORMAT_VERSION, **card_fields,
            "weights_file": weights_path.name, "sha256": sha256_of_file(weights_path)}
    card_path = card_path_for(weights_path)
    card_text = json.dumps(data, indent=2) + "\n"
    # json.dumps escapes every non-ASCII character: the text is the same in any encoding.
    card_path.write_text(card_text, encoding=TEXT_ENCODING)  # pragma: no mutate (see above)
    return ModelCard(card_path, data)


# --- registry and download -------------------------------------------------------------------

def default_cache_dir() -> Path:
    """Where downloaded models live: $PANCREASAI_CACHE or ~/.cache/pancreasai/models."""
    configured = os.environ.get("PANCREASAI_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "pancreasai" / "models"


def download_file(url: str, destination: Path, sha256: Optional[str] = None,
                  progress: ProgressCallback = no_progress) -> Path:
    """Fetch `url` (http, https or file) to `destination`, atomically, checking SHA256."""
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=destination.parent, prefix=destination.name, suffix=".part")
    except OSError as error:
        raise ModelFileError(
            f"Cannot write {destination} ({error}). Choose a folder you can write to; for downloaded "
            "models, set PANCREASAI_CACHE to one.") from error
    status = f"Downloading {destination.name}"
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")  # pragma: no mutate (header names ignore case)
            total = int(length or 0)
            done = 0
            while block := response.read(READ_BLOCK_BYTES):
                out.write(block)
                done += len(block)
                progress(done / total if total else 0.0, status)
        # Also when the server gave no length, so progress always ends at 1.
        progress(1.0, status)
        if sha256 and sha256_of_file(Path(partial)) != sha256:
            raise ModelFileError(
                f"The file downloaded from {url} does not have the expected SHA256; the download was "
                "damaged or the server holds another file. Nothing was kept; try again later.")
        shutil.move(partial, destination)
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise ModelFileError(
            f"Could not download {url} ({error}). If this computer is offline or behind a firewall, "
            f"copy the model files by hand into {destination.parent} or set PANCREASAI_MODEL_MIRROR "
            "to a folder or server that holds them.") from error
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return destination


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    title: str
    card_url: Optional[str]
    weights_url: Optional[str]
    sha256: Optional[str]
    bundled_card: Optional[Path]


class ModelRegistry:
    """The known models of one module: bundled ones, and ones downloaded on first use."""

    def __init__(self, entries: list[RegistryEntry], cache_dir: Optional[Path] = None) -> None:
        self.entries = {entry.name: entry for entry in entries}
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()

    @classmethod
    def from_json(cls, path: Path, cache_dir: Optional[Path] = None) -> "ModelRegistry":
        """Read `models.json`: a list of {name, title, card | card_url + weights_url + sha256}."""
        items = json.loads(Path(path).read_text(encoding=TEXT_ENCODING))
        entries = [RegistryEntry(
            name=item["name"], title=item.get("title", item["name"]),
            card_url=item.get("card_url"), weights_url=item.get("weights_url"),
            sha256=item.get("sha256"),
            bundled_card=(Path(path).parent / item["card"]) if item.get("card") else None)
            for item in items]
        return cls(entries, cache_dir)

    @property
    def names(self) -> list[str]:
        return list(self.entries)

    @property
    def default_name(self) -> str:
        return next(iter(self.entries))

    def cached_card_path(self, name: str) -> Path:
        return self.cache_dir / name / f"{name}.json"

    def is_available(self, name: str) -> bool:
        entry = self.entries[name]
        return bool(entry.bundled_card and entry.bundled_card.exists()) or self.cached_card_path(name).exists()

    def resolve(self, name_or_path: str | Path | None = None, download: bool = True,
                progress: ProgressCallback = no_progress) -> ModelCard:
        """A registry name, a `.safetensors`/`.json` path, or None for the default -> its card."""
        name_or_path = name_or_path or self.default_name
        if str(name_or_path) not in self.entries:
            path = Path(os.path.expanduser(os.fspath(name_or_path)))
            refuse_pickle_checkpoint(path)
            looks_like_name = (path.suffix not in MODEL_FILE_SUFFIXES and len(path.parts) == 1
                               and not path.is_file())
            if looks_like_name and not card_path_for(path).exists():
                raise ModelFileError(
                    f"There is no model called '{name_or_path}'; the known models are "
                    f"{', '.join(self.names) or 'none'}. To use another model, give the path of "
                    "its .safetensors file (with its .json model card beside it).")
            return read_model_card(path)
        entry = self.entries[str(name_or_path)]
        if entry.bundled_card and entry.bundled_card.exists():
            return read_model_card(entry.bundled_card)
        cached = self.cached_card_path(entry.name)
        if not cached.exists():
            if not download:
                raise ModelFileError(f"The model '{entry.name}' is not downloaded yet ({cached} missing).")
            self._download(entry, progress)
        card = read_model_card(cached)
        if entry.sha256 and card.sha256 != entry.sha256:
            raise ModelFileError(
                f"The cached model card {cached} does not describe the registered '{entry.name}' "
                f"weights; delete {cached.parent} and try again.")
        return card

    def _download(self, entry: RegistryEntry, progress: ProgressCallback) -> None:
        if not (entry.card_url and entry.weights_url):
            raise ModelFileError(f"The model '{entry.name}' has no download address; place its files "
                                 f"in {self.cache_dir / entry.name} by hand.")
        folder = self.cache_dir / entry.name
        created_folder = not folder.exists()
        weights_path = folder / Path(urllib.parse.urlparse(entry.weights_url).path).name
        card_path = self.cached_card_path(entry.name)
        try:
            # Weights already there and intact (an earlier download that stopped before the
            # card) are not fetched again.
            if not (weights_path.exists() and entry.sha256 and sha256_of_file(weights_path) == entry.sha256):
                download_file(_mirrored(entry.weights_url), weights_path, entry.sha256, progress)
            # The card goes last: its presence marks a complete download.
            download_file(_mirrored(entry.card_url), card_path, None, progress)
            card = read_model_card(card_path)
            if entry.sha256 and card.sha256 != entry.sha256:
                raise ModelFileError(
                    f"The model card downloaded for '{entry.name}' describes other weights than the "
                    "registered ones; the server holds a different version. Nothing was kept.")
        except BaseException:
            # Leave no half download behind: remove what this call put in the cache.
            if created_folder:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                card_path.unlink(missing_ok=True)
            raise

    def delete_cached(self, name: str) -> None:
        shutil.rmtree(self.cache_dir / name, ignore_errors=True)


def _mirrored(url: str) -> str:
    """Honour $PANCREASAI_MODEL_MIRROR (a folder or base URL holding the same file names)."""
    mirror = os.environ.get("PANCREASAI_MODEL_MIRROR")
    if not mirror:
        return url
    file_name = Path(urllib.parse.urlparse(url).path).name
    if "://" not in mirror:
        return Path(mirror, file_name).resolve().as_uri()
    return mirror.rstrip("/") + "/" + file_name
