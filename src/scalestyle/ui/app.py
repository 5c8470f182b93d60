"""The web UI of `scalestyle serve`: a Gradio app over the Python API with the CLI's argument names.

Tabs: Generate (:class:`scalestyle.pipeline.Pipeline`), Stylize (:class:`scalestyle.method.style.
StylePipeline`, StyleAligned from :mod:`scalestyle.eval.methods`, or with a StyleAR adapter configured
:class:`scalestyle.method.stylear.StyleARPipeline`), Transfer
(:class:`scalestyle.transfer.TransferPipeline`, only with a StyleVAR model configured), Gallery (this
server's outputs and their metadata) and Study (:mod:`scalestyle.ui.study`).

Every input is checked as the CLI checks it and a rejected one is one message with the CLI's text. Jobs wait
in Gradio's bounded queue (``queue_size``; a full queue refuses with Gradio's "Queue is full" message);
the model runs one job at a time, because a style job installs its attention controller on the shared model;
a job (a transfer too) reports every scale and is stopped between scales once it has run ``timeout_s``
seconds. Uploads above ``max_upload_bytes``
are refused by Gradio before they reach a handler, and again by the handler (for clients that bypass the
page). Written images are RGB PNGs with their prompt, seed, settings and model in the metadata
(:func:`scalestyle.metadata.write_png`), in ``outputs``.
"""

from __future__ import annotations

import functools
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import gradio as gr
from PIL import Image

from scalestyle.cli import CliError, _out_png, _text
from scalestyle.config import SamplingConfig, parse_int_list
from scalestyle.ui.study import (
    CRITERIA,
    Share,
    Study,
    StudyError,
    items_from_evaluation,
    items_from_methods,
    list_studies,
    open_study,
)
from scalestyle.weights import WeightsError

if TYPE_CHECKING:
    from scalestyle.method.stylear import StyleARPipeline
    from scalestyle.pipeline import Pipeline
    from scalestyle.sampling import ScaleEvent
    from scalestyle.transfer import TransferPipeline

MAX_STUDY_METHODS = 8
"""Image slots on the rater page (a study of more methods is refused when made in the UI)."""

GALLERY_LIMIT = 200
"""The newest outputs the gallery shows."""

Progress = Callable[[int, int, str], None]
"""``progress(done, total, what)``: how a job reports its scales (or images)."""


