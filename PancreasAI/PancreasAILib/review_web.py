"""The review web app (`pancreasai review RESULTS_DIR`): a worklist of one results folder, real
slice views rendered by trame-slicer from the MRML scene `review_scene.load_case` fills, and a verdict
form that writes through `review.record_verdict` to `RESULTS_DIR/review.csv`. The scene work is
`review_scene`'s (load, show, unload, window presets).

What reaches the browser: the page's own static assets, the trame state (worklist rows, the
current case's numbers, the form) and the rendered views as images. No route serves a file from
the results folder or anywhere else on disk. Off the loopback interface every request and the
websocket must present the access token (`?token=` on the first load, then a cookie).

A case that cannot be shown (its essential images are missing, its result file is broken, its
files do not load) is listed with the reason and gets no verdict: the review core refuses one,
as a reviewer cannot judge what they could not see. Missing non-essential files (a T1, the
.seg.nrrd beside the label map) are listed, and the case is shown and reviewed as usual.

trame, trame-slicer and aiohttp are imported inside the functions that need them, so this module
imports without them.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from .errors import MissingDependencyError, PancreasAIError
from .output_files import user_path

_log = logging.getLogger(__name__)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
TOKEN_COOKIE = "pancreasai_review_token"
AUTO_WINDOW = "auto"


def is_loopback(host: str) -> bool:
    """True for names and addresses of this machine's loopback interface."""
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def access_token(host: str, token: Optional[str]) -> Optional[str]:
    """The token the server will require: the one given, else a new one off the loopback
    interface (anyone on the network could reach the server), else none."""
    if token:
        return token
    if is_loopback(host):
        return None
    return secrets.token_urlsafe(24)


def browser_url(host: str, port: int, token: Optional[str]) -> str:
    """The address to open: a wildcard bind address becomes this machine's name."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/" + (f"?token={token}" if token else "")


@dataclass(frozen=True)
class AccessGuard:
    """Who may talk to the server: a request with the token (when one is required), from a page
    of this server (Origin), addressed to this server by a loopback name when it listens only
    there (a DNS-rebinding page cannot borrow the reviewer's browser)."""

    token: Optional[str]
    loopback_only: bool

    def token_matches(self, offered: Optional[str]) -> bool:
        return bool(self.token and offered) and hmac.compare_digest(offered.encode(), self.token.encode())

    def refusal(self, path: str, host: str, origin: Optional[str], query_token: Optional[str],
                cookie_token: Optional[str]) -> Optional[str]:
        """Why a request is refused (None: allowed). `path` is the decoded request path."""
        if any(part in ("..", ".") for part in path.split("/")) or "\\" in path or "\x00" in path:
            return "This path is not served."
        if self.loopback_only and not is_loopback(urlsplit(f"//{host}").hostname or ""):
            return "This review server answers only to 127.0.0.1 / localhost."
        if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
            return "Requests from other web pages are refused."
        if self.token and not (self.token_matches(query_token) or self.token_matches(cookie_token)):
            return "This review server needs its access token: open the address it printed (with ?token=...)."
        return None

    def middleware(self):
        """An aiohttp middleware that applies `refusal` to every request (pages, assets, the
        websocket) and, after a first load with `?token=`, keeps the token in a cookie."""
        from aiohttp import web

        def not_served(status: int):
            return web.Response(status=status, text=f"{status}: not served here.")

        @web.middleware
        async def guard(request, handler):
            query_token = request.query.get("token")
            why = self.refusal(request.path, request.host, request.headers.get("Origin"), query_token,
                               request.cookies.get(TOKEN_COOKIE))
            if why is not None:
                _log.warning("refused %s %s: %s", request.method, request.path, why)
                return web.Response(status=403, text=why)
            try:
                response = await handler(request)
            except web.HTTPException as error:
                if error.status < 400:  # the redirect from / to index.html
                    raise
                response = not_served(error.status)
            if isinstance(response, web.FileResponse) and not Path(response._path).is_file():
                # aiohttp answers a missing asset with an empty octet-stream, which a browser
                # offers to download; one plain answer for everything not served.
                response = not_served(404)
            if self.token_matches(query_token) and not response.prepared:
                response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="Strict", path="/")
            response.headers.setdefault("Cache-Control", "no-store")
            response.headers.setdefault("X-Frame-Options", "DENY")
            response.headers.setdefault("Referrer-Policy", "no-referrer")
            return response

        return guard


def case_key(case) -> str:
    """The page's name for a case: a folder may hold a segmentation and an IPMN result of one name."""
    return f"{case.task}:{case.name}"


