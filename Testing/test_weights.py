"""Model files: safetensors weights with a JSON card, verified loading, registry and download."""
import contextlib
import dataclasses
import functools
import hashlib
import http.server
import io
import json
import math
import pickle
import shutil
import socket
import threading
import tracemalloc
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch

from PancreasAILib import weights
from PancreasAILib.errors import ModelFileError
from PancreasAILib.weights import (ModelRegistry, RegistryEntry, load_into, load_state_dict, read_model_card,
                                   save_model, verify_weights_file)

CARD_FIELDS = {"name": "tiny", "architecture": "TinyNet", "architecture_params": {"width": 3},
               "preprocessing": {"window_hu": [-160, 240]}, "classes": ["background", "pancreas"],
               "intended_use": "tests only"}


class TinyNet(torch.nn.Module):
    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, width, 3)
        self.norm = torch.nn.BatchNorm2d(width)


def seeded_tiny_net(width: int = 3) -> TinyNet:
    torch.manual_seed(0)
    model = TinyNet(width)
    model.norm.running_mean.uniform_()  # buffers are saved too
    return model


@pytest.fixture
def tiny_card(tmp_path):
    return save_model(seeded_tiny_net().state_dict(), tmp_path / "tiny.safetensors", CARD_FIELDS)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- saving and reading cards ---------------------------------------------------------------


def test_save_model_writes_weights_and_a_card_with_their_sha256(tmp_path):
    card = save_model(seeded_tiny_net().state_dict(), tmp_path / "tiny.safetensors", CARD_FIELDS)
    assert card.weights_path == tmp_path / "tiny.safetensors" and card.weights_path.exists()
    data = json.loads((tmp_path / "tiny.json").read_text(encoding="utf-8"))
    assert data["sha256"] == sha256(tmp_path / "tiny.safetensors")
    assert data["weights_file"] == "tiny.safetensors"
    assert data["format_version"] == weights.CARD_FORMAT_VERSION
    assert {key: data[key] for key in CARD_FIELDS} == CARD_FIELDS


def test_weights_file_records_its_architecture_in_its_own_header(tiny_card):
    """Tools that see the .safetensors file alone can still tell what it is."""
    from safetensors import safe_open

    with safe_open(str(tiny_card.weights_path), framework="pt") as weights_file:
        assert weights_file.metadata() == {"architecture": "TinyNet"}


def test_card_is_written_one_field_per_line_for_people_to_read(tiny_card):
    text = tiny_card.card_path.read_text(encoding="utf-8")
    assert text.startswith('{\n  "format_version": 1,\n  "name": "tiny",\n  "architecture": "TinyNet",\n')
    assert '\n  "architecture_params": {\n    "width": 3\n  },\n' in text
    assert text.endswith('"\n}\n')


@pytest.fixture
def windows_code_page(monkeypatch, tmp_path):
    """Text files opened without an explicit encoding decode as cp1252, as on a Western-European
    Windows, where the locale's code page is Python's default."""
    monkeypatch.setattr(io, "text_encoding", lambda encoding, stacklevel=2: encoding or "cp1252")
    probe = tmp_path / "probe.txt"
    probe.write_bytes("für".encode("utf-8"))
    assert probe.read_text() == "fÃ¼r"  # the simulation takes effect (no encoding given, on purpose)


def test_card_written_in_utf8_reads_the_same_under_a_windows_code_page(tiny_card, windows_code_page):
    data = json.loads(tiny_card.card_path.read_text(encoding="utf-8"))
    data["intended_use"] = "Forschung, nicht für die Diagnose"
    tiny_card.card_path.write_bytes(json.dumps(data, ensure_ascii=False).encode("utf-8"))
    assert read_model_card(tiny_card.card_path).intended_use == "Forschung, nicht für die Diagnose"


def test_card_is_read_from_the_weights_path_or_the_card_path(tiny_card):
    for path in (tiny_card.weights_path, tiny_card.card_path):
        card = read_model_card(path)
        assert (card.name, card.architecture, card.sha256) == ("tiny", "TinyNet", tiny_card.sha256)
        assert card.architecture_params == {"width": 3}
        assert card.classes == ["background", "pancreas"]
        assert card.intended_use == "tests only"


def test_weights_without_a_card_are_refused(tiny_card):
    tiny_card.card_path.unlink()
    with pytest.raises(ModelFileError, match="has no model card"):
        read_model_card(tiny_card.weights_path)


