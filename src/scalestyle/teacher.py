"""Teacher sets for subject adapters (proxy-tuning, arXiv 2503.10125; `scalestyle teacher`): images of one
subject in many prompts, written as a captioned folder that `scalestyle train subject` reads.

Two teachers:

- :func:`world_teacher` (the demo): the procedural world renders a subject the demo model never saw
  (:data:`scalestyle.data.procedural.SUBJECTS`) in the given styles, the subject's true masks beside
  the images, and renders of its class content in the same styles as prior-preservation images. It is
  an oracle teacher: its shapes are exact.
- :func:`diffusers_teacher`: a diffusers text-to-image pipeline (the optional ``[teacher]`` extra) draws
  each prompt with the subject given as IP-Adapter image prompts (``method="ip-adapter"``, from a base
  model) or by its DreamBooth identifier (``method="dreambooth"``, a pipeline the user fine-tuned on the
  subject). Weights are read from local files or the Hugging Face cache only (``download`` opts in), so a
  machine without them gets one line saying what is missing, never a download it did not ask for.

Captions in a teacher folder's ``metadata.jsonl`` write the subject as ``{subject}``
(:data:`scalestyle.models.subject.SUBJECT_PLACEHOLDER`); the trainer fills in ``"<token> <class word>"``.
A prompts file holds one prompt a line, with ``{subject}`` where the subject goes (a line without it
gets ``"a photo of {subject}, "`` in front).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from scalestyle.data import procedural as world
from scalestyle.models.subject import SUBJECT_PLACEHOLDER

TeacherMethod = Literal["ip-adapter", "dreambooth"]
TEACHER_METHODS: tuple[str, ...] = ("ip-adapter", "dreambooth")
DEFAULT_TEACHER_STYLES: tuple[str, ...] = ("plain", "neon", "pop art", "8bit", "sepia", "blueprint")
"""The styles a demo teacher set shows (6 of the 20 training styles); the other 14 are the unseen ones."""
IMAGES_DIR = "images"
CLASS_DIR = "class"
MASKS_DIR = "masks"
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
IP_ADAPTER = "h94/IP-Adapter"
IP_ADAPTER_WEIGHTS = "ip-adapter_sd15.bin"


def _write_metadata(folder: Path, rows: Sequence[dict[str, str]]) -> None:
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _fresh(folder: Path) -> Path:
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists and is not empty; choose a new --out")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def read_prompts(path: str | Path) -> list[str]:
    """One prompt a line (blank lines skipped), each with ``{subject}`` where the subject goes."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--prompts {file}: no such file")
    prompts = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"--prompts {file} holds no prompt")
    return [p if SUBJECT_PLACEHOLDER in p else f"a photo of {SUBJECT_PLACEHOLDER}, {p}" for p in prompts]


@dataclass(frozen=True)
class WorldTeacherConfig:
    """``per_style`` subject images of each style (training seeds), and as many class images."""

    subject: str
    styles: tuple[str, ...] = DEFAULT_TEACHER_STYLES
    per_style: int = 8
    class_per_style: int = 8
    size: int = 64
    seed_offset: int = 0

    def __post_init__(self) -> None:
        if self.subject not in world.SUBJECTS:
            raise ValueError(f"subject must be one of {list(world.SUBJECTS)}, got {self.subject!r}")
        bad = [s for s in self.styles if s not in world.TRAIN_STYLES]
        if bad or not self.styles:
            raise ValueError(
                f"styles must be training styles of the world (not held out), got {list(self.styles)}"
            )
        if not 1 <= self.per_style <= 10_000:
            raise ValueError(f"per_style must be in [1, 10000], got {self.per_style}")
        if not 0 <= self.class_per_style <= 10_000:
            raise ValueError(f"class_per_style must be in [0, 10000], got {self.class_per_style}")
        if not world.MIN_SIZE <= self.size <= world.MAX_SIZE:
            raise ValueError(f"size must be in [{world.MIN_SIZE}, {world.MAX_SIZE}], got {self.size}")
        if not 0 <= self.seed_offset < 100_000_000:
            raise ValueError(f"seed_offset must be in [0, 100000000), got {self.seed_offset}")


def world_teacher(cfg: WorldTeacherConfig, out_dir: str | Path) -> Path:
    """``out/images`` (the subject, captions ``"a {subject} in <style> style"``), ``out/masks`` (its true
    masks, same names) and ``out/class`` (the class content, captions ``"a star in <style> style"``)."""
    out = _fresh(Path(out_dir))
    images, masks, classes = (out / d for d in (IMAGES_DIR, MASKS_DIR, CLASS_DIR))
    for d in (images, masks, classes):
        d.mkdir()
    seeds = world.SPLIT_SEEDS["train"]
    cls = world.SUBJECT_CLASSES[cfg.subject]
    rows, class_rows = [], []
    for s, style in enumerate(cfg.styles):
        for i in range(cfg.per_style):
            seed = seeds[cfg.seed_offset + s * cfg.per_style + i]
            sample = world.render_subject(cfg.subject, style, seed, cfg.size)
            name = f"{style.replace(' ', '_')}_{i:03d}.png"
            sample.image.save(images / name)
            Image.fromarray(sample.mask.astype(np.uint8) * 255).save(masks / name)
            rows.append(
                {"file_name": name, "text": f"a {SUBJECT_PLACEHOLDER} in {world.style_caption(style)}"}
            )
        for i in range(cfg.class_per_style):
            # seeds past the subject's: a class image never shares a pose with a subject image
            seed = seeds[cfg.seed_offset + 50_000_000 + s * cfg.class_per_style + i]
            sample = world.render(cls, style, seed, cfg.size)
            name = f"{style.replace(' ', '_')}_{i:03d}.png"
            sample.image.save(classes / name)
            class_rows.append({"file_name": name, "text": sample.caption})
    _write_metadata(images, rows)
    if class_rows:
        _write_metadata(classes, class_rows)
    else:
        classes.rmdir()
    (out / "teacher.json").write_text(json.dumps({"teacher": "world", "config": _jsonable(cfg)}, indent=2))
    return out


