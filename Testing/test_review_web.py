"""`pancreasai review`: the review web server's access rules, without a browser. The server runs
in a subprocess on a folder with one unreadable and one incomplete result (no images are needed
to check what the server serves and to whom)."""

import asyncio
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from PancreasAILib.review_web import AccessGuard, access_token, browser_url, is_loopback

ROOT = Path(__file__).resolve().parents[1]
START_SECONDS = 90


class ReviewServer:
    """`python -m PancreasAILib.pancreasai_cli review FOLDER ...` in a subprocess, its address and
    the lines it printed."""

    def __init__(self, folder: Path, *options: str):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "PancreasAI"), env.get("PYTHONPATH", "")])
        self.process = subprocess.Popen(
            [sys.executable, "-m", "PancreasAILib.pancreasai_cli", "review", str(folder), "--no-browser",
             "--port", "0", *options],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", env=env)
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.stdout: list = []
        self.stderr: list = []
        threading.Thread(target=self._read, args=(self.process.stdout, self.stdout, True), daemon=True).start()
        threading.Thread(target=self._read, args=(self.process.stderr, self.stderr, False), daemon=True).start()
        self.url = self._wait_for_address()
        self.port = int(re.search(r":(\d+)/", self.url).group(1))
        self.base = f"http://127.0.0.1:{self.port}"

    def _read(self, stream, lines, announce):
        for line in stream:
            lines.append(line)
            if announce:
                self.lines.put(line)

    def _wait_for_address(self) -> str:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            if line.startswith("Open http"):
                return line.split()[1]
        self.stop()
        pytest.fail("The review server did not start:\n" + "".join(self.stdout) + "".join(self.stderr))

    @property
    def token(self):
        found = re.search(r"^Access token: (\S+)$", "".join(self.stdout), re.MULTILINE)
        return found.group(1) if found else None

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def get(url: str, headers: dict = None) -> tuple:
    """(status, body) of a GET, following no redirect."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=20) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def raw_get(port: int, path: str, host_header: str = None) -> tuple:
    """(status, body) of a GET sent byte for byte (urllib would normalise `..` away)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    connection.putrequest("GET", path, skip_host=host_header is not None, skip_accept_encoding=True)
    if host_header is not None:
        connection.putheader("Host", host_header)
    connection.endheaders()
    response = connection.getresponse()
    return response.status, response.read()


@pytest.fixture(scope="module")
def incomplete_results(tmp_path_factory) -> Path:
    """A results folder with a broken JSON, a segmentation whose CT and masks are gone, and a
    review.csv."""
    folder = tmp_path_factory.mktemp("review_results")
    (folder / "broken_pancreas.json").write_text("{not json", encoding="utf-8")
    (folder / "lost_pancreas.json").write_text(json.dumps({
        "case": "lost", "input": str(folder / "lost.nii.gz"), "model": "monet-test", "model_sha256": "0" * 64,
        "warnings": ["test warning"], "voxel_count": 10, "volume_ml": 1.5}), encoding="utf-8")
    (folder / "review.csv").write_text("reviewer,case,task,time,model,model_sha256,model_class,verdict,"
                                       "reviewer_class,edited_file,comment\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def local_server(incomplete_results):
    server = ReviewServer(incomplete_results)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def network_server(incomplete_results):
    server = ReviewServer(incomplete_results, "--host", "0.0.0.0")
    yield server
    server.stop()


# -- the access rules, as functions -----------------------------------------------------------

def test_loopback_names_are_recognised():
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.7", "example.org", ""))


def test_a_token_is_generated_off_the_loopback_interface_only():
    assert access_token("127.0.0.1", None) is None
    assert access_token("127.0.0.1", "given") == "given"
    generated = access_token("0.0.0.0", None)
    assert generated and len(generated) >= 24 and generated != access_token("0.0.0.0", None)
    assert access_token("0.0.0.0", "given") == "given"


def test_the_printed_address_carries_the_token():
    assert browser_url("127.0.0.1", 8080, None) == "http://127.0.0.1:8080/"
    assert browser_url("10.0.0.2", 8080, "abc") == "http://10.0.0.2:8080/?token=abc"


def test_guard_refuses_traversal_other_hosts_other_origins_and_wrong_tokens():
    local = AccessGuard(token=None, loopback_only=True)
    assert local.refusal("/index.html", "127.0.0.1:80", None, None, None) is None
    assert local.refusal("/../etc/passwd", "127.0.0.1:80", None, None, None)
    assert local.refusal("/index.html", "attacker.example:80", None, None, None)
    assert local.refusal("/ws", "127.0.0.1:80", "http://attacker.example", None, None)
    assert local.refusal("/ws", "127.0.0.1:80", "http://127.0.0.1:80", None, None) is None
    remote = AccessGuard(token="secret", loopback_only=False)
    assert remote.refusal("/index.html", "host:80", None, None, None)
    assert remote.refusal("/index.html", "host:80", None, "wrong", "wrong")
    assert remote.refusal("/index.html", "host:80", None, "secret", None) is None
    assert remote.refusal("/index.html", "host:80", None, None, "secret") is None


# -- the running server -----------------------------------------------------------------------

@pytest.mark.slow
def test_local_server_serves_its_page_without_a_token(local_server):
    assert local_server.url.startswith("http://127.0.0.1:")
    assert local_server.token is None
    status, body = get(local_server.base + "/index.html")
    assert status == 200 and b"<html" in body.lower()


@pytest.mark.slow
@pytest.mark.parametrize("path", [
    "/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/..%2f..%2fetc/passwd", "//etc/passwd",
    "/etc/passwd", "/review.csv", "/lost_pancreas.json", "/broken_pancreas.json",
    "/static/../../review.csv", "/__trame_vuetify/..%2f..%2f..%2fetc%2fpasswd"])
def test_no_file_outside_the_apps_assets_is_served(local_server, incomplete_results, path):
    status, body = raw_get(local_server.port, path)
    assert status in (403, 404), (path, status)
    assert b"root:" not in body and b"lost" not in body and b"reviewer,case" not in body


@pytest.mark.slow
def test_absolute_file_name_of_a_result_is_not_served(local_server, incomplete_results):
    status, body = raw_get(local_server.port, str(incomplete_results / "lost_pancreas.json"))
    assert status in (403, 404) and b"monet-test" not in body


@pytest.mark.slow
def test_local_server_refuses_other_host_names(local_server):
    status, _ = raw_get(local_server.port, "/index.html", host_header="attacker.example")
    assert status == 403


@pytest.mark.slow
def test_network_server_prints_a_generated_token(network_server):
    assert network_server.token and len(network_server.token) >= 24
    assert f"?token={network_server.token}" in network_server.url


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/", "/index.html", "/ws"])
def test_network_server_refuses_requests_without_the_token(network_server, path):
    status, _ = get(network_server.base + path)
    assert status == 403
    status, _ = get(network_server.base + path + "?token=wrong")
    assert status == 403


@pytest.mark.slow
def test_network_server_serves_with_the_token_and_keeps_it_in_a_cookie(network_server):
    import http.cookiejar

    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(f"{network_server.base}/index.html?token={network_server.token}", timeout=20) as response:
        assert response.status == 200
    assert [c.name for c in jar] == ["pancreasai_review_token"]
    with opener.open(f"{network_server.base}/index.html", timeout=20) as response:  # the cookie alone
        assert response.status == 200


@pytest.mark.slow
def test_network_servers_websocket_needs_the_token(network_server):
    import aiohttp

    async def handshake(query: str, cookies: dict) -> object:
        async with aiohttp.ClientSession(cookies=cookies) as session:
            try:
                async with session.ws_connect(f"{network_server.base}/ws{query}") as ws:
                    await ws.close()
                    return "open"
            except aiohttp.WSServerHandshakeError as error:
                return error.status

    assert asyncio.run(handshake("", {})) == 403
    assert asyncio.run(handshake("", {"pancreasai_review_token": "wrong"})) == 403
    assert asyncio.run(handshake("", {"pancreasai_review_token": network_server.token})) == "open"


@pytest.mark.slow
def test_server_stops_cleanly_on_sigterm(incomplete_results):
    server = ReviewServer(incomplete_results)
    assert get(server.base + "/index.html")[0] == 200
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 20
    assert "Traceback" not in "".join(server.stderr)
    assert "Review server stopped." in "".join(server.stdout)


def test_a_folder_that_is_not_there_is_an_error_with_exit_code_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "PancreasAILib.pancreasai_cli", "review",
                             str(tmp_path / "nowhere"), "--no-browser"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "is not a folder" in result.stderr and "Traceback" not in result.stderr


def test_without_trame_slicer_the_command_says_what_to_install(tmp_path, monkeypatch, capsys):
    from PancreasAILib import pancreasai_cli

    monkeypatch.setitem(sys.modules, "trame_slicer", None)  # as in a Python without it
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    assert pancreasai_cli.main(["review", "results", "--no-browser"]) == 2
    error = capsys.readouterr().err
    assert "pip install 'trame-slicer[standalone]==2.0.0'" in error and "Traceback" not in error


def test_a_folder_under_home_is_found_from_another_directory(tmp_path, monkeypatch, capsys):
    """`~` and relative paths are the user's; a folder that is not there is said before any server starts."""
    from PancreasAILib import pancreasai_cli

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "trame_slicer", None)  # stops right after the folder check
    (tmp_path / "my results").mkdir()
    assert pancreasai_cli.main(["review", "~/my results", "--no-browser"]) == 2
    assert "trame-slicer" in capsys.readouterr().err  # the folder was found: the next check spoke
    assert pancreasai_cli.main(["review", "~/elsewhere", "--no-browser"]) == 2
    assert f"{tmp_path / 'elsewhere'} is not a folder of results" in capsys.readouterr().err


# -- the form as the page shows it ------------------------------------------------------------

def test_save_records_the_form_the_click_carries_even_when_a_field_update_is_late(tmp_path, small_ct_phantom,
                                                                                    small_mr_phantom):
    """A comment typed and saved at once: the click carries the form, so a comment whose own
    state update has not reached the server yet is still what gets saved."""
    from test_review import write_segmentation_case

    from PancreasAILib.review import read_verdicts
    from PancreasAILib.review_web import ReviewApp

    folder, inputs = tmp_path / "results", tmp_path / "inputs"
    folder.mkdir()
    inputs.mkdir()
    write_segmentation_case(folder, inputs, "ct_a", small_ct_phantom)
    app = ReviewApp(folder, reviewer="Dr A", server="late-comment-test")
    app.server.state.comment = ""  # the server has not seen the typed comment yet
    app.save("Dr A", "accept", None, "Tail included.")
    assert app.server.state.message_kind == "success", app.server.state.message
    (stored,) = read_verdicts(folder)
    assert (stored.case, stored.verdict, stored.comment) == ("ct_a", "accept", "Tail included.")


def test_a_two_class_case_offers_its_two_classes_and_saves_one(tmp_path, small_mr_phantom):
    """Cyst-X's 2-class task: the page's class choices are the result's own two, and disagreeing
    with one of them is saved."""
    import json

    from test_review import write_ipmn_case

    from PancreasAILib.review import read_verdicts
    from PancreasAILib.review_web import ReviewApp

    folder, inputs = tmp_path / "results", tmp_path / "inputs"
    folder.mkdir()
    inputs.mkdir()
    record = write_ipmn_case(folder, inputs, "mr_a", small_mr_phantom)
    record.update(class_names=["no or low-risk IPMN", "high-risk IPMN"], class_name="high-risk IPMN", risk_class=1,
                  probabilities=[0.3, 0.7], spread=[0.05, 0.05])
    (folder / "mr_a_ipmn_result.json").write_text(json.dumps(record), encoding="utf-8")
    app = ReviewApp(folder, reviewer="Dr A", server="two-class-test")
    app.select("ipmn:mr_a")
    assert app.server.state.class_options == ["no or low-risk IPMN", "high-risk IPMN"]
    app.save("Dr A", "disagree", "no or low-risk IPMN", "")
    assert app.server.state.message_kind == "success", app.server.state.message
    (stored,) = read_verdicts(folder)
    assert (stored.verdict, stored.reviewer_class) == ("disagree", "no or low-risk IPMN")