def test_missing_model_file_is_named(tmp_path):
    with pytest.raises(ModelFileError, match="No model file at .*absent.safetensors"):
        read_model_card(tmp_path / "absent.safetensors")


class CreatesFileWhenUnpickled:
    """Unpickling this calls open(path, "w"): the code a malicious checkpoint would run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.fixture
def no_unpickling(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a model file was unpickled")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, forbidden)


@pytest.mark.parametrize("file_name", ["model.pth", "model.PT", "model.ckpt", "model.bin", "model.pkl"])
def test_pytorch_checkpoint_is_refused_unopened_naming_the_converter_with_the_file(tmp_path, file_name):
    checkpoint, marker = tmp_path / file_name, tmp_path / "code-ran.txt"
    torch.save({"state_dict": seeded_tiny_net().state_dict(), "payload": CreatesFileWhenUnpickled(marker)},
               checkpoint)
    for resolve in (read_model_card, ModelRegistry([]).resolve):
        with pytest.raises(ModelFileError) as error:
            resolve(checkpoint)
        message = str(error.value)
        assert message.startswith(f"{checkpoint} is a PyTorch pickle checkpoint, which PancreasAI does not load "
                                  "because loading a pickle can run any code")
        assert (f"python Resources/Training/convert_checkpoint.py {checkpoint} --architecture monet "
                f"--output {tmp_path / 'model.safetensors'}") in message
    assert not marker.exists()


def test_pytorch_checkpoint_is_refused_without_unpickling(tmp_path, no_unpickling):
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"not read")
    with pytest.raises(ModelFileError, match="PyTorch pickle checkpoint"):
        read_model_card(checkpoint)


def test_checkpoint_named_without_a_folder_is_not_taken_for_a_registry_name(tiny_card, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    registry = ModelRegistry([entry_for(tiny_card, "monet-demo")])
    with pytest.raises(ModelFileError, match="^model.pth is a PyTorch pickle checkpoint.*convert_checkpoint.py "
                                             "model.pth --architecture monet --output model.safetensors"):
        registry.resolve("model.pth")


def test_checkpoint_path_with_spaces_is_quoted_in_the_command(tmp_path):
    checkpoint = tmp_path / "my models" / "best model.ckpt"
    with pytest.raises(ModelFileError) as error:
        read_model_card(checkpoint)
    assert f"convert_checkpoint.py '{checkpoint}' --architecture monet" in str(error.value)


def test_file_of_another_kind_is_refused_naming_that_file(tmp_path, no_unpickling):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx")
    for resolve in (read_model_card, ModelRegistry([]).resolve):
        with pytest.raises(ModelFileError, match=f"^{model} is not a PancreasAI model file: give a .safetensors") \
                as error:
            resolve(model)
        assert str(tmp_path / "model.safetensors") not in str(error.value)


def test_existing_file_of_another_kind_named_without_a_folder_is_named(tiny_card, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    with pytest.raises(ModelFileError, match="^model.onnx is not a PancreasAI model file"):
        ModelRegistry([entry_for(tiny_card, "monet-demo")]).resolve("model.onnx")


def test_card_that_is_not_json_is_refused(tiny_card):
    tiny_card.card_path.write_text("{name: tiny,")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        read_model_card(tiny_card.card_path)


def test_card_that_is_not_a_json_object_is_refused(tiny_card):
    tiny_card.card_path.write_text('["name", "architecture", "weights_file", "sha256"]')
    with pytest.raises(ModelFileError, match="not a JSON object"):
        read_model_card(tiny_card.card_path)


def test_card_lacking_required_fields_names_them(tiny_card):
    data = json.loads(tiny_card.card_path.read_text(encoding="utf-8"))
    del data["architecture"], data["sha256"]
    tiny_card.card_path.write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match="lacks architecture, sha256"):
        read_model_card(tiny_card.card_path)


# --- verifying and loading -------------------------------------------------------------------


def test_hashing_a_large_file_holds_only_a_block_of_it_in_memory(tmp_path):
    """Weights files run to hundreds of MB; hashing must not read one whole into memory."""
    large_file = tmp_path / "large.safetensors"
    large_file.write_bytes(bytes(range(256)) * (32 << 10))  # 8 MiB
    expected = hashlib.sha256(large_file.read_bytes()).hexdigest()
    tracemalloc.start()
    try:
        digest = weights.sha256_of_file(large_file)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert digest == expected
    assert peak < 4 << 20


def test_intact_weights_verify(tiny_card):
    verify_weights_file(tiny_card)


def test_one_corrupted_byte_is_detected(tiny_card):
    data = bytearray(tiny_card.weights_path.read_bytes())
    data[-5] ^= 0x01
    tiny_card.weights_path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="damaged or incomplete"):
        verify_weights_file(tiny_card)


def test_loading_refuses_weights_with_one_corrupted_byte(tiny_card):
    """A flipped bit inside a tensor leaves a readable .safetensors file: only the SHA256 tells."""
    from safetensors.torch import load_file

    data = bytearray(tiny_card.weights_path.read_bytes())
    data[-5] ^= 0x01  # the last bytes are tensor values, not the header
    tiny_card.weights_path.write_bytes(bytes(data))
    assert load_file(str(tiny_card.weights_path)).keys() == seeded_tiny_net().state_dict().keys()
    with pytest.raises(ModelFileError, match="tiny.safetensors is damaged or incomplete"):
        load_state_dict(tiny_card, "TinyNet")


def test_missing_weights_named_by_the_card_are_reported(tiny_card):
    tiny_card.weights_path.unlink()
    with pytest.raises(ModelFileError, match="tiny.safetensors named by tiny.json is missing"):
        load_state_dict(tiny_card, "TinyNet")


def test_loading_gives_the_saved_tensors(tiny_card):
    state_dict = load_state_dict(tiny_card, "TinyNet")
    expected = seeded_tiny_net().state_dict()
    assert state_dict.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(state_dict[key], tensor), key


def test_model_of_another_architecture_is_refused(tiny_card):
    with pytest.raises(ModelFileError, match="is a TinyNet model; this module needs MoNet or ViT"):
        load_state_dict(tiny_card, ["ViT", "MoNet"])


def test_loading_never_unpickles(monkeypatch, tiny_card):
    def forbidden(*args, **kwargs):
        raise AssertionError("a model file was unpickled")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    model = TinyNet()
    load_into(model, load_state_dict(tiny_card, "TinyNet"), tiny_card)
    assert torch.equal(model.conv.weight, seeded_tiny_net().conv.weight)


def test_file_with_a_pickle_inside_is_not_loaded(tiny_card):
    """A pickled checkpoint renamed to .safetensors (with a matching card) is refused, not run."""
    torch.save(seeded_tiny_net().state_dict(), tiny_card.weights_path)
    data = json.loads(tiny_card.card_path.read_text(encoding="utf-8"))
    data["sha256"] = sha256(tiny_card.weights_path)
    tiny_card.card_path.write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match="not a valid .safetensors file"):
        load_state_dict(read_model_card(tiny_card.card_path), "TinyNet")


def test_load_into_fills_the_model(tiny_card):
    model = TinyNet()
    load_into(model, load_state_dict(tiny_card, "TinyNet"), tiny_card)
    for key, tensor in seeded_tiny_net().state_dict().items():
        assert torch.equal(model.state_dict()[key], tensor), key


def test_weights_with_wrong_shapes_are_refused_naming_the_tensor(tiny_card):
    model = TinyNet(width=4)
    before = model.conv.weight.clone()
    with pytest.raises(ModelFileError, match=r"wrong shapes, e\.g\. (conv|norm)\.\w+ \(3[,)].* vs \(4[,)]"):
        load_into(model, load_state_dict(tiny_card, "TinyNet"), tiny_card)
    assert torch.equal(model.conv.weight, before)  # nothing half-loaded


def test_single_tensor_of_a_wrong_shape_is_named(tiny_card):
    state_dict = load_state_dict(tiny_card, "TinyNet")
    state_dict["conv.bias"] = torch.zeros(5)
    with pytest.raises(ModelFileError, match=r"\(wrong shapes, e\.g\. conv\.bias \(5,\) vs \(3,\)\)\.$"):
        load_into(TinyNet(), state_dict, tiny_card)


def test_weights_with_missing_and_unexpected_tensors_are_refused(tiny_card):
    state_dict = load_state_dict(tiny_card, "TinyNet")
    state_dict["head.weight"] = state_dict.pop("conv.weight")
    with pytest.raises(ModelFileError, match="missing 1 tensors, e.g. conv.weight; 1 unexpected, e.g. head.weight"):
        load_into(TinyNet(), state_dict, tiny_card)


# --- registry and download -------------------------------------------------------------------


def entry_for(card, name: str = "tiny", base_url: Optional[str] = None, sha: Optional[str] = None) -> RegistryEntry:
    base = base_url if base_url is not None else card.card_path.parent.as_uri()
    return RegistryEntry(name=name, title="Tiny test model", card_url=f"{base}/{card.card_path.name}",
                         weights_url=f"{base}/{card.weights_path.name}", sha256=sha or card.sha256,
                         bundled_card=None)


def files_in(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()] if folder.exists() else []


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("PANCREASAI_CACHE", str(folder))
    monkeypatch.delenv("PANCREASAI_MODEL_MIRROR", raising=False)
    return folder


def test_bundled_card_resolves_without_download(tiny_card, cache):
    entry = RegistryEntry("tiny", "Tiny", None, None, None, bundled_card=tiny_card.card_path)
    registry = ModelRegistry([entry])
    assert registry.is_available("tiny")
    assert registry.resolve().card_path == tiny_card.card_path
    assert registry.resolve("tiny").card_path == tiny_card.card_path
    assert files_in(cache) == []


def test_registry_loads_its_list_from_json(tmp_path, tiny_card, cache):
    listing = tiny_card.card_path.parent / "models.json"
    listing.write_text(json.dumps([{"name": "tiny", "title": "Tiny", "card": "tiny.json"},
                                   {"name": "remote", "card_url": "https://example.org/r.json",
                                    "weights_url": "https://example.org/r.safetensors", "sha256": "0" * 64}]))
    registry = ModelRegistry.from_json(listing)
    assert registry.names == ["tiny", "remote"] and registry.default_name == "tiny"
    assert registry.resolve().card_path == tiny_card.card_path
    assert registry.cache_dir == cache
    assert not registry.is_available("remote")


def test_registry_list_entries_keep_their_titles_addresses_and_checksum(tmp_path, cache):
    listing = tmp_path / "models.json"
    listing.write_text(json.dumps([
        {"name": "remote", "title": "Remote MoNet", "card_url": "https://example.org/r.json",
         "weights_url": "https://example.org/r.safetensors", "sha256": "0" * 64},
        {"name": "untitled", "card": "untitled.json"}]))
    registry = ModelRegistry.from_json(listing)
    assert registry.entries == {
        "remote": RegistryEntry("remote", "Remote MoNet", "https://example.org/r.json",
                                "https://example.org/r.safetensors", "0" * 64, None),
        "untitled": RegistryEntry("untitled", "untitled", None, None, None, tmp_path / "untitled.json")}


def test_registry_list_written_in_utf8_reads_the_same_under_a_windows_code_page(tmp_path, windows_code_page):
    listing = tmp_path / "models.json"
    listing.write_bytes(json.dumps([{"name": "monet", "title": "MoNet (Universitätsspital)", "card": "monet.json"}],
                                   ensure_ascii=False).encode("utf-8"))
    assert ModelRegistry.from_json(listing).entries["monet"].title == "MoNet (Universitätsspital)"


def test_models_are_cached_in_the_home_folder_unless_configured(tmp_path, monkeypatch):
    monkeypatch.delenv("PANCREASAI_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert weights.default_cache_dir() == tmp_path / ".cache" / "pancreasai" / "models"
    assert ModelRegistry([]).cache_dir == tmp_path / ".cache" / "pancreasai" / "models"


def test_registry_given_a_cache_folder_downloads_there(tiny_card, cache, tmp_path):
    own_cache = tmp_path / "own-cache"
    card = ModelRegistry([entry_for(tiny_card)], cache_dir=own_cache).resolve("tiny")
    assert card.card_path == own_cache / "tiny" / "tiny.json"
    verify_weights_file(card)
    assert files_in(cache) == []
    listing = tmp_path / "models.json"
    listing.write_text("[]")
    assert ModelRegistry.from_json(listing, cache_dir=own_cache).cache_dir == own_cache


def test_a_path_resolves_to_its_card(tiny_card, cache):
    registry = ModelRegistry([])
    assert registry.resolve(tiny_card.weights_path).sha256 == tiny_card.sha256
    assert registry.resolve(str(tiny_card.card_path)).sha256 == tiny_card.sha256


def test_unknown_name_is_refused_listing_the_known_models(tiny_card, cache):
    registry = ModelRegistry([entry_for(tiny_card, "monet-demo"), entry_for(tiny_card, "monet-full")])
    with pytest.raises(ModelFileError, match="no model called 'monet-dmeo'.*monet-demo, monet-full") as error:
        registry.resolve("monet-dmeo")
    assert ".safetensors" in str(error.value)


def test_not_downloaded_model_is_reported_when_download_is_off(tiny_card, cache):
    registry = ModelRegistry([entry_for(tiny_card)])
    with pytest.raises(ModelFileError, match="not downloaded yet"):
        registry.resolve("tiny", download=False)


def test_download_from_a_file_url_lands_in_the_cache(tiny_card, cache):
    registry = ModelRegistry([entry_for(tiny_card)])
    card = registry.resolve("tiny")
    assert card.card_path == cache / "tiny" / "tiny.json"
    assert sha256(card.weights_path) == tiny_card.sha256
    verify_weights_file(card)
    assert registry.is_available("tiny")


def test_second_resolve_uses_the_cache(tiny_card, cache):
    registry = ModelRegistry([entry_for(tiny_card)])
    registry.resolve("tiny")
    tiny_card.weights_path.unlink()  # the source is gone: only the cache can answer
    assert registry.resolve("tiny").card_path.parent == cache / "tiny"


def test_download_reports_progress(tiny_card, cache):
    fractions = []
    ModelRegistry([entry_for(tiny_card)]).resolve("tiny", progress=lambda f, status: fractions.append(f))
    assert fractions and fractions[-1] == 1.0 and all(0 <= f <= 1 for f in fractions)


def test_download_with_wrong_sha256_keeps_nothing(tiny_card, cache):
    registry = ModelRegistry([entry_for(tiny_card, sha="0" * 64)])
    with pytest.raises(ModelFileError, match="does not have the expected SHA256"):
        registry.resolve("tiny")
    assert files_in(cache) == []
    assert not registry.is_available("tiny")


def test_failed_download_into_an_existing_folder_says_why_and_keeps_what_was_there(tiny_card, cache):
    (cache / "tiny").mkdir(parents=True)
    notes = cache / "tiny" / "notes.txt"
    notes.write_text("placed here by the user")
    with pytest.raises(ModelFileError, match="does not have the expected SHA256"):
        ModelRegistry([entry_for(tiny_card, sha="0" * 64)]).resolve("tiny")
    assert files_in(cache) == [notes]


def test_downloaded_card_for_other_weights_is_not_kept(tiny_card, cache, tmp_path):
    other = save_model(seeded_tiny_net(width=2).state_dict(), tmp_path / "other" / "tiny.safetensors", CARD_FIELDS)
    entry = RegistryEntry("tiny", "Tiny", card_url=other.card_path.as_uri(),
                          weights_url=tiny_card.weights_path.as_uri(), sha256=tiny_card.sha256, bundled_card=None)
    with pytest.raises(ModelFileError, match="describes other weights"):
        ModelRegistry([entry]).resolve("tiny")
    assert files_in(cache) == []


def test_cached_model_of_other_weights_than_the_registered_ones_is_refused(tiny_card, cache):
    """A cache left by an earlier version of the registry entry, complete and intact in itself,
    is not used in place of the registered weights."""
    stale = save_model(seeded_tiny_net(width=2).state_dict(), cache / "tiny" / "tiny.safetensors", CARD_FIELDS)
    verify_weights_file(stale)
    registry = ModelRegistry([entry_for(tiny_card)])
    assert registry.is_available("tiny")
    with pytest.raises(ModelFileError, match="cached model card .*tiny.json does not describe the registered "
                                             "'tiny' weights"):
        registry.resolve("tiny")


@pytest.mark.parametrize("missing", ["card_url", "weights_url"])
def test_model_with_only_one_download_address_is_not_downloaded(tiny_card, cache, missing):
    entry = dataclasses.replace(entry_for(tiny_card), **{missing: None})
    with pytest.raises(ModelFileError, match="'tiny' has no download address; place its files in .*tiny by hand"):
        ModelRegistry([entry]).resolve("tiny")
    assert files_in(cache) == []


def test_cache_that_cannot_be_written_is_reported_with_what_to_do(tiny_card, tmp_path, monkeypatch):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache folder should be")
    monkeypatch.setenv("PANCREASAI_CACHE", str(not_a_folder))
    with pytest.raises(ModelFileError, match="Cannot write .*tiny.safetensors .*set PANCREASAI_CACHE"):
        ModelRegistry([entry_for(tiny_card)]).resolve("tiny")
    assert not_a_folder.read_text(encoding="utf-8") == "a file where the cache folder should be"


def test_deleting_a_model_that_is_not_cached_does_nothing(tiny_card, cache):
    registry = ModelRegistry([entry_for(tiny_card)])
    registry.delete_cached("tiny")
    assert not registry.is_available("tiny")


def test_deleting_the_cache_removes_the_model(tiny_card, cache):
    registry = ModelRegistry([entry_for(tiny_card)])
    registry.resolve("tiny")
    registry.delete_cached("tiny")
    assert files_in(cache) == [] and not registry.is_available("tiny")


def test_mirror_folder_is_used_instead_of_the_url(tiny_card, cache, monkeypatch):
    entry = entry_for(tiny_card, base_url="https://models.invalid/pancreasai")
    monkeypatch.setenv("PANCREASAI_MODEL_MIRROR", str(tiny_card.card_path.parent))
    card = ModelRegistry([entry]).resolve("tiny")
    assert sha256(card.weights_path) == tiny_card.sha256


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_server_says_how_to_install_by_hand(tiny_card, cache):
    entry = entry_for(tiny_card, base_url=f"http://127.0.0.1:{free_port()}/models")
    with pytest.raises(ModelFileError, match="copy the model files by hand") as error:
        ModelRegistry([entry]).resolve("tiny")
    assert str(cache / "tiny") in str(error.value)
    assert "PANCREASAI_MODEL_MIRROR" in str(error.value)
    assert files_in(cache) == []


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class WithoutLengthHandler(QuietHandler):
    """Sends each file without a Content-Length: its end is where the connection closes."""

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        self.send_response(200)
        self.end_headers()
        self.wfile.write(path.read_bytes())


@contextlib.contextmanager
def http_server(folder: Path, handler: type = QuietHandler):
    """Serve `folder` on 127.0.0.1 from a thread; always shut down when the block ends."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def no_proxy(monkeypatch):
    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def test_download_over_http_checks_sha256(tiny_card, cache, no_proxy):
    with http_server(tiny_card.card_path.parent) as base_url:
        card = ModelRegistry([entry_for(tiny_card, base_url=base_url)]).resolve("tiny")
    assert sha256(card.weights_path) == tiny_card.sha256