def _jsonable(cfg: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


@dataclass(frozen=True)
class DiffusersTeacherConfig:
    """A diffusers teacher: ``base`` (hub id or folder of a text-to-image pipeline; for ``dreambooth`` the
    user's fine-tuned one, whose prompts name the subject by ``token``), the IP-Adapter repository and
    weight file, ``per_prompt`` images of each prompt at ``size`` px."""

    class_word: str
    method: TeacherMethod = "ip-adapter"
    base: str = SD15
    token: str = "sks"
    ip_adapter: str = IP_ADAPTER
    ip_adapter_weights: str = IP_ADAPTER_WEIGHTS
    ip_adapter_scale: float = 0.6
    per_prompt: int = 4
    steps: int = 30
    guidance: float = 7.5
    size: int = 512
    seed: int = 0
    download: bool = False
    device: str | None = None

    def __post_init__(self) -> None:
        if self.method not in TEACHER_METHODS:
            raise ValueError(f"method must be one of {TEACHER_METHODS}, got {self.method!r}")
        if not self.class_word.strip():
            raise ValueError(f"class_word must be non-empty text, got {self.class_word!r}")
        if not 0 <= self.ip_adapter_scale <= 2:
            raise ValueError(f"ip_adapter_scale must be in [0, 2], got {self.ip_adapter_scale}")
        for name, value, low, high in (
            ("per_prompt", self.per_prompt, 1, 1000),
            ("steps", self.steps, 1, 1000),
            ("size", self.size, 64, 2048),
        ):
            if not low <= value <= high:
                raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
        if self.size % 8:
            raise ValueError(f"size must be a multiple of 8, got {self.size}")
        if not 1 <= self.guidance <= 30:
            raise ValueError(f"guidance must be in [1, 30], got {self.guidance}")


def _load_diffusers_pipeline(cfg: DiffusersTeacherConfig) -> Any:
    try:
        import diffusers
    except ImportError:
        raise ValueError(
            "the diffusers teacher needs the optional extra: pip install 'scalestyle[teacher]'"
        ) from None
    import torch

    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    local = not cfg.download
    try:
        pipe = diffusers.AutoPipelineForText2Image.from_pretrained(
            cfg.base, torch_dtype=dtype, local_files_only=local
        )
        if cfg.method == "ip-adapter":
            pipe.load_ip_adapter(
                cfg.ip_adapter, subfolder="models", weight_name=cfg.ip_adapter_weights, local_files_only=local
            )
            pipe.set_ip_adapter_scale(cfg.ip_adapter_scale)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        hint = "" if cfg.download else " (looked in local files and the cache only; --download fetches them)"
        raise ValueError(f"no teacher weights for {cfg.base!r}{hint}: {first}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def diffusers_teacher(
    cfg: DiffusersTeacherConfig,
    prompts: Sequence[str],
    out_dir: str | Path,
    *,
    subject_images: Sequence[Image.Image] = (),
    pipeline: Any = None,
) -> Path:
    """``out/images``: ``per_prompt`` images of every prompt, captioned with ``{subject}`` kept in. The
    teacher reads each prompt with the subject as ``"<class word>"`` (IP-Adapter: the subject images carry
    its look) or ``"<token> <class word>"`` (DreamBooth). ``pipeline``: an already loaded one (tests)."""
    if cfg.method == "ip-adapter" and not subject_images:
        raise ValueError("the ip-adapter teacher needs subject images (--subject-images DIR)")
    if not prompts or any(SUBJECT_PLACEHOLDER not in p for p in prompts):
        raise ValueError(f"every teacher prompt must hold {SUBJECT_PLACEHOLDER} where the subject goes")
    pipe = pipeline if pipeline is not None else _load_diffusers_pipeline(cfg)
    import torch

    out = _fresh(Path(out_dir))
    images = out / IMAGES_DIR
    images.mkdir()
    named = cfg.class_word if cfg.method == "ip-adapter" else f"{cfg.token} {cfg.class_word}"
    refs = [im.convert("RGB") for im in subject_images]
    rows = []
    for p, prompt in enumerate(prompts):
        for i in range(cfg.per_prompt):
            generator = torch.Generator("cpu").manual_seed(cfg.seed * 1_000_003 + p * 1000 + i)
            kwargs: dict[str, Any] = {}
            if cfg.method == "ip-adapter":
                # one subject image per call, cycled: the set then shows every view the user gave
                kwargs["ip_adapter_image"] = refs[(p * cfg.per_prompt + i) % len(refs)]
            result = pipe(
                prompt.replace(SUBJECT_PLACEHOLDER, named),
                num_inference_steps=cfg.steps,
                guidance_scale=cfg.guidance,
                height=cfg.size,
                width=cfg.size,
                generator=generator,
                **kwargs,
            )
            name = f"p{p:03d}_{i:02d}.png"
            result.images[0].save(images / name)
            rows.append({"file_name": name, "text": prompt})
    _write_metadata(images, rows)
    meta = {"teacher": f"diffusers {cfg.method}", "config": _jsonable(cfg), "prompts": list(prompts)}
    (out / "teacher.json").write_text(json.dumps(meta, indent=2))
    return out