def case_row(case, verdict) -> dict:
    """One worklist row for the page (plain JSON): key, name, task, result, warnings, model,
    verdict, and why it cannot be shown."""
    return {
        "key": case_key(case),
        "name": case.name,
        "task": case.task,
        "result": result_text(case),
        "warnings": "; ".join(case.warnings),
        "model": case.model,
        "verdict": _verdict_text(verdict),
        "problem": "" if case.reviewable else case.problem,
        "missing": "; ".join(case.missing) if case.reviewable else "",  # else the result says why
    }


def result_text(case) -> str:
    """The model's result in a few words: class (probabilities ± spread), or pancreas volume."""
    if not case.reviewable or case.task != "ipmn":
        return case.summary
    probabilities = "/".join(f"{p:.2f}" for p in case.probabilities)
    spread = "/".join(f"{s:.2f}" for s in case.spread)
    return f"{case.class_name} (p {probabilities}" + (f" ± {spread})" if spread else ")")


def _verdict_text(verdict) -> str:
    if verdict is None:
        return ""
    if verdict.reviewer_class and verdict.reviewer_class != verdict.model_class:
        return f"{verdict.verdict} ({verdict.reviewer_class})"
    return verdict.verdict


def case_details(case) -> list:
    """Lines that describe the model's output, for the side panel."""
    lines = [f"Task: {case.task}", f"Model: {case.model or 'unknown'}"
             + (f" (SHA256 {case.model_sha256[:12]}...)" if case.model_sha256 else "")]
    if case.task == "ipmn" and case.reviewable:
        names = case.record.get("class_names") or []
        spread = case.spread or [None] * len(case.probabilities)
        lines.append(f"Class: {case.class_name}")
        lines += [f"  {name}: {p:.2f}" + (f" ± {s:.2f}" if s is not None else "")
                  for name, p, s in zip(names, case.probabilities, spread)]
    elif case.reviewable:
        lines.append(f"Pancreas volume: {case.volume_ml} ml")
    lines += [f"Warning: {w}" for w in case.warnings]
    if not case.reviewable:
        lines.append(f"Cannot be shown: {case.problem}")
    lines += [f"Missing: {m}" for m in case.missing]
    return lines


def window_presets(task: str) -> dict:
    """Window / level presets by name: the review core's CT presets (HU); MR intensities have no
    scale, so MR is windowed automatically. None means automatic."""
    from .review_scene import CT_PRESETS

    return {**CT_PRESETS, AUTO_WINDOW: None} if task == "segmentation" else {AUTO_WINDOW: None}


def colour_bar(display_node, stops: int = 11) -> dict:
    """The heat map's colour legend as CSS: {"gradient", "low", "high"}, from the display node's
    colour table and window (what the slice views show)."""
    colours = display_node.GetColorNode().GetScalarsToColors()
    table_low, table_high = colours.GetRange()
    low, high = display_node.GetWindowLevelMin(), display_node.GetWindowLevelMax()
    parts = []
    for i in range(stops):
        t = i / (stops - 1)
        rgb = [0.0, 0.0, 0.0]
        colours.GetColor(table_low + t * (table_high - table_low), rgb)
        r, g, b = rgb
        parts.append(f"rgb({round(255 * r)},{round(255 * g)},{round(255 * b)}) {round(100 * t)}%")
    return {"gradient": f"linear-gradient(to right, {', '.join(parts)})", "low": f"{low:.2g}", "high": f"{high:.2g}"}