def test_http_404_is_a_model_file_error(tiny_card, cache, no_proxy):
    with http_server(tiny_card.card_path.parent) as base_url:
        entry = RegistryEntry("tiny", "Tiny", f"{base_url}/tiny.json", f"{base_url}/absent.safetensors",
                              tiny_card.sha256, None)
        with pytest.raises(ModelFileError, match="404"):
            ModelRegistry([entry]).resolve("tiny")
    assert files_in(cache) == []


def test_mirror_server_is_used_instead_of_the_url(tiny_card, cache, no_proxy, monkeypatch):
    entry = entry_for(tiny_card, base_url="https://models.invalid/pancreasai")
    with http_server(tiny_card.card_path.parent) as base_url:
        monkeypatch.setenv("PANCREASAI_MODEL_MIRROR", base_url + "/")
        card = ModelRegistry([entry]).resolve("tiny")
    assert sha256(card.weights_path) == tiny_card.sha256


def test_intact_weights_in_the_cache_are_not_downloaded_again(tiny_card, cache):
    """A download that stopped after the weights resumes with the card only."""
    (cache / "tiny").mkdir(parents=True)
    (cache / "tiny" / "tiny.safetensors").write_bytes(tiny_card.weights_path.read_bytes())
    entry = RegistryEntry("tiny", "Tiny", card_url=tiny_card.card_path.as_uri(),
                          weights_url="http://127.0.0.1:9/tiny.safetensors",  # would fail if used
                          sha256=tiny_card.sha256, bundled_card=None)
    assert ModelRegistry([entry]).resolve("tiny").card_path == cache / "tiny" / "tiny.json"


