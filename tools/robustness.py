"""Each bad input of issue 13 through the real command line, in a temporary folder: the exit status, what
it printed, its peak memory, and whether anything was lost. Rerun with `python tools/robustness.py`; it
rewrites the table in docs/robustness.md (between the markers) and prints it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "robustness.md"
BEGIN, END = "<!-- robustness:begin -->", "<!-- robustness:end -->"

# runs the CLI and reports the child's peak memory on a last stderr line: VmHWM, which starts afresh at
# exec (ru_maxrss would carry this script's own high-water mark into every child)
WRAP = """
import sys
from scalestyle.cli import main
code = main(sys.argv[1:])
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
sys.stderr.write(f"\\n@peak_mb={int(hwm.split()[1]) / 1024:.0f}\\n")
raise SystemExit(code)
"""


@dataclass
class Result:
    code: int
    lines: list[str]
    peak_mb: int
    seconds: float


def cli(*argv: str | Path, env: dict[str, str] | None = None) -> Result:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", WRAP, *map(str, argv)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **(env or {})},
        cwd=ROOT,
        timeout=900,
    )
    seconds = time.perf_counter() - start
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    peak = next((int(line.split("=")[1]) for line in lines if line.startswith("@peak_mb=")), -1)
    shown = [line for line in lines if not line.startswith("@peak_mb=")]
    return Result(proc.returncode, shown, peak, seconds)


def ref_image(path: Path, seed: int = 0, size: int = 96) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


Case = Callable[[Path], tuple[str, Result, str]]
CASES: list[tuple[str, Case]] = []


def case(name: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        CASES.append((name, fn))
        return fn

    return register


STYLE = ["stylize", "--quiet", "--prompt", "a star"]


@case("`stylize --out-dir` rerun with another style prompt")
def _stale(tmp: Path) -> tuple[str, Result, str]:
    ref, out = ref_image(tmp / "r.png"), tmp / "out"
    cli(*STYLE, "--style", ref, "--style-prompt", "neon style", "--out-dir", out)
    before = snapshot(out)
    r = cli(*STYLE, "--style", ref, "--style-prompt", "blueprint style", "--out-dir", out)
    return "--style-prompt 'blueprint style' over 'neon style'", r, _same(before, snapshot(out))


@case("`stylize --out-dir` rerun with another cfg")
def _stale_cfg(tmp: Path) -> tuple[str, Result, str]:
    ref, out = ref_image(tmp / "r.png"), tmp / "out"
    cli(*STYLE, "--style", ref, "--out-dir", out)
    before = snapshot(out)
    r = cli(*STYLE, "--style", ref, "--cfg", "2", "--out-dir", out)
    return "--cfg 2 over 3", r, _same(before, snapshot(out))


@case("colliding names: prompts differing in case/punctuation/after 48 chars, same-named styles")
def _collide(tmp: Path) -> tuple[str, Result, str]:
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    refs = [ref_image(tmp / "a" / "ref.png", 0), ref_image(tmp / "b" / "ref.png", 1)]
    long = "a star in neon style " * 3  # 63 characters, then the two prompts differ
    prompts = tmp / "p.txt"
    prompts.write_text(f"A star!\na star\n{long}heart\n{long}fish\n")
    out = tmp / "out"
    r = cli(
        "stylize", "--quiet", "--style", refs[0], "--style", refs[1], "--prompts", prompts, "--out-dir", out
    )
    pngs = list(out.glob("*.png"))
    rows = (out / "manifest.jsonl").read_text().splitlines()
    return (
        "2 folders x ref.png, 4 prompts",
        r,
        f"yes: {len(pngs)} files for 8 jobs, {len(rows)} manifest rows",
    )


@case("`.NAME.PID.tmp` left by a SIGKILL")
def _tmp(tmp: Path) -> tuple[str, Result, str]:
    out = tmp / "out"
    out.mkdir()
    left = out / ".text__a-star.png.999999999.tmp"
    left.write_bytes(b"partial")
    r = cli(*STYLE, "--style", ref_image(tmp / "r.png"), "--out-dir", out)
    return "next run in the same folder", r, "yes: removed" if not left.exists() else "NO: still there"


@case("two `evaluate` runs on one folder")
def _lock(tmp: Path) -> tuple[str, Result, str]:
    from scalestyle.records import folder_lock

    out = tmp / "run"
    argv = ["evaluate", "--protocol", "procedural", "--methods", "plain", "--contents", "star"]
    argv += ["--styles", "crayon", "--out", str(out), "--quiet"]
    with folder_lock(out):  # the first run, holding the folder
        r = cli(*argv)
    rows = out / "rows.jsonl"
    return (
        "the second while the first holds the folder",
        r,
        "yes: no row written" if not rows.exists() else "NO",
    )


@case("`--out` with `--out-dir`")
def _both(tmp: Path) -> tuple[str, Result, str]:
    r = cli(*STYLE, "--style", ref_image(tmp / "r.png"), "--out", tmp / "o.png", "--out-dir", tmp / "d")
    return "both given", r, _nothing(tmp, {"r.png"})


@case("existing `--out` file")
def _exists(tmp: Path) -> tuple[str, Result, str]:
    out = ref_image(tmp / "o.png", 5)
    before = out.read_bytes()
    r = cli("generate", "--quiet", "--prompt", "a star", "--out", out)
    return "without --overwrite", r, "yes: file unchanged" if out.read_bytes() == before else "NO"


@case("`--out` naming an existing folder")
def _out_folder(tmp: Path) -> tuple[str, Result, str]:
    (tmp / "f").mkdir()
    r = cli("generate", "--quiet", "--prompt", "a star", "--out", tmp / "f")
    return "--out f/", r, "yes: f/ still empty" if not any((tmp / "f").iterdir()) else "NO"


@case("`--out-dir` naming a file")
def _outdir_file(tmp: Path) -> tuple[str, Result, str]:
    ref = ref_image(tmp / "r.png")
    before = ref.read_bytes()
    r = cli(*STYLE, "--style", ref, "--out-dir", ref)
    return "--out-dir r.png", r, "yes: file unchanged" if ref.read_bytes() == before else "NO"


@case("read-only `--out-dir`")
def _readonly(tmp: Path) -> tuple[str, Result, str]:
    folder = tmp / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root writes through permission bits: a read-only filesystem refuses everyone
        folder = Path("/sys/kernel")
    r = cli(*STYLE, "--style", ref_image(tmp / "r.png"), "--out-dir", folder / "out")
    return f"--out-dir {folder}/out", r, "yes: nothing written"


@case("`--device cuda` without CUDA")
def _cuda(tmp: Path) -> tuple[str, Result, str]:
    if torch.cuda.is_available():
        return "this machine has CUDA: not run", Result(0, ["(skipped)"], -1, 0.0), "-"
    r = cli("generate", "--quiet", "--prompt", "a star", "--out", tmp / "o.png", "--device", "cuda")
    return "--device cuda", r, _nothing(tmp, set())


@case("bogus device name")
def _bogus(tmp: Path) -> tuple[str, Result, str]:
    r = cli("generate", "--quiet", "--prompt", "a star", "--out", tmp / "o.png", "--device", "gpu7")
    return "--device gpu7", r, _nothing(tmp, set())


@case("malicious pickle in `text_encoder/pytorch_model.bin`")
def _pickle(tmp: Path) -> tuple[str, Result, str]:
    from scalestyle.pipeline import bundled_demo_dir

    folder = tmp / "model"
    shutil.copytree(bundled_demo_dir(), folder)
    (folder / "text_encoder" / "model.safetensors").unlink()
    marker = tmp / "pwned"
    (tmp / "make.py").write_text(
        "import os, sys, torch\n"
        "class P:\n"
        f"    def __reduce__(self): return (os.system, ('touch {marker}',))\n"
        "torch.save({'shared.weight': P()}, sys.argv[1])\n"
    )
    subprocess.run(
        [sys.executable, tmp / "make.py", folder / "text_encoder" / "pytorch_model.bin"], check=True
    )
    r = cli("generate", "--quiet", "--model", folder, "--prompt", "a star", "--out", tmp / "o.png")
    ran = "NO: the payload ran" if marker.exists() else "yes: the payload never ran"
    advice = " (suggests weights_only=False!)" if any("weights_only=False" in x for x in r.lines) else ""
    return "os.system payload", r, ran + advice


@case("`bench --batch 0`")
def _batch0(tmp: Path) -> tuple[str, Result, str]:
    return "--batch 0", cli("bench", "--model", "tiny", "--random-weights", "--batch", "0"), "-"


@case("numeric flags before the model loads")
def _numbers(tmp: Path) -> tuple[str, Result, str]:
    r = cli(
        "generate", "--model", tmp / "absent", "--prompt", "a star", "--out", tmp / "o.png", "--seed", "-1"
    )
    return "--seed -1 with a missing model folder", r, "yes: the flag is named, not the model"


@case("numeric flags before the model loads ")
def _numbers2(tmp: Path) -> tuple[str, Result, str]:
    r = cli(
        "generate", "--model", tmp / "absent", "--prompt", "a star", "--out", tmp / "o.png", "--aspect", "9:1"
    )
    return "--aspect 9:1 with a missing model folder", r, "yes: the flag is named, not the model"


@case("duplicate `--fine-steps`")
def _dup(tmp: Path) -> tuple[str, Result, str]:
    return "--fine-steps 4,5,4", cli(*STYLE, "--text-only", "--fine-steps", "4,5,4"), "-"


@case("empty `--key-steps`")
def _empty(tmp: Path) -> tuple[str, Result, str]:
    return "--key-steps ''", cli(*STYLE, "--text-only", "--key-steps", ""), "-"


@case("`--key-steps 2-3` (a range)")
def _range(tmp: Path) -> tuple[str, Result, str]:
    r = cli(*STYLE, "--style", ref_image(tmp / "r.png"), "--key-steps", "2-3", "--out", tmp / "o.png")
    return "--key-steps 2-3", r, "yes: written" if (tmp / "o.png").is_file() else "NO"


def _big_config(tmp: Path, width: int) -> Path:
    from scalestyle.pipeline import bundled_demo_dir

    folder = tmp / "model"
    shutil.copytree(bundled_demo_dir(), folder)
    config = json.loads((folder / "config.json").read_text())
    config["transformer"]["width"] = width
    config["transformer"]["heads"] = width // 64
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@case("model config asking for width 16384")
def _wide(tmp: Path) -> tuple[str, Result, str]:
    folder = _big_config(tmp, 16384)
    r = cli("generate", "--quiet", "--model", folder, "--prompt", "a star", "--out", tmp / "o.png")
    return "config.json width 16384 (demo weights)", r, "-"


@case("tiny files with the official 2B names")
def _fake_official(tmp: Path) -> tuple[str, Result, str]:
    folder = tmp / "fake2b"
    folder.mkdir()
    torch.save({"head.weight": torch.zeros(2, 2)}, folder / "infinity_2b_reg.pth")
    torch.save({"vae": {"x": torch.zeros(1)}}, folder / "infinity_vae_d32reg.pth")
    r = cli("generate", "--quiet", "--model", folder, "--prompt", "a star", "--out", tmp / "o.png")
    return "infinity_2b_reg.pth + infinity_vae_d32reg.pth of a few bytes", r, "-"


@case("62-megapixel style image")
def _huge(tmp: Path) -> tuple[str, Result, str]:
    h, w = 6400, 9700
    # made in a child process: this script's memory stays small
    make = (
        "import numpy as np, sys\nfrom PIL import Image\n"
        f"ramp = np.linspace(0, 255, {w}, dtype=np.float32)[None, :, None]\n"
        f"rgb = np.broadcast_to(ramp, ({h}, {w}, 3)).astype(np.uint8)\n"
        "Image.fromarray(rgb).save(sys.argv[1], quality=80)\n"
    )
    subprocess.run([sys.executable, "-c", make, tmp / "huge.jpg"], check=True)
    r = cli(*STYLE, "--style", tmp / "huge.jpg", "--out", tmp / "o.png")
    return f"{w}x{h} JPEG ({w * h / 1e6:.0f} MP)", r, "yes: written" if (tmp / "o.png").is_file() else "NO"


@case("unknown words in a demo prompt")
def _unknown(tmp: Path) -> tuple[str, Result, str]:
    r = cli("generate", "--quiet", "--prompt", "a zebra star in neon style", "--out", tmp / "o.png")
    return "'a zebra star in neon style'", r, "yes: the dropped word is named"


@case("demo prompt past the 32-token limit")
def _long(tmp: Path) -> tuple[str, Result, str]:
    r = cli("generate", "--quiet", "--prompt", "a star in neon style " * 8, "--out", tmp / "o.png")
    return "40 words", r, "yes: the cut words are named"


@case("`StylePipeline(prompt, 'ref.png')` with a path")
def _path(tmp: Path) -> tuple[str, Result, str]:
    ref = ref_image(tmp / "r.png")
    code = (
        "from scalestyle.method.style import StylePipeline\nfrom scalestyle.pipeline import Pipeline\n"
        f"out = StylePipeline(Pipeline.load())('a star', {str(ref)!r}, style_prompt='neon style')\n"
        "import sys; sys.stderr.write(f'{out.images[0].size}\\n')\n"
    )
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    return "Python API", Result(proc.returncode, lines[-1:], -1, time.perf_counter() - start), "-"


@case("`stylize` without `--style-prompt`")
def _no_style_prompt(tmp: Path) -> tuple[str, Result, str]:
    r = cli(*STYLE, "--style", ref_image(tmp / "r.png"), "--out", tmp / "o.png")
    return "--style r.png only", r, "yes: written" if (tmp / "o.png").is_file() else "NO"


@case("`download` offline")
def _offline(tmp: Path) -> tuple[str, Result, str]:
    home = tmp / "home"
    r = cli("download", "infinity-2b", env={"SCALESTYLE_HOME": str(home), "HF_HUB_OFFLINE": "1"})
    left = sorted(p.name for p in home.iterdir()) if home.is_dir() else []
    return "HF_HUB_OFFLINE=1", r, "yes: no model folder left" if not left else f"NO: {left} left"


@case("`--help` of every subcommand")
def _help(tmp: Path) -> tuple[str, Result, str]:
    import argparse

    from scalestyle.cli import build_parser

    missing = []
    root = build_parser()
    subs = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction)).choices
    parsers = list(subs.values())
    for p in list(parsers):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                parsers += list(a.choices.values())
    flags = 0
    for p in parsers:
        for a in p._actions:
            if a.option_strings and not isinstance(a, argparse._HelpAction):
                flags += 1
                if not a.help:
                    missing.append(f"{p.prog} {a.option_strings[0]}")
    line = f"{flags} flags in {len(parsers)} subcommands, {len(missing)} without help"
    return "all flags", Result(0, [line], -1, 0.0), "-"


def _same(before: dict[str, bytes], after: dict[str, bytes]) -> str:
    images = [k for k in before if k.endswith(".png")]
    same = all(after.get(k) == before[k] for k in images)
    return f"yes: {len(images)} image(s) unchanged" if same else "NO: images changed"


def _nothing(tmp: Path, allowed: set[str]) -> str:
    extra = sorted(p.name for p in tmp.iterdir() if p.name not in allowed)
    return "yes: nothing written" if not extra else f"NO: {extra}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main() -> None:
    rows = []
    for name, fn in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                given, r, lost = fn(Path(tmp))
            finally:
                ro = Path(tmp) / "ro"
                if ro.exists():
                    ro.chmod(0o755)
            # the temporary folder's name changes every run: the table shows it as $TMP
            printed = (" / ".join(r.lines[-2:]) if r.lines else "(nothing)").replace(tmp, "$TMP")
            given = given.replace(tmp, "$TMP")
        peak = f"{r.peak_mb} MB" if r.peak_mb >= 0 else "-"
        cells = [
            name.strip(),
            _cell(given),
            str(r.code),
            f"`{_cell(printed)}`",
            f"{peak}, {r.seconds:.1f} s",
            lost,
        ]
        rows.append("| " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    table = "\n".join(
        [
            "| input | given | exit | printed (last lines of stderr) | peak memory, time | nothing lost |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )
    text = DOC.read_text() if DOC.is_file() else f"# Robustness\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


if __name__ == "__main__":
    main()