class ReviewApp:
    """The trame application: one scene, three slice views, the worklist of one folder."""

    def __init__(self, folder: Path, reviewer: str = "", server=None):
        from trame.app import get_server
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories
        from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

        from .review import open_worklist

        self.folder = Path(folder)
        self.worklist = open_worklist(self.folder)
        self.server = get_server(server, client_type="vue3")
        self.slicer_app = SlicerApp()
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout_dict({"review": Layout(LayoutDirection.Horizontal, [
            ViewLayoutDefinition.axial_view(),
            Layout(LayoutDirection.Vertical, [ViewLayoutDefinition.coronal_view(),
                                              ViewLayoutDefinition.sagittal_view()])])})
        self.layout_manager.set_layout("review")
        self._loaded = None
        self._shown: Optional[str] = None  # key of the case in the scene (or refused to be)
        self._init_state(reviewer)
        self._build_ui()
        state = self.server.state
        state.change("current")(lambda current, **_: self.select(current))
        state.change("reviewer")(lambda **_: self.refresh(reread_folder=False))
        state.change("preset")(lambda preset, **_: self.apply_window(preset))
        state.change("opacity")(lambda opacity, **_: self.apply_opacity(opacity))
        state.change("background")(lambda background, **_: self.apply_background(background))
        state.change("verdict")(lambda verdict, **_: self._on_verdict(verdict))
        if self.worklist.cases:
            self.select(case_key(self.worklist.cases[0]))

    @property
    def scene(self):
        return self.slicer_app.scene

    # -- state ------------------------------------------------------------------------------
    def _init_state(self, reviewer: str) -> None:
        from .review import IPMN_CLASSES

        s = self.server.state
        s.trame__title = "PancreasAI review"
        s.folder_name = str(self.folder)
        s.reviewer = reviewer
        s.cases, s.problems, s.current, s.current_name, s.details = [], [], None, "", []
        s.task, s.shown, s.reviewable, s.verdict_options = "", False, False, []
        s.class_options = list(IPMN_CLASSES)
        s.verdict, s.reviewer_class, s.comment, s.model_class = None, None, "", ""
        s.presets, s.preset, s.opacity, s.backgrounds, s.background = [], None, 0.5, [], None
        s.legend, s.message, s.message_kind = None, "", "info"
        self.refresh()

    def _current_case(self):
        """The case on screen, or None."""
        from .review import ReviewError

        if self._shown is None:
            return None
        task, name = self._shown.split(":", 1)
        try:
            return self.worklist.case(name, task)
        except ReviewError:
            return None

    def refresh(self, reread_folder: bool = True) -> None:
        """Re-read the folder (unless `reread_folder` is False) and review.csv: the worklist rows,
        and the form for the current case (a browser reload lands here too)."""
        from .review import ReviewError, open_worklist, verdicts_by_case

        s = self.server.state
        reviewer = (s.reviewer or "").strip()
        try:
            if reread_folder:
                self.worklist = open_worklist(self.folder)
            verdicts = verdicts_by_case(self.folder, reviewer) if reviewer else {}
        except ReviewError as error:
            self._say(str(error), "error")
            verdicts = {}
        s.cases = [case_row(case, verdicts.get((case.name, case.task))) for case in self.worklist.cases]
        s.problems = list(self.worklist.problems)
        case = self._current_case()
        if case is not None:
            self._fill_form(case, verdicts.get((case.name, case.task)))

    def on_page_loaded(self) -> None:
        """A new page (first load or reload): rebuild what it shows from the server's files."""
        self.server.state.current = self._shown
        self.refresh()
        for view in self.slicer_app.view_manager.get_slice_views():
            view.schedule_render()

    def _fill_form(self, case, verdict) -> None:
        from .review import IPMN_CLASSES, VERDICTS

        s = self.server.state
        s.current_name, s.task, s.reviewable = case.name, case.task, case.reviewable
        s.model_class = case.class_name
        s.class_options = list(case.class_names or IPMN_CLASSES)  # the classes of the result's own task
        s.details = case_details(case)
        s.verdict_options = list(VERDICTS[case.task]) if case.reviewable else []
        s.verdict = verdict.verdict if verdict else None
        s.reviewer_class = (verdict.reviewer_class or None) if verdict else None
        s.comment = verdict.comment if verdict else ""

    def _say(self, text: str, kind: str = "info") -> None:
        self.server.state.message, self.server.state.message_kind = text, kind

    # -- navigation -------------------------------------------------------------------------
    def step(self, offset: int) -> None:
        keys = [case_key(case) for case in self.worklist.cases]
        if not keys:
            return
        index = keys.index(self._shown) if self._shown in keys else -1
        self.server.state.current = keys[max(0, min(len(keys) - 1, index + offset))]

    def select(self, key) -> None:
        """Show the case `key` ("task:name", from the browser: refused unless it is in the worklist)."""
        from .review import ReviewError

        s = self.server.state
        if key is None or key == self._shown:
            return
        task, _, name = str(key).partition(":")
        try:
            case = self.worklist.case(name, task)
        except ReviewError as error:
            s.current = self._shown
            self._say(str(error), "error")
            return
        self._say("")
        self._unload()
        self._shown = s.current = case_key(case)
        self.refresh()
        s.presets = list(window_presets(case.task))
        s.backgrounds = []
        s.legend = None
        if case.reviewable:
            try:
                self._load(case)
            except (PancreasAIError, OSError, RuntimeError) as error:
                self._unload(keep_case=True)
                self._say(str(error), "error")
                s.verdict_options = []
        else:
            self._say(f"'{case.name}' {case.problem}.", "warning")
        s.shown = self._loaded is not None
        s.reviewable = case.reviewable and s.shown

    def _load(self, case) -> None:
        from .review import verdicts_by_case
        from .review_scene import load_case, show_case

        s = self.server.state
        reviewed = None  # this reviewer's corrected pancreas (edited in Slicer), shown instead
        if (s.reviewer or "").strip():
            verdict = verdicts_by_case(self.folder, s.reviewer).get((case.name, case.task))
            if verdict is not None and verdict.edited_file:
                reviewed = self.folder / verdict.edited_file
        self._loaded = load_case(case, self.scene, reviewed_file=reviewed)
        show_case(self.scene, self._loaded, opacity=float(s.opacity))
        s.backgrounds = ["T2", "T1"] if self._loaded.alternate_background is not None else []
        s.background = "T2" if s.backgrounds else None
        s.preset = s.presets[0]
        self.apply_window(s.preset)
        if self._loaded.foreground is not None and self._loaded.foreground.GetDisplayNode() is not None:
            s.legend = colour_bar(self._loaded.foreground.GetDisplayNode())
        for view in self.slicer_app.view_manager.get_slice_views():
            view.schedule_render()

    def _unload(self, keep_case: bool = False) -> None:
        from .review_scene import unload_case

        unload_case(self.scene, self._loaded)
        self._loaded = None
        if not keep_case:
            self._shown = None

    # -- display ----------------------------------------------------------------------------
    def _background_node(self):
        if self._loaded is None:
            return None
        if self.server.state.background == "T1" and self._loaded.alternate_background is not None:
            return self._loaded.alternate_background
        return self._loaded.background

    def apply_window(self, preset) -> None:
        from .review_scene import set_auto_window_level, set_window_level

        node = self._background_node()
        presets = window_presets(self.server.state.task)
        if node is None or preset not in presets:
            return
        if presets[preset] is None:
            set_auto_window_level(node)
        else:
            set_window_level(node, *presets[preset])

    def apply_opacity(self, opacity) -> None:
        """The heat map's opacity in the views (the slice position stays where the reviewer left it)."""
        try:
            opacity = min(1.0, max(0.0, float(opacity)))
        except (TypeError, ValueError):
            return
        for view in self.slicer_app.view_manager.get_slice_views():
            view.set_foreground_opacity(opacity)

    def apply_background(self, background) -> None:
        """T2 (what the heat map was computed on) or T1 under the heat map."""
        node = self._background_node()
        if node is None or background not in ("T1", "T2"):
            return
        for view in self.slicer_app.view_manager.get_slice_views():
            view.set_background_volume_id(node.GetID())
        self.apply_window(self.server.state.preset)

    # -- verdicts ---------------------------------------------------------------------------
    def _on_verdict(self, verdict) -> None:
        s = self.server.state
        if s.task == "ipmn" and verdict == "agree":
            s.reviewer_class = s.model_class

    def save(self, *form) -> None:
        """Record the form's verdict for the case on screen (the core checks it).

        form: (reviewer, verdict, reviewer_class, comment) as the page shows them when Save is
        clicked. They come with the click because a field's own state update can arrive after
        it (a comment typed and saved at once was lost under load)."""
        from .review import ReviewError, Verdict, record_verdict

        s = self.server.state
        if form:
            s.reviewer, s.verdict, s.reviewer_class, s.comment = form
        case = self._current_case()
        try:
            if case is None:
                raise ReviewError("Choose a case first.")
            if not (s.reviewer or "").strip():
                raise ReviewError("Type your name as reviewer before saving.")
            if self._loaded is None:
                raise ReviewError(f"'{case.name}' could not be shown, so it gets no verdict.")
            stored = record_verdict(self.worklist, Verdict(
                reviewer=str(s.reviewer), case=case.name, task=case.task, verdict=str(s.verdict or ""),
                reviewer_class=str(s.reviewer_class or "") if case.task == "ipmn" else "",
                comment=str(s.comment or "")))
        except (ReviewError, OSError) as error:
            self._say(str(error), "error")
            return
        self.refresh()
        self._say(f"Saved '{stored.verdict}' for {stored.case} at {stored.time} in review.csv.", "success")

    # -- page -------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        from trame.ui.vuetify3 import SinglePageLayout
        from trame.widgets import client, html
        from trame.widgets import vuetify3 as v

        with SinglePageLayout(self.server, full_height=True) as layout:
            layout.root.theme = "dark"
            layout.icon.hide()
            layout.footer.hide()
            layout.title.set_text("PancreasAI review")
            with layout.toolbar:
                html.Span("{{ folder_name }}", classes="text-caption text-grey ml-4")
                v.VSpacer()
                html.Span("Research use only: model outputs, not diagnoses.", classes="text-caption mr-4")
                v.VTextField(v_model=("reviewer",), label="Reviewer", id="reviewer", density="compact",
                             hide_details=True, style="max-width: 220px", classes="mr-2",
                             placeholder="your name")
            with layout.content:
                client.ClientTriggers(mounted=self.on_page_loaded)
                client.Style(_PAGE_CSS)
                with html.Div(classes="review-page"):
                    self._worklist_panel(html, v)
                    with html.Div(classes="review-views"):
                        self._display_bar(html, v)
                        with html.Div(id="slice-views", classes="review-slices"):
                            self.layout_manager.initialize_layout_grid(layout)
                        html.Div("{{ message }}", v_show="!shown && current", classes="review-no-image")
                    self._verdict_panel(html, v)
        self.ui = layout

    def _worklist_panel(self, html, v) -> None:
        with html.Div(classes="review-worklist", id="worklist"):
            with html.Div(classes="d-flex align-center mb-2"):
                v.VBtn("Previous", id="previous-case", size="small", click=lambda: self.step(-1),
                       prepend_icon="mdi-chevron-left", classes="mr-2")
                v.VBtn("Next", id="next-case", size="small", click=lambda: self.step(1),
                       append_icon="mdi-chevron-right")
            with html.Table(classes="review-table"):
                with html.Tr():
                    for title in ("Case", "Result", "Warnings", "Model", "Your verdict"):
                        html.Th(title)
                with html.Tr(v_for="row in cases", key="row.key", click="current = row.key",
                             classes=("{ 'review-current': row.key === current, 'review-problem': row.problem }",)):
                    html.Td("{{ row.name }}<div class='text-caption text-grey'>{{ row.task }}</div>")
                    html.Td("{{ row.result }}<div v-if='row.missing' class='review-missing'>{{ row.missing }}</div>")
                    html.Td("{{ row.warnings }}")
                    html.Td("{{ row.model }}")
                    html.Td("{{ row.verdict }}", classes="review-verdict")
            with html.Div(v_if="problems.length", classes="review-problems"):
                html.Div("Not listed:", classes="font-weight-bold")
                html.Div("{{ p }}", v_for="p in problems", key="p")

    def _display_bar(self, html, v) -> None:
        with html.Div(classes="review-display d-flex align-center flex-wrap", v_show="shown"):
            html.Span("Window", classes="mr-2 text-caption")
            with v.VBtnToggle(v_model=("preset",), mandatory=True, density="compact", classes="mr-4",
                              id="window-presets"):
                v.VBtn("{{ p }}", v_for="p in presets", key="p", value=("p",), size="small")
            with html.Div(v_if="backgrounds.length", classes="d-flex align-center"):
                html.Span("Background", classes="mr-2 text-caption")
                with v.VBtnToggle(v_model=("background",), mandatory=True, density="compact", classes="mr-4",
                                  id="background"):
                    v.VBtn("{{ b }}", v_for="b in backgrounds", key="b", value=("b",), size="small")
            with html.Div(v_if="task === 'ipmn'", classes="d-flex align-center", style="width: 220px"):
                html.Span("Heat map", classes="mr-2 text-caption")
                v.VSlider(v_model=("opacity",), min=0, max=1, step=0.05, hide_details=True,
                          density="compact", id="opacity")
            with html.Div(v_if="legend", classes="review-legend ml-4", id="legend"):
                html.Div(style=("{ background: legend.gradient }",), classes="review-legend-bar")
                with html.Div(classes="d-flex justify-space-between text-caption"):
                    html.Span("{{ legend.low }}")
                    html.Span("heat map (model attention)")
                    html.Span("{{ legend.high }}")

    def _verdict_panel(self, html, v) -> None:
        with html.Div(classes="review-verdict-panel"):
            html.Div("{{ current_name }}", id="current-case", classes="text-h6")
            html.Div("{{ line }}", v_for="line in details", key="line", classes="text-body-2 review-detail")
            with html.Div(v_if="reviewable", classes="mt-3"):
                with v.VRadioGroup(v_model=("verdict",), label="Verdict", id="verdict", density="compact",
                                   hide_details=True):
                    v.VRadio(v_for="o in verdict_options", key="o", label=("o",), value=("o",))
                with v.VRadioGroup(v_if="task === 'ipmn'", v_model=("reviewer_class",), label="Your class",
                                   id="reviewer-class", density="compact", hide_details=True,
                                   disabled=("verdict === 'agree'",)):
                    v.VRadio(v_for="c in class_options", key="c", label=("c",), value=("c",))
                v.VTextarea(v_model=("comment",), label="Comment", id="comment", rows=3, classes="mt-2",
                            hide_details=True)
                v.VBtn("Save", id="save-verdict", color="primary", classes="mt-2",
                       click=(self.save, "[reviewer, verdict, reviewer_class, comment]"),
                       disabled=("!verdict || !reviewer",))
            html.Div("{{ message }}", id="message", classes=("'mt-2 text-' + message_kind",))