def test_damaged_weights_in_the_cache_are_downloaded_again(tiny_card, cache):
    """Weights cut short in the cache (and no card yet) are fetched anew, not kept because they exist."""
    (cache / "tiny").mkdir(parents=True)
    (cache / "tiny" / "tiny.safetensors").write_bytes(tiny_card.weights_path.read_bytes()[:-100])
    card = ModelRegistry([entry_for(tiny_card)]).resolve("tiny")
    assert card.weights_path == cache / "tiny" / "tiny.safetensors"
    assert sha256(card.weights_path) == tiny_card.sha256


@pytest.fixture
def large_card(tmp_path):
    """A model file of about 2.7 MiB, downloaded in several blocks."""
    # Made by numpy: a large torch op would start torch's thread pool, which hangs in the forked
    # processes mutation testing runs tests in.
    values = {"values": torch.from_numpy(np.arange(700_000, dtype=np.float32))}
    return save_model(values, tmp_path / "large" / "large.safetensors", {"name": "large", "architecture": "Values"})


def test_download_progress_rises_block_by_block_to_one_naming_each_file(large_card, cache):
    reports = []
    ModelRegistry([entry_for(large_card, "large")]).resolve(
        "large", progress=lambda f, status: reports.append((f, status)))
    weights_steps = [f for f, status in reports if status == "Downloading large.safetensors"]
    card_steps = [f for f, status in reports if status == "Downloading large.json"]
    assert len(weights_steps) + len(card_steps) == len(reports)
    blocks = math.ceil(large_card.weights_path.stat().st_size / weights.READ_BLOCK_BYTES)
    assert blocks >= 3
    assert len(set(weights_steps)) == blocks and weights_steps == sorted(weights_steps)
    assert weights_steps[-1] == 1.0 and card_steps and card_steps[-1] == 1.0
    assert all(0 < f <= 1 for f, _ in reports)