@dataclass(frozen=True)
class UIConfig:
    """Settings of one server; the names are `scalestyle serve`'s flags."""

    model: str | None = None
    device: str | None = None
    transfer_model: str | None = None
    transfer_random_weights: bool = False
    stylear_adapter: Path | None = None
    host: str = "127.0.0.1"
    port: int = 7860
    concurrency: int = 1
    queue_size: int = 16
    max_upload_bytes: int = 10_000_000
    timeout_s: float = 300.0
    outputs: Path = Path("scalestyle-ui/outputs")
    studies: Path = Path("scalestyle-ui/studies")
    admin_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.host.strip():
            raise ValueError("host must be non-empty (default 127.0.0.1, this machine only)")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be in [1, 65535], got {self.port}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {self.queue_size}")
        if self.max_upload_bytes < 1:
            raise ValueError(f"max_upload_bytes must be >= 1, got {self.max_upload_bytes}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.admin_token is not None and len(self.admin_token) < 8:
            raise ValueError("admin_token must have at least 8 characters (or be None: no study admin)")
        if self.transfer_random_weights and self.transfer_model is None:
            raise ValueError("transfer_random_weights needs transfer_model, a StyleVAR preset name")

    @property
    def max_upload_mb(self) -> float:
        return self.max_upload_bytes / 1e6


class JobTimeout(Exception):
    """A job ran past the server's timeout and was stopped."""


P = ParamSpec("P")
R = TypeVar("R")

USER_ERRORS = (CliError, ValueError, WeightsError, OSError, JobTimeout)
"""What a handler turns into one message on the page (the CLI's set, and the timeout)."""


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn``, turning a user error into the one-line :class:`gradio.Error` the page shows."""

    @functools.wraps(fn)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            raise gr.Error(str(err), print_exception=False) from err

    return wrapped


# -- the jobs (no Gradio here: the tests and any other front end call these) --------------------------------


@dataclass(frozen=True)
class StylizeJob:
    """One stylize request: the content prompt, the reference (None: the style in words only), and the
    method's settings."""

    prompt: str
    reference: Image.Image | None
    style_prompt: str | None
    sampling: SamplingConfig
    ablation: str = "d"
    key_steps: tuple[int, ...] = (2, 3)
    fine_steps: tuple[int, ...] | None = None
    steps_convention: str = "B"
    style_scale: float = 1.0
    noise_strength: float = 0.3


StylizeRun = Callable[
    ["Pipeline", StylizeJob, "Callable[[ScaleEvent], None]"], tuple[Image.Image, dict[str, Any]]
]


def _training_free(
    pipe: Pipeline, job: StylizeJob, on_scale: Callable[[ScaleEvent], None]
) -> tuple[Image.Image, dict[str, Any]]:
    from scalestyle.method.style import StyleConfig, StylePipeline

    style = replace(
        StyleConfig.ablation(job.ablation),
        key_steps=job.key_steps,
        fine_steps=job.fine_steps,
        convention=job.steps_convention,  # type: ignore[arg-type]
    )
    out = StylePipeline(pipe)(
        job.prompt,
        job.reference,
        style_prompt=job.style_prompt,
        style=style,
        sampling=job.sampling,
        on_scale=on_scale,
    )
    return out.images[0], {**out.metadata[0], "method": "training-free"}


def _stylealigned(
    pipe: Pipeline, job: StylizeJob, on_scale: Callable[[ScaleEvent], None]
) -> tuple[Image.Image, dict[str, Any]]:
    from scalestyle.eval.methods import METHODS, Request, StyleAlignedConfig
    from scalestyle.method.style import make_prompts

    if job.reference is None:
        raise CliError("StyleAligned shares a reference's attention: give a reference image")
    prompts = make_prompts(job.prompt, job.style_prompt, content_prompt=None, gen_prompt=None)
    request = Request(job.prompt, prompts.style, job.reference, job.sampling.seed, job.sampling)
    image = METHODS["stylealigned"](pipe, replace(request, on_scale=on_scale))
    schedule = pipe.schedule_for(h_div_w=job.sampling.h_div_w, pn=job.sampling.pn)
    meta = {
        "prompt": prompts.generation,
        "content_prompt": prompts.content,
        "style_prompt": prompts.style,
        "style_image": True,
        "seed": job.sampling.seed,
        "model": pipe.model_name,
        "settings": pipe.settings(job.sampling, schedule),
        "method": "stylealigned",
        "stylealigned": asdict(StyleAlignedConfig()),
    }
    return image, meta


STYLIZE_METHODS: Mapping[str, StylizeRun] = {"training-free": _training_free, "stylealigned": _stylealigned}
"""The Stylize tab's methods that need no trained weights, by the name it shows; a server with a StyleAR
adapter adds ``"stylear"`` (:attr:`Jobs.stylize_methods`). The ablation and stage settings are the
training-free method's, ``style_scale`` and ``noise_strength`` StyleAR's."""


class Jobs:
    """The models of one server, loaded on first use, and the jobs that run on them one at a time."""

    def __init__(self, config: UIConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._pipe: Pipeline | None = None
        self._transfer: TransferPipeline | None = None
        self._stylear: StyleARPipeline | None = None

    @property
    def stylize_methods(self) -> Mapping[str, StylizeRun]:
        """The Stylize tab's methods on this server: :data:`STYLIZE_METHODS`, and StyleAR when the server
        has an adapter."""
        if self.config.stylear_adapter is None:
            return STYLIZE_METHODS
        return {**STYLIZE_METHODS, "stylear": self._run_stylear}

    def _run_stylear(
        self, pipe: Pipeline, job: StylizeJob, on_scale: Callable[[ScaleEvent], None]
    ) -> tuple[Image.Image, dict[str, Any]]:
        """StyleAR as `scalestyle stylize --method stylear` with one reference (the adapter loads with the
        first StyleAR job, onto the model it fits)."""
        from scalestyle.method.stylear import StyleARPipeline
        from scalestyle.models.stylear import StyleARSettings

        settings = StyleARSettings(scale=job.style_scale, noise_strength=job.noise_strength)
        if self._stylear is None or self._stylear.pipe is not pipe:
            assert self.config.stylear_adapter is not None  # only listed when configured
            self._stylear = StyleARPipeline.load(pipe, self.config.stylear_adapter)
        out = self._stylear(
            job.prompt,
            job.reference,
            style_prompt=job.style_prompt,
            style=settings,
            sampling=job.sampling,
            on_scale=on_scale,
        )
        return out.images[0], out.metadata[0]

    @property
    def transfer_enabled(self) -> bool:
        return self.config.transfer_model is not None

    def _load_pipe(self) -> Pipeline:
        from scalestyle.pipeline import Pipeline

        if self._pipe is None:
            self._pipe = Pipeline.load(self.config.model, device=self.config.device)
        return self._pipe

    def _load_transfer(self) -> TransferPipeline:
        from scalestyle.transfer import TransferPipeline

        name = self.config.transfer_model
        if name is None:
            raise CliError("this server has no StyleVAR model: start it with --transfer-model")
        if self._transfer is None:
            if self.config.transfer_random_weights:
                self._transfer = TransferPipeline.random(name, device=self.config.device)
            else:
                self._transfer = TransferPipeline.load(name, device=self.config.device)
        return self._transfer

    def _timer(self, what: str, total: int, progress: Progress | None) -> Callable[[ScaleEvent], None]:
        """The ``on_scale`` of one job of ``total`` scales: reports each scale and raises
        :class:`JobTimeout` after the first scale that ends past ``timeout_s`` (the clock starts here)."""
        start = time.monotonic()

        def on_scale(event: ScaleEvent) -> None:
            done = event.scale + 1
            if progress is not None:
                progress(done, total, f"{what}: scale {done}/{total}")
            if time.monotonic() - start > self.config.timeout_s:
                raise JobTimeout(
                    f"{what} ran over this server's limit of {self.config.timeout_s:g} s (--timeout-s) "
                    f"and was stopped at scale {done} of {total}"
                )

        return on_scale

    def _run(
        self,
        what: str,
        sampling: SamplingConfig,
        job: Callable[[Pipeline, Callable[[ScaleEvent], None]], R],
        progress: Progress | None,
    ) -> R:
        """``job(pipe, on_scale)`` alone on the model, stopped between scales after ``timeout_s``."""
        with self._lock:
            pipe = self._load_pipe()
            total = pipe.schedule_for(h_div_w=sampling.h_div_w, pn=sampling.pn).num_scales
            return job(pipe, self._timer(what, total, progress))

    def check_upload(self, path: str | None, flag: str) -> str | None:
        """``path`` when its file is within the upload limit (the CLI's flag names the input)."""
        if path is None:
            return None
        size = os.path.getsize(path)
        if size > self.config.max_upload_bytes:
            raise CliError(
                f"{flag} {Path(path).name}: {size / 1e6:.1f} MB is over this server's upload limit of "
                f"{self.config.max_upload_mb:g} MB (--max-upload-mb)"
            )
        return path

    def _save(self, image: Image.Image, meta: Mapping[str, Any], kind: str) -> Path:
        folder = self.config.outputs
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        path = _out_png(str(folder / f"{stamp}-{kind}-{secrets.token_hex(3)}.png"), overwrite=False)
        from scalestyle.metadata import write_png

        return write_png(image, path, {**meta, "ui": kind})

    def generate(
        self,
        prompt: str | None,
        *,
        negative_prompt: str | None = None,
        class_label: str | None = None,
        sampling: SamplingConfig,
        progress: Progress | None = None,
    ) -> list[Path]:
        """Generate as `scalestyle generate`: one image per prompt, or per class label of a comma-separated
        list ("207, 88") on a class-conditional model. Returns the written PNGs."""
        inputs: dict[str, Any] = {}
        if prompt:
            inputs["prompt"] = _text(prompt, "--prompt")
        if negative_prompt:
            inputs["negative_prompt"] = negative_prompt
        if class_label and class_label.strip():
            inputs["class_label"] = list(parse_int_list(class_label, "--class-label"))
        if "prompt" not in inputs and "class_label" not in inputs:
            raise CliError("give --prompt TEXT (or --class-label N for a class-conditional model)")
        result = self._run(
            "generate", sampling, lambda pipe, on: pipe(**inputs, sampling=sampling, on_scale=on), progress
        )
        return [
            self._save(img, meta, "generate")
            for img, meta in zip(result.images, result.metadata, strict=True)
        ]

    def stylize(
        self,
        job: StylizeJob,
        *,
        method: str = "training-free",
        text_only: bool = False,
        style_file: str = "",
        progress: Progress | None = None,
    ) -> Path:
        """Stylize as `scalestyle stylize` with one of :attr:`stylize_methods` (the same checks, in the same
        words). Returns the written PNG."""
        methods = self.stylize_methods
        run = methods.get(method)
        if run is None:
            raise CliError(f"method {method!r} is not one of {list(methods)}")
        _text(job.prompt, "--prompt")
        if job.reference is None and not text_only:
            raise CliError(
                "give a reference image with --style REF.png (or --text-only to use the style prompt)"
            )
        if job.reference is None and method == "stylear":
            raise CliError("--method stylear needs at least one --style REF.png[:WEIGHT]")
        if job.reference is not None and text_only:
            raise CliError("--text-only takes no --style image")
        if text_only and job.style_prompt is None:
            raise CliError("--text-only needs --style-prompt: the style is then given in words only")
        _text(job.style_prompt, "--style-prompt")
        image, meta = self._run("stylize", job.sampling, lambda pipe, on: run(pipe, job, on), progress)
        return self._save(image, {**meta, "style_file": style_file}, "stylize")

    def transfer(
        self,
        content: str,
        style: str,
        *,
        strength: float = 0.0,
        sampling: SamplingConfig | None = None,
        progress: Progress | None = None,
    ) -> Path:
        """Redraw ``content`` in ``style``'s style as `scalestyle transfer` (StyleVAR), reporting every scale
        and stopped between scales after ``timeout_s`` as the other jobs."""
        from scalestyle.images import load_image
        from scalestyle.transfer import TRANSFER_SAMPLING

        if not -1 <= strength <= 1:
            raise CliError(f"--strength must be in [-1, 1], got {strength}")
        sampling = sampling or TRANSFER_SAMPLING
        content_img, style_img = load_image(content), load_image(style)
        with self._lock:
            pipe = self._load_transfer()
            on_scale = self._timer("transfer", pipe.pipe.schedule_for().num_scales, progress)
            result = pipe(content_img, style_img, strength=strength, sampling=sampling, on_scale=on_scale)
        return self._save(result.images[0], result.metadata[0], "transfer")

    def study_from_methods(
        self,
        name: str,
        prompts: Sequence[str],
        references: Sequence[str],
        methods: Sequence[str],
        *,
        style_prompt: str | None = None,
        seed: int = 0,
        sampling: SamplingConfig | None = None,
        progress: Progress | None = None,
    ) -> Study:
        """A study of ``methods`` (names of :data:`scalestyle.eval.methods.METHODS`) on the grid of
        ``prompts`` x ``references``, each image made as one job (the timeout applies per image)."""
        from scalestyle.eval.methods import Request, get_methods
        from scalestyle.images import load_image
        from scalestyle.method.style import make_prompts

        table = get_methods(list(methods))
        if len(table) > MAX_STUDY_METHODS:
            raise StudyError(f"a study shows at most {MAX_STUDY_METHODS} methods, got {len(table)}")
        refs = [load_image(self.check_upload(r, "reference") or r) for r in references]
        base = sampling or SamplingConfig()
        self.config.studies.mkdir(parents=True, exist_ok=True)

        def make(method: str, prompt: str, ref: Image.Image, image_seed: int) -> Image.Image:
            style = make_prompts(prompt, style_prompt, content_prompt=None, gen_prompt=None).style
            request = Request(prompt, style, ref, image_seed, replace(base, seed=image_seed))
            return self._run(
                "study image", base, lambda pipe, on: table[method](pipe, replace(request, on_scale=on)), None
            )

        def images_done(done: int, total: int) -> None:
            if progress is not None:
                progress(done, total, f"study images {done}/{total}")

        items = items_from_methods(prompts, refs, list(table), make, seed=seed, progress=images_done)
        return Study.create(self.config.studies, name, items, seed=seed, source=f"methods {','.join(table)}")

    def study_from_evaluation(
        self, name: str, run_dir: str, methods: Sequence[str] | None, *, seed: int = 0
    ) -> Study:
        """A study of an `evaluate` run folder on this machine (see :func:`items_from_evaluation`)."""
        items = items_from_evaluation(run_dir, methods)
        if len(items[0].images) > MAX_STUDY_METHODS:
            raise StudyError(f"a study shows at most {MAX_STUDY_METHODS} methods, got {len(items[0].images)}")
        self.config.studies.mkdir(parents=True, exist_ok=True)
        return Study.create(self.config.studies, name, items, seed=seed, source=f"evaluate {run_dir}")

    def is_admin(self, token: str | None) -> bool:
        """Whether ``token`` is this server's admin token (compared in constant time)."""
        want = self.config.admin_token
        return want is not None and token is not None and hmac.compare_digest(token.encode(), want.encode())

    def require_admin(self, token: str | None) -> None:
        if self.config.admin_token is None:
            raise StudyError("study admin is off on this server: start it with --admin-token TOKEN")
        if not self.is_admin(token):
            raise StudyError("wrong admin token")


def gallery(folder: Path, limit: int = GALLERY_LIMIT) -> list[Path]:
    """The PNGs in ``folder``, newest first (at most ``limit``)."""
    if not folder.is_dir():
        return []
    files = [p for p in folder.glob("*.png") if not p.name.startswith(".")]
    return sorted(files, key=lambda p: (p.stat().st_mtime, p.name), reverse=True)[:limit]


def tally_rows(shares: Sequence[Share]) -> list[list[Any]]:
    """The tally as table rows: criterion, method, votes, share and its 95% CI in percent."""
    return [
        [
            s.criterion,
            s.method,
            s.votes,
            s.total,
            round(100 * s.share, 1),
            round(100 * s.ci_low, 1),
            round(100 * s.ci_high, 1),
        ]
        for s in shares
    ]


TALLY_HEADERS = ["criterion", "method", "votes", "of", "share %", "95% CI low %", "95% CI high %"]


RATER_KEY = "scalestyle-rater-id"
"""The browser's ``localStorage`` key of its rater id (:data:`RATER_JS`)."""

RATER_JS = f"""(study, name, browser) => {{
  let id = "";
  try {{
    id = window.localStorage.getItem("{RATER_KEY}") || "";
    if (!/^[0-9a-f]{{32}}$/.test(id)) {{
      const bytes = new Uint8Array(16);
      window.crypto.getRandomValues(bytes);
      id = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
      window.localStorage.setItem("{RATER_KEY}", id);
    }}
  }} catch (err) {{
    id = "";
  }}
  return [study, name, id];
}}"""
"""Run in the page when a rater presses Start: this browser's rater id, made once and kept in its
``localStorage``, so it outlives the session and a restart of the server (with Gradio's ``BrowserState``
the browser test saw the same browser come back after a restart as a new rater, free to vote again).
``getRandomValues`` works on plain http too, where ``randomUUID`` does not; a browser refusing storage
sends "" and is rated per session."""

_BROWSER_ID = re.compile(r"^[0-9a-f]{32}$")


def rater_id(name: str, browser: str, session: str) -> str:
    """The rater of a ballot: the name typed, else this browser's stored id (:data:`RATER_JS`), else the
    page's session (no storage, or an id not of the page's making)."""
    if name.strip():
        return f"name:{name.strip()}"
    if _BROWSER_ID.match(browser):
        return f"browser:{browser}"
    return f"session:{session}"


# -- the Gradio app ----------------------------------------------------------------------------------------


def _reporter(progress: gr.Progress) -> Progress:
    def report(done: int, total: int, what: str) -> None:
        progress((done, total), desc=what)

    return report


def _sampling(fields: Sequence[Any], base: SamplingConfig) -> SamplingConfig:
    """The page's sampling fields (seed, cfg, tau, top_k, top_p, aspect) as one config (an empty field
    keeps ``base``'s value)."""
    from scalestyle.schedules import parse_aspect

    seed, cfg, tau, top_k, top_p, aspect = fields

    def pick(value: float | None, default: float) -> float:
        return default if value is None else value

    return replace(
        base,
        seed=int(pick(seed, base.seed)),
        cfg=float(pick(cfg, base.cfg)),
        tau=float(pick(tau, base.tau)),
        top_k=int(pick(top_k, base.top_k)),
        top_p=float(pick(top_p, base.top_p)),
        h_div_w=parse_aspect(aspect or "1:1"),
    )


def _sampling_fields(base: SamplingConfig, *, tau: bool = True, aspect: bool = True) -> list[Any]:
    with gr.Accordion("sampling", open=False), gr.Row():
        fields = [
            gr.Number(base.seed, label="seed", precision=0),
            gr.Number(base.cfg, label="cfg"),
            gr.Number(base.tau, label="tau", visible=tau),
            gr.Number(base.top_k, label="top_k", precision=0),
            gr.Number(base.top_p, label="top_p"),
            gr.Textbox("1:1", label="aspect (H:W)", visible=aspect),
        ]
    return fields


def _metadata(path: Path | str) -> dict[str, Any]:
    """A PNG's metadata with its JSON values decoded, for the page."""
    from scalestyle.metadata import read_png_metadata

    out: dict[str, Any] = {}
    for key, value in read_png_metadata(path).items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def build_app(config: UIConfig, jobs: Jobs | None = None) -> gr.Blocks:
    """The Blocks app of one server (nothing loads or is written until a page asks for it)."""
    from scalestyle.eval.methods import METHODS
    from scalestyle.transfer import TRANSFER_SAMPLING

    jobs = jobs or Jobs(config)
    base = SamplingConfig()
    model_events: dict[str, Any] = {"concurrency_limit": config.concurrency, "concurrency_id": "model"}
    light_events: dict[str, Any] = {"queue": False}

    with gr.Blocks(title="scalestyle", analytics_enabled=False) as demo:
        gr.Markdown(f"# scalestyle\nmodel: `{config.model or 'demo'}`")
        with gr.Tab("Generate", id="generate"):
            with gr.Row():
                with gr.Column():
                    g_prompt = gr.Textbox(
                        label="prompt", placeholder="a star in neon style", elem_id="gen-prompt"
                    )
                    g_negative = gr.Textbox(label="negative_prompt")
                    g_label = gr.Textbox(label="class_label (class-conditional models: 0-999, e.g. 207, 88)")
                    g_sampling = _sampling_fields(base)
                    g_run = gr.Button("Generate", variant="primary", elem_id="gen-run")
                with gr.Column():
                    g_out = gr.Gallery(label="images", elem_id="gen-out", columns=2, height=320)
                    g_meta = gr.JSON(label="metadata")

            @user_errors
            def on_generate(
                prompt: str,
                negative: str,
                label: str,
                *fields: Any,
                progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's way to ask for a tracker)
            ) -> tuple[list[str], dict[str, Any]]:
                paths = jobs.generate(
                    prompt or None,
                    negative_prompt=negative or None,
                    class_label=label or None,
                    sampling=_sampling(fields, base),
                    progress=_reporter(progress),
                )
                return [str(p) for p in paths], _metadata(paths[0])

            g_run.click(
                on_generate, [g_prompt, g_negative, g_label, *g_sampling], [g_out, g_meta], **model_events
            )

        with gr.Tab("Stylize", id="stylize"):
            with gr.Row():
                with gr.Column():
                    s_style = gr.Image(
                        label="style (reference image)",
                        type="filepath",
                        sources=["upload"],
                        elem_id="sty-style",
                        height=240,
                    )
                    s_text_only = gr.Checkbox(False, label="text_only (no reference: the style in words)")
                    s_prompt = gr.Textbox(label="prompt", placeholder="a house", elem_id="sty-prompt")
                    s_style_prompt = gr.Textbox(label="style_prompt (optional, e.g. 'blueprint style')")
                    s_method = gr.Radio(
                        list(jobs.stylize_methods),
                        value="training-free",
                        label="method",
                        elem_id="sty-method",
                    )
                    with gr.Accordion("advanced (training-free)", open=False):
                        s_ablation = gr.Radio(
                            ["a", "b", "c", "d"],
                            value="d",
                            label="ablation: (a) baseline, (b) +Init, (c) +Init+KSAS, (d) full",
                        )
                        s_key = gr.Textbox("2,3", label="key_steps (KSAS)")
                        s_fine = gr.Textbox(
                            "", label="fine_steps (AQS; empty: the paper's 4-7 the schedule has)"
                        )
                        s_convention = gr.Radio(
                            ["B", "A"],
                            value="B",
                            label="steps_convention (B: upstream's 0-based loop index; A: step 1 = start)",
                        )
                    with gr.Accordion(
                        "advanced (StyleAR)", open=False, visible="stylear" in jobs.stylize_methods
                    ):
                        s_style_scale = gr.Number(
                            StylizeJob.style_scale,
                            label="style_scale (strength of the style tokens; 0: the base model)",
                        )
                        s_noise = gr.Number(
                            StylizeJob.noise_strength, label="noise_strength (noise on the style tokens)"
                        )
                    s_sampling = _sampling_fields(base)
                    s_run = gr.Button("Stylize", variant="primary", elem_id="sty-run")
                with gr.Column():
                    s_out = gr.Image(label="result", type="filepath", elem_id="sty-out", height=320)
                    s_file = gr.File(label="PNG with metadata")
                    s_meta = gr.JSON(label="metadata")

            @user_errors
            def on_stylize(
                style: str | None,
                text_only: bool,
                prompt: str,
                style_prompt: str,
                method: str,
                ablation: str,
                key_steps: str,
                fine_steps: str,
                convention: str,
                style_scale: float | None,
                noise_strength: float | None,
                *fields: Any,
                progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's way to ask for a tracker)
            ) -> tuple[str, str, dict[str, Any]]:
                from scalestyle.images import load_image

                path = jobs.check_upload(style, "--style")
                job = StylizeJob(
                    prompt,
                    load_image(path) if path else None,
                    style_prompt or None,
                    _sampling(fields, base),
                    ablation=ablation,
                    key_steps=parse_int_list(key_steps, "--key-steps") if key_steps.strip() else (),
                    fine_steps=parse_int_list(fine_steps, "--fine-steps") if fine_steps.strip() else None,
                    steps_convention=convention,
                    style_scale=StylizeJob.style_scale if style_scale is None else float(style_scale),
                    noise_strength=(
                        StylizeJob.noise_strength if noise_strength is None else float(noise_strength)
                    ),
                )
                out = jobs.stylize(
                    job,
                    method=method,
                    text_only=text_only,
                    style_file=Path(path).name if path else "",
                    progress=_reporter(progress),
                )
                return str(out), str(out), _metadata(out)

            s_run.click(
                on_stylize,
                [
                    s_style,
                    s_text_only,
                    s_prompt,
                    s_style_prompt,
                    s_method,
                    s_ablation,
                    s_key,
                    s_fine,
                    s_convention,
                    s_style_scale,
                    s_noise,
                    *s_sampling,
                ],
                [s_out, s_file, s_meta],
                **model_events,
            )

        with gr.Tab("Transfer", id="transfer", visible=jobs.transfer_enabled):
            with gr.Row():
                with gr.Column():
                    t_content = gr.Image(
                        label="content", type="filepath", sources=["upload"], height=200, elem_id="tr-content"
                    )
                    t_style = gr.Image(
                        label="style", type="filepath", sources=["upload"], height=200, elem_id="tr-style"
                    )
                    t_strength = gr.Slider(-1, 1, 0, step=0.05, label="strength (shifts every alpha)")
                    t_sampling = _sampling_fields(TRANSFER_SAMPLING, tau=False, aspect=False)
                    t_run = gr.Button("Transfer", variant="primary", elem_id="tr-run")
                with gr.Column():
                    t_out = gr.Image(label="result", type="filepath", height=320, elem_id="tr-out")
                    t_meta = gr.JSON(label="metadata")

            @user_errors
            def on_transfer(
                content: str | None,
                style: str | None,
                strength: float,
                *fields: Any,
                progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's way to ask for a tracker)
            ) -> tuple[str, dict[str, Any]]:
                if content is None or style is None:
                    raise CliError("give both --content and --style images")
                out = jobs.transfer(
                    jobs.check_upload(content, "--content") or content,
                    jobs.check_upload(style, "--style") or style,
                    strength=float(strength),
                    sampling=_sampling(fields, TRANSFER_SAMPLING),
                    progress=_reporter(progress),
                )
                return str(out), _metadata(out)

            t_run.click(
                on_transfer, [t_content, t_style, t_strength, *t_sampling], [t_out, t_meta], **model_events
            )

        with gr.Tab("Gallery", id="gallery") as gallery_tab:
            gal_paths = gr.State([])
            with gr.Row():
                with gr.Column(scale=2):
                    gal_refresh = gr.Button("Refresh", elem_id="gal-refresh")
                    gal = gr.Gallery(label="this server's outputs, newest first", columns=6, elem_id="gal")
                with gr.Column(scale=1):
                    gal_file = gr.File(label="PNG with metadata")
                    gal_meta = gr.JSON(label="metadata")

            def on_gallery() -> tuple[list[tuple[str, str]], list[str]]:
                files = gallery(config.outputs)
                return [(str(p), p.stem) for p in files], [str(p) for p in files]

            def on_pick(paths: list[str], evt: gr.SelectData) -> tuple[str | None, dict[str, Any]]:
                if not 0 <= evt.index < len(paths):
                    return None, {}
                return paths[evt.index], _metadata(paths[evt.index])

            for event in (gal_refresh.click, gallery_tab.select):
                event(on_gallery, None, [gal, gal_paths], **light_events)
            gal.select(on_pick, [gal_paths], [gal_file, gal_meta], **light_events)

        with gr.Tab("Study", id="study"):
            _study_tab(demo, config, jobs, light_events, model_events, sorted(METHODS))

    return demo


def _study_tab(
    demo: gr.Blocks,
    config: UIConfig,
    jobs: Jobs,
    light_events: Mapping[str, Any],
    model_events: Mapping[str, Any],
    method_names: Sequence[str],
) -> None:
    """The rater page and, behind the admin token, results and study making."""
    import tempfile

    # filled by RATER_JS in the page when Start is pressed; hidden, as raters need not see their id
    r_browser = gr.Textbox("", visible=False, elem_id="study-browser")
    current = gr.State({})
    with gr.Row():
        r_study = gr.Dropdown(list_studies(config.studies), label="study", elem_id="study-pick")
        r_name = gr.Textbox(
            label="your name (optional; else this browser is the rater)", elem_id="study-name"
        )
        r_next = gr.Button("Start", variant="primary", elem_id="study-start")
    r_item = gr.Markdown(elem_id="study-item")
    with gr.Row():
        r_ref = gr.Image(label="reference", interactive=False, height=200, elem_id="study-ref")
        slots = [
            gr.Image(label=chr(ord("A") + i), interactive=False, height=200, visible=False)
            for i in range(MAX_STUDY_METHODS)
        ]
    picks = [gr.Radio([], label=question, elem_id=f"study-{c}") for c, question in CRITERIA.items()]
    r_vote = gr.Button("Submit vote", elem_id="study-vote")
    r_status = gr.Markdown(elem_id="study-status")

    def show(study_name: str, rater: str) -> list[Any]:
        study = open_study(config.studies, study_name)
        item = study.next_item(rater)
        if item is None:
            done = f"You have voted on all {len(study)} items of **{study_name}**. Thank you!"
            hidden = [gr.update(visible=False, value=None) for _ in slots]
            return [{}, done, None, *hidden, *(gr.update(choices=[], value=None) for _ in picks)]
        state = {"study": study_name, "item": item.item_id, "rater": rater}
        text = f"**Item {item.position} of {item.total}.** Prompt: *{item.prompt}*"
        images = [
            gr.update(visible=i < len(item.images), value=item.images[i] if i < len(item.images) else None)
            for i in range(len(slots))
        ]
        return [
            state,
            text,
            item.reference,
            *images,
            *(gr.update(choices=list(item.labels), value=None) for _ in picks),
        ]

    outputs = [current, r_item, r_ref, *slots, *picks]

    @user_errors
    def on_start(study_name: str | None, name: str, browser: str, request: gr.Request) -> list[Any]:
        if not study_name:
            raise StudyError("choose a study")
        return show(study_name, rater_id(name, browser, request.session_hash or ""))

    @user_errors
    def on_vote(state: dict[str, Any], *chosen: str | None) -> list[Any]:
        if not state:
            raise StudyError("press Start to get an item first")
        study = open_study(config.studies, state["study"])
        study.vote(state["rater"], state["item"], {c: v for c, v in zip(CRITERIA, chosen, strict=True) if v})
        return ["Vote recorded.", *show(state["study"], state["rater"])]

    r_next.click(on_start, [r_study, r_name, r_browser], outputs, js=RATER_JS, **light_events)
    r_vote.click(on_vote, [current, *picks], [r_status, *outputs], **light_events)

    with gr.Accordion("Organizer (admin token)", open=False, elem_id="admin"):
        a_token = gr.Textbox(label="admin token", type="password", elem_id="admin-token")
        with gr.Row():
            a_study = gr.Dropdown(list_studies(config.studies), label="study", elem_id="admin-study")
            a_show = gr.Button("Results", elem_id="admin-results")
        a_table = gr.Dataframe(
            headers=TALLY_HEADERS, label="share of votes (bootstrap 95% CI)", elem_id="tally"
        )
        a_csv = gr.File(label="CSV")
        gr.Markdown("**New study from an `evaluate` folder** (a folder on this server)")
        with gr.Row():
            e_name = gr.Textbox(label="name", elem_id="new-eval-name")
            e_dir = gr.Textbox(label="evaluate folder", elem_id="new-eval-dir")
            e_methods = gr.Textbox(label="methods (comma-separated; empty: all)")
            e_seed = gr.Number(0, label="seed (rater orders)", precision=0)
            e_make = gr.Button("Make", elem_id="new-eval-make")
        gr.Markdown("**New study from methods** (images made here on the prompt x reference grid)")
        with gr.Row():
            m_name = gr.Textbox(label="name")
            m_prompts = gr.Textbox(label="prompts (one a line)", lines=3)
            m_refs = gr.File(label="references", file_count="multiple", file_types=["image"])
        with gr.Row():
            m_methods = gr.CheckboxGroup(
                list(method_names), value=["d", "prompt-only", "stylealigned"], label="methods"
            )
            m_style_prompt = gr.Textbox(label="style_prompt (optional)")
            m_seed = gr.Number(0, label="seed", precision=0)
            m_make = gr.Button("Make")
        a_status = gr.Markdown(elem_id="admin-status")

    @user_errors
    def on_results(token: str, study_name: str | None) -> tuple[list[list[Any]], str]:
        jobs.require_admin(token)
        if not study_name:
            raise StudyError("choose a study")
        study = open_study(config.studies, study_name)
        folder = Path(tempfile.mkdtemp(prefix="scalestyle-study-"))
        csv_path = folder / f"{study_name}.csv"
        csv_path.write_text(study.csv())
        return tally_rows(study.tally()), str(csv_path)

    def refreshed(made: Study) -> list[Any]:
        names = list_studies(config.studies)
        note = f"Made study **{made.name}**: {len(made)} items, methods {', '.join(made.methods)}."
        return [note, gr.update(choices=names), gr.update(choices=names, value=made.name)]

    @user_errors
    def on_make_eval(token: str, name: str, run_dir: str, methods: str, seed: float | None) -> list[Any]:
        jobs.require_admin(token)
        chosen = [m.strip() for m in methods.split(",") if m.strip()] or None
        return refreshed(jobs.study_from_evaluation(name, run_dir, chosen, seed=int(seed or 0)))

    @user_errors
    def on_make_methods(
        token: str,
        name: str,
        prompts: str,
        refs: list[str] | None,
        methods: list[str],
        style_prompt: str,
        seed: float | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's way to ask for a tracker)
    ) -> list[Any]:
        jobs.require_admin(token)
        made = jobs.study_from_methods(
            name,
            prompts.splitlines(),
            list(refs or []),
            methods,
            style_prompt=style_prompt or None,
            seed=int(seed or 0),
            progress=_reporter(progress),
        )
        return refreshed(made)

    a_show.click(on_results, [a_token, a_study], [a_table, a_csv], **light_events)
    made_outputs = [a_status, r_study, a_study]
    e_make.click(on_make_eval, [a_token, e_name, e_dir, e_methods, e_seed], made_outputs, **light_events)
    m_make.click(
        on_make_methods,
        [a_token, m_name, m_prompts, m_refs, m_methods, m_style_prompt, m_seed],
        made_outputs,
        **model_events,
    )

    def on_load() -> tuple[Any, Any]:
        names = list_studies(config.studies)
        return gr.update(choices=names), gr.update(choices=names)

    demo.load(on_load, None, [r_study, a_study], **light_events)


def serve(config: UIConfig, *, block: bool = True) -> gr.Blocks:
    """Build the app and serve it on ``config.host:config.port`` (``block`` False returns at once, the
    server running in a thread). The output and study folders are made here."""
    config.outputs.mkdir(parents=True, exist_ok=True)
    config.studies.mkdir(parents=True, exist_ok=True)
    demo = build_app(config)
    demo.queue(default_concurrency_limit=config.concurrency, max_size=config.queue_size)
    # system fonts: the default theme's web fonts would be fetched from the internet by every page
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["monospace"])
    demo.launch(
        server_name=config.host,
        server_port=config.port,
        max_file_size=config.max_upload_bytes,
        allowed_paths=[str(config.outputs.resolve())],
        prevent_thread_lock=not block,
        share=False,
        ssr_mode=False,
        theme=theme,
        quiet=True,
    )
    return demo