_PAGE_CSS = """
.review-page { display: flex; height: calc(100vh - 64px); gap: 8px; padding: 8px; }
.review-worklist { width: 34%; min-width: 320px; overflow: auto; font-size: 12px; }
.review-table { border-collapse: collapse; width: 100%; }
.review-table th, .review-table td { border-bottom: 1px solid #444; padding: 3px 5px; text-align: left;
  vertical-align: top; overflow-wrap: anywhere; }
.review-table tr:not(:first-child) { cursor: pointer; }
.review-current { background: #2d4a66; }
.review-problem td { color: #e0a040; }
.review-missing { color: #e0a040; font-size: 12px; }
.review-problems { color: #e06060; margin-top: 8px; }
.review-views { flex: 1; display: flex; flex-direction: column; min-width: 0; }
.review-slices { flex: 1; position: relative; min-height: 300px; }
.review-no-image { padding: 16px; color: #e0a040; }
.review-legend { width: 260px; }
.review-legend-bar { height: 12px; border: 1px solid #888; }
.review-verdict-panel { width: 18%; min-width: 230px; overflow: auto; }
.review-detail { white-space: pre; }
"""


def serve(folder: Path, host: str = "127.0.0.1", port: int = 0, token: Optional[str] = None,
          reviewer: str = "", open_browser: bool = True) -> int:
    """Run the review server until Ctrl-C / SIGTERM; prints the address (with the token) once it
    listens. Returns the exit code."""
    folder = user_path(folder)
    token = access_token(host, token)
    guard = AccessGuard(token=token, loopback_only=is_loopback(host))
    # trame would otherwise read this process's command line as its own options.
    os.environ["TRAME_ARGS"] = ""
    app = ReviewApp(folder, reviewer=reviewer)
    server = app.server
    guarded = []

    def install_guard(wslink_server):
        wslink_server.app.middlewares.append(guard.middleware())
        guarded.append(True)

    server.controller.on_server_bind.add(install_guard)

    def announce(**_):
        if not guarded:  # fail closed: never serve without the access rules
            print("error: the review server could not install its access checks; stopping.", file=sys.stderr,
                  flush=True)
            os._exit(2)
        url = browser_url(host, server.port, token)
        print(f"PancreasAI review of {folder}", flush=True)
        if token:  # before the address: whoever waits for "Open" has the token already
            print(f"Access token: {token}", flush=True)
        print(f"Open {url}", flush=True)
        print("Stop with Ctrl-C.", flush=True)
        if open_browser:
            import webbrowser

            webbrowser.open(url)

    server.controller.on_server_ready.add(announce)
    server.start(host=host, port=port, open_browser=False, show_connection_info=False, timeout=0,
                 disable_logging=True)
    print("Review server stopped.", flush=True)
    return 0


def main_review(args) -> int:
    """The `review` subcommand of `pancreasai`: a folder that is not there, or a Python without
    trame-slicer, is said (PancreasAIError) before any server starts."""
    from .review import open_worklist

    folder = user_path(args.results_dir)
    open_worklist(folder)
    require_trame()
    return serve(folder, host=args.host, port=args.port, token=args.token, reviewer=args.reviewer or "",
                 open_browser=not args.no_browser)


def require_trame() -> None:
    """The web app's packages, or the error that says how to install them."""
    import importlib

    try:
        for name in ("trame", "trame_slicer"):
            importlib.import_module(name)
    except ImportError as error:
        raise MissingDependencyError(
            "The review web app needs trame-slicer: pip install 'trame-slicer[standalone]==2.0.0' (what "
            "requirements-dev.txt pins). In Slicer, use the Review section of the modules instead.") from error