def test_download_without_a_length_from_the_server_ends_progress_at_one(large_card, cache, no_proxy):
    fractions = []
    with http_server(large_card.card_path.parent, WithoutLengthHandler) as base_url:
        card = ModelRegistry([entry_for(large_card, "large", base_url=base_url)]).resolve(
            "large", progress=lambda f, status: fractions.append(f) if status.endswith(".safetensors") else None)
    verify_weights_file(card)
    assert len(fractions) >= 2 and fractions[-1] == 1.0
    assert all(0 <= f < 1 for f in fractions[:-1])  # never complete before the file is


def test_download_in_progress_is_a_part_file_beside_its_destination(tiny_card, cache):
    """On the same disk, so the finished file is moved in place at once; and named as partial,
    so a file left by a killed download is never taken for the model."""
    seen = []

    def look_into_the_cache(fraction, status):
        if status == "Downloading tiny.safetensors":
            seen.append([path.name for path in (cache / "tiny").iterdir()])

    ModelRegistry([entry_for(tiny_card)]).resolve("tiny", progress=look_into_the_cache)
    assert seen
    for names in seen:
        assert len(names) == 1 and names[0].startswith("tiny.safetensors") and names[0].endswith(".part"), names


def test_server_that_stops_sending_is_given_up_and_nothing_is_kept(large_card, cache, no_proxy, monkeypatch):
    monkeypatch.setattr(weights, "DOWNLOAD_TIMEOUT_S", 0.2)
    release = threading.Event()

    class StallingHandler(QuietHandler):
        def do_GET(self) -> None:
            data = Path(self.translate_path(self.path)).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            release.wait(timeout=5)

    with http_server(large_card.card_path.parent, StallingHandler) as base_url:
        try:
            with pytest.raises(ModelFileError, match=r"Could not download .*large.safetensors \(timed out\)"):
                ModelRegistry([entry_for(large_card, "large", base_url=base_url)]).resolve("large")
        finally:
            release.set()
    assert files_in(cache) == []


def test_mirror_address_is_joined_to_the_file_name_with_one_slash(tiny_card, cache, no_proxy, monkeypatch, tmp_path):
    mirror_folder = tmp_path / "site" / "hospital" / "SANDBOX"
    mirror_folder.mkdir(parents=True)
    for path in (tiny_card.weights_path, tiny_card.card_path):
        shutil.copy(path, mirror_folder)
    requested = []

    class RecordingHandler(QuietHandler):
        def do_GET(self) -> None:
            requested.append(self.path)
            super().do_GET()

    entry = entry_for(tiny_card, base_url="https://models.invalid/pancreasai")
    with http_server(tmp_path / "site", RecordingHandler) as base_url:
        monkeypatch.setenv("PANCREASAI_MODEL_MIRROR", base_url + "/hospital/SANDBOX/")
        ModelRegistry([entry]).resolve("tiny")
    assert requested == ["/hospital/SANDBOX/tiny.safetensors", "/hospital/SANDBOX/tiny.json"]
