from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from scalestyle.analysis import (
    PromptPair,
    QKVInjection,
    QKVInjectionConfig,
    StepInjectionConfig,
    experiments,
    generate_qkv_injection,
    generate_step_injection,
    injected_path,
    injection,
    read_pairs,
    run_qkv_injection,
    run_step_injection,
    scale_of,
    step_of,
    world_content_pairs,
    world_labels,
    world_style_pairs,
)
from scalestyle.analysis.injection import cross_swap, scales_label
from scalestyle.analysis.plots import Bars, HLine, Series, bar_plot, image_grid, line_plot, nice_ticks
from scalestyle.analysis.records import RowLog
from scalestyle.analysis.scorers import classifier_scorer, clip_scorer, score_all
from scalestyle.attention import AttendFn, AttnSite, BatchLayout, bf16_rounded_attend, sdpa
from scalestyle.cli import main
from scalestyle.config import SamplingConfig, parse_int_list
from scalestyle.data import procedural as world
from scalestyle.eval.classifier import WorldClassifier
from scalestyle.method.rules import From, Rule, RuleController
from scalestyle.pipeline import Pipeline
from scalestyle.sampling import ScaleEvent

A, B = "a star in neon style", "a cat in blueprint style"  # words the tiny text encoder knows
T = torch.Tensor
NO_CFG = SamplingConfig(cfg=1.0)  # half the rows: the tests stay fast


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # batches of 4+ rows cross torch's threading threshold; on a small shared CPU the threads then wait
    # on each other (0.04 s becomes 3 s per run), so these tiny runs keep to one thread
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pipe(tiny_model_dir: Path) -> Pipeline:
    return Pipeline.load(tiny_model_dir, device="cpu")


def plain_bits(pipe: Pipeline, prompt: str, sampling: SamplingConfig) -> list[torch.Tensor]:
    events: list[ScaleEvent] = []
    pipe(prompt, sampling=sampling, on_scale=events.append)
    return [e.tokens["gen"] for e in events]


def fake_scorer(images: list[Image.Image], texts: list[str]) -> list[float]:
    """Mean brightness, shifted by the text's length so that scores against A and B differ."""
    return [float(np.asarray(im).mean()) / 255 + len(t) / 100 for im, t in zip(images, texts, strict=True)]


# ---- the injections themselves ---------------------------------------------------------------------------


def test_without_injection_paths_a_and_b_are_plain_generation_bit_identically(pipe: Pipeline) -> None:
    s = SamplingConfig(seed=3)  # with CFG: the uncond rows of both paths in one batch
    for mode in ("cross", "handoff"):
        out = generate_step_injection(pipe, A, B, [], sampling=s, mode=mode)  # type: ignore[arg-type]
        assert torch.equal(out["a"], pipe(A, sampling=SamplingConfig(seed=3)).summed_codes_BdHW)
        assert torch.equal(out["b"], pipe(B, sampling=SamplingConfig(seed=3)).summed_codes_BdHW)


def test_cross_swap_happens_only_at_scale_s_and_only_in_the_injected_rows(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[AttnSite, T, T, T, T | None, T, AttendFn]] = []

    class Recording(RuleController):
        def __call__(self, site: AttnSite, q: T, k: T, v: T, bias: T | None, attend: AttendFn) -> T:
            o = super().__call__(site, q, k, v, bias, attend)
            calls.append((site, q, k, v, bias, o, attend))
            return o

    monkeypatch.setattr(injection, "RuleController", Recording)
    s = 2
    # B shorter than A: keys are padded to A's length and B's mask must hide the padding; the CFG rows
    # (the learned empty caption cut to each prompt's length) differ too
    generate_step_injection(pipe, A, "a neon cat", [s], sampling=SamplingConfig(seed=1), mode="cross")
    swapped = 0
    for site, q, k, v, bias, o, attend in calls:
        identity = attend(q, k, v, bias)
        if site.kind != "cross" or site.scale != s:
            assert torch.equal(o, identity), site
            continue
        layout = site.layout
        assert layout.cfg and layout.paths == ("a", "b", injected_path(s)) and bias is not None
        for path, uncond, rows in layout.groups():
            if path != injected_path(s):
                assert torch.equal(o[rows], identity[rows])
                continue
            src = layout.rows("b", uncond=uncond)
            assert torch.equal(o[rows], attend(q[rows], k[src], v[src], bias[src]))
            assert not torch.equal(o[rows], identity[rows])
            swapped += 1
    assert swapped == 2 * pipe.transformer.cfg.depth  # cond and CFG rows, every layer, once


def test_bits_before_s_are_plain_a_and_the_injection_changes_the_rest(pipe: Pipeline) -> None:
    s = 2
    plain = plain_bits(pipe, A, NO_CFG)
    for mode in ("cross", "handoff"):
        events: list[ScaleEvent] = []
        generate_step_injection(pipe, A, B, [s], sampling=NO_CFG, mode=mode, on_scale=events.append)  # type: ignore[arg-type]
        got = [e.tokens[injected_path(s)] for e in events if injected_path(s) in e.tokens]
        assert len(got) == len(plain)
        for si in range(s):
            assert torch.equal(got[si], plain[si]), (mode, si)
        assert any(not torch.equal(got[si], plain[si]) for si in range(s, len(plain))), mode


def test_handoff_draws_step_s_from_b_given_a_history(pipe: Pipeline) -> None:
    events: list[ScaleEvent] = []
    out = generate_step_injection(
        pipe,
        A,
        B,
        [1, 3],
        sampling=NO_CFG,
        mode="handoff",
        include_a=False,
        include_b=False,
        on_scale=events.append,
    )
    assert set(out) == {injected_path(1), injected_path(3)}
    plain = plain_bits(pipe, A, NO_CFG)
    for s, probe_scales in ((1, 2), (3, 7)):  # a probe stops after its draw, the last one keeps the run going
        probe = [e.tokens[f"b@{s}"] for e in events if f"b@{s}" in e.tokens]
        inj = [e.tokens[injected_path(s)] for e in events if injected_path(s) in e.tokens]
        assert len(probe) == probe_scales
        assert all(torch.equal(probe[i], plain[i]) for i in range(s))  # given A's bits
        assert torch.equal(inj[s], probe[s])  # A continues from B's draw
        assert all(torch.equal(inj[i], plain[i]) for i in range(s))


def test_qkv_injection_replaces_exactly_its_component(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    records: list[tuple[AttnSite, T, T, T, list[tuple[T, T, T]]]] = []

    class Recording(RuleController):
        def __call__(self, site: AttnSite, q: T, k: T, v: T, bias: T | None, attend: AttendFn) -> T:
            seen: list[tuple[T, T, T]] = []

            def spy(q2: T, k2: T, v2: T, b2: T | None) -> T:
                seen.append((q2, k2, v2))
                return attend(q2, k2, v2, b2)

            o = super().__call__(site, q, k, v, bias, spy)
            records.append((site, q, k, v, seen))
            return o

    monkeypatch.setattr(injection, "RuleController", Recording)
    scales = frozenset({1, 2})
    injs = [QKVInjection(c, scales) for c in ("q", "k", "v")]  # type: ignore[arg-type]
    generate_qkv_injection(pipe, A, B, injs, sampling=NO_CFG)
    checked = 0
    for site, q, k, v, seen in records:
        if site.kind != "self" or site.scale not in scales:
            assert len(seen) == 1  # the plain kernel call only
            continue
        assert len(seen) == 4  # the whole batch, then one call per injected path
        b = site.layout.rows("b")
        for inj, (q2, k2, v2) in zip(injs, seen[1:], strict=True):
            own = site.layout.rows(inj.path)
            want = {
                c: (t[b] if c == inj.component else t[own]) for c, t in zip("qkv", (q, k, v), strict=True)
            }
            assert torch.equal(q2, want["q"]) and torch.equal(k2, want["k"]) and torch.equal(v2, want["v"])
            checked += 1
    assert checked == 3 * 2 * pipe.transformer.cfg.depth


def test_qkv_paths_a_and_b_are_plain_and_injections_change_the_image(pipe: Pipeline) -> None:
    s = SamplingConfig(seed=2)
    injs = [QKVInjection(c, frozenset(range(7))) for c in ("q", "v")]  # type: ignore[arg-type]
    out = generate_qkv_injection(pipe, A, B, injs, sampling=s)
    assert torch.equal(out["a"], pipe(A, sampling=SamplingConfig(seed=2)).summed_codes_BdHW)
    assert torch.equal(out["b"], pipe(B, sampling=SamplingConfig(seed=2)).summed_codes_BdHW)
    assert all(not torch.equal(out[i.path], out["a"]) for i in injs)


def test_cross_swap_rule_checks_and_pruning() -> None:
    with pytest.raises(ValueError, match="two different paths"):
        cross_swap(frozenset({1}), "a", "a")
    with pytest.raises(ValueError, match="scales must be >= 0"):
        cross_swap(frozenset({-1}), "a@0", "b")
    with pytest.raises(ValueError, match="rewrite path"):
        RuleController([cross_swap(frozenset({1, 2}), "x", "b"), cross_swap(frozenset({2}), "x", "c")])
    with pytest.raises(ValueError, match="whole from the same paths"):
        Rule(frozenset({1}), "x", From("x"), (From("b"),), (From("c"),), kind="cross")
    ctrl = RuleController([cross_swap(frozenset({1}), "x", "b"), cross_swap(frozenset({4}), "y", "b")])
    # the target reads its own queries; the source is read up to its last swap, "c" never
    assert ctrl.last_scale_read("b") == 4 and ctrl.last_scale_read("x") == 1
    assert ctrl.last_scale_read("c") is None
    layout = BatchLayout(("x", "y"), 1)  # "b" pruned
    q, kv = torch.randn(2, 2, 3, 4), torch.randn(2, 2, 5, 4)
    with pytest.raises(ValueError, match="pruned"):
        ctrl(AttnSite(0, 1, "cross", layout), q, kv, kv, None, bf16_rounded_attend(0.5))
    assert torch.equal(ctrl(AttnSite(0, 1, "self", layout), q, kv, kv, None, sdpa), sdpa(q, kv, kv, None))


def test_out_of_range_scales_and_bad_modes_raise(pipe: Pipeline) -> None:
    with pytest.raises(ValueError, match=r"outside \[0, 6\]"):
        generate_step_injection(pipe, A, B, [7], sampling=NO_CFG)
    with pytest.raises(ValueError, match="mode must be one of"):
        generate_step_injection(pipe, A, B, [1], sampling=NO_CFG, mode="adaln")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="component must be one of"):
        QKVInjection("x", frozenset({1}))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch must be >= 1"):
        StepInjectionConfig(batch=0)


# ---- experiments: rows, resume, figures --------------------------------------------------------------------


def count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(experiments, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(experiments, name, counted)
    return calls


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


STEP_CFG = StepInjectionConfig(sampling=NO_CFG, scales=(1, 3), thumb=16)
PAIR = PromptPair(A, B, "content")


def test_step_injection_rows_images_and_figures(
    pipe: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_calls(monkeypatch, "generate_step_injection")
    res = run_step_injection(pipe, [PAIR], [0], tmp_path, config=STEP_CFG, scorers={"fake": fake_scorer})
    assert len(calls) == 2 and res.computed == 4 and res.skipped == 0  # batch 1: one run per injected step
    rows = jsonl(tmp_path / "rows.jsonl")
    assert [(r["variant"], r["scale"], r["step"]) for r in rows] == [
        ("a", None, None),
        ("b", None, None),
        ("inject", 1, 1),  # convention B (default): step s is scale s
        ("inject", 3, 3),
    ]
    for r in rows:
        assert (tmp_path / r["image"]).is_file()
        assert r["pair"] == {"a": A, "b": B, "kind": "content"} and r["seed"] == 0
        assert (
            set(r["scores"]) == {"to_b", "to_a"}
            and r["scores"]["to_b"]["fake"] != r["scores"]["to_a"]["fake"]
        )
        assert r["config"]["sampling"]["cfg"] == 1.0 and r["commit"]
    # the plain-A row's image is plain generation of A
    plain = pipe(A, sampling=SamplingConfig(cfg=1.0)).images[0]
    with Image.open(tmp_path / rows[0]["image"]) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(plain))
    grid = Image.open(res.files["grid"])
    assert grid.width > 4 * 16 and grid.height > 16  # A, two steps, B
    assert res.files["plot_fake"].is_file()


def test_rerun_recomputes_nothing_and_adds_no_rows(
    pipe: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = StepInjectionConfig(sampling=NO_CFG, scales=(2,), thumb=16)
    run_step_injection(pipe, [PAIR], [0], tmp_path, config=cfg, scorers={"fake": fake_scorer})
    before = (tmp_path / "rows.jsonl").read_text()
    calls = count_calls(monkeypatch, "generate_step_injection")
    res = run_step_injection(pipe, [PAIR], [0], tmp_path, config=cfg, scorers={"fake": fake_scorer})
    assert calls == [] and res.computed == 0 and res.skipped == 3
    assert (tmp_path / "rows.jsonl").read_text() == before
    # a new seed only computes its own rows
    res = run_step_injection(pipe, [PAIR], [0, 1], tmp_path, config=cfg, scorers={"fake": fake_scorer})
    assert len(calls) == 1 and res.computed == 3 and len(jsonl(tmp_path / "rows.jsonl")) == 6


def test_a_line_cut_by_a_kill_is_repaired_and_its_row_recomputed(
    pipe: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = StepInjectionConfig(sampling=NO_CFG, scales=(2,), thumb=16)
    run_step_injection(pipe, [PAIR], [0], tmp_path, config=cfg)
    log = tmp_path / "rows.jsonl"
    whole = log.read_text()
    log.write_text(whole[: len(whole) - 25])  # the last row half written
    calls = count_calls(monkeypatch, "generate_step_injection")
    res = run_step_injection(pipe, [PAIR], [0], tmp_path, config=cfg)
    assert len(calls) == 1 and res.computed == 1
    rows = jsonl(log)
    assert [r["variant"] for r in rows] == ["a", "b", "inject"]
    again = jsonl(log)[-1]
    assert {**again, "seconds": 0} == {**json.loads(whole.splitlines()[-1]), "seconds": 0}  # the same row


def test_a_missing_image_is_recomputed_and_other_settings_are_refused(pipe: Pipeline, tmp_path: Path) -> None:
    cfg = StepInjectionConfig(sampling=NO_CFG, scales=(0,), thumb=16)
    res = run_step_injection(pipe, [PAIR], [0], tmp_path, config=cfg)
    (tmp_path / res.rows[-1]["image"]).unlink()
    res = run_step_injection(pipe, [PAIR], [0], tmp_path, config=cfg)
    assert res.computed == 1 and len(res.rows) == 3  # the row is replaced, not duplicated in the result
    other = StepInjectionConfig(sampling=SamplingConfig(cfg=1.0, tau=0.7), scales=(0,))
    with pytest.raises(ValueError, match=r"other settings \(sampling\.tau: 0\.5 -> 0\.7\)"):
        run_step_injection(pipe, [PAIR], [0], tmp_path, config=other)


def test_qkv_experiment_rows_grid_and_bars(
    pipe: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = QKVInjectionConfig(sampling=NO_CFG, ranges=((1, 2), (4,)), components=("q", "v"), batch=4, thumb=16)
    calls = count_calls(monkeypatch, "generate_qkv_injection")
    res = run_qkv_injection(pipe, [PAIR], [0], tmp_path, config=cfg, scorers={"fake": fake_scorer})
    assert len(calls) == 1 and res.computed == 6
    got = [(r["variant"], r["scales"], r["steps"]) for r in jsonl(tmp_path / "rows.jsonl")]
    assert got == [
        ("a", None, None),
        ("b", None, None),
        ("q", [1, 2], "1-2"),
        ("v", [1, 2], "1-2"),
        ("q", [4], "4"),
        ("v", [4], "4"),
    ]
    assert res.files["grid"].is_file() and res.files["bars_fake"].is_file()
    assert run_qkv_injection(pipe, [PAIR], [0], tmp_path, config=cfg).computed == 0


def test_row_log_keys_and_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    log = RowLog(path, settings={"s": 1}, key_fields=("k",))
    log.append({"k": [1, 2], "x": 1})
    log.append({"k": [1, 2], "x": 2})
    assert len(log.rows) == 1 and log.rows[0]["x"] == 2 and log.has({"k": [1, 2]})
    assert len(RowLog(path, settings={"s": 1}, key_fields=("k",)).rows) == 1
    with pytest.raises(ValueError, match=r"other settings \(s: 1 -> 2\)"):
        RowLog(path, settings={"s": 2}, key_fields=("k",))
    with pytest.raises(ValueError, match=r"allow_nan|Out of range"):
        log.append({"k": 3, "x": math.nan})
    path.write_text(path.read_text() + "not json\n")
    with pytest.raises(ValueError, match=r"rows\.jsonl:3: not a row of this log"):
        RowLog(path, settings={"s": 1}, key_fields=("k",))


# ---- pairs, steps, scorers, plots, CLI ---------------------------------------------------------------------


def test_world_pairs_differ_in_exactly_one_factor() -> None:
    for pair in world_content_pairs(5, seed=1):
        (ca, sa), (cb, sb) = world_labels(pair.a), world_labels(pair.b)
        assert pair.kind == "content" and sa == sb and ca != cb and None not in (ca, cb, sa)
    for pair in world_style_pairs(5, content="lightning bolt"):
        (ca, sa), (cb, sb) = world_labels(pair.a), world_labels(pair.b)
        assert pair.kind == "style" and ca == cb == "lightning bolt" and sa != sb
    assert world_content_pairs(3, seed=4) == world_content_pairs(3, seed=4)
    assert world_labels("a photo of a donut") == (None, None)
    assert world_labels(world.caption("star", "tie dye")) == ("star", "tie dye")


def test_read_pairs(tmp_path: Path) -> None:
    f = tmp_path / "pairs.txt"
    f.write_text("# comment\na photo of a donut | a photo of a truck | content\n\nred car\tblue car\n")
    assert read_pairs(f) == (
        PromptPair("a photo of a donut", "a photo of a truck", "content"),
        PromptPair("red car", "blue car", "custom"),
    )
    f.write_text("only one prompt\n")
    with pytest.raises(ValueError, match=r"pairs\.txt:1"):
        read_pairs(f)
    f.write_text("a | b | colour\n")
    with pytest.raises(ValueError, match="pair kind must be one of"):
        read_pairs(f)


def test_steps_and_conventions() -> None:
    assert parse_int_list("1-3,5", "steps") == (1, 2, 3, 5) and parse_int_list("3,2", "steps") == (3, 2)
    assert scale_of(13, "A", 13) == 12 and scale_of(0, "B", 13) == 0 and step_of(0, "A") == 1
    with pytest.raises(ValueError, match=r"step 14 outside \[1, 13\]"):
        scale_of(14, "A", 13)
    with pytest.raises(ValueError, match="runs backwards"):
        parse_int_list("5-2", "steps")
    assert scales_label([1, 2, 3, 5, 7, 8]) == "1-3,5,7-8"


def test_classifier_scorer_reads_the_named_label() -> None:
    clf = WorldClassifier(world.CONTENTS, width=8).eval()
    score = classifier_scorer(clf, "content")
    img = Image.new("RGB", (32, 32), (200, 10, 10))
    got = score([img, img], ["a star in neon style", "a photo of a donut"])
    with torch.no_grad():
        probs = clf(world.to_tensor(img.resize((64, 64)))[None]).softmax(1)[0]
    assert got[0] == pytest.approx(float(probs[world.CONTENTS.index("star")]), rel=1e-4)
    assert math.isnan(got[1])
    assert score_all({"p": score}, [img, img], ["a star", "a photo of a donut"])[1] == {"p": None}


def test_clip_scorer_on_a_tiny_random_clip(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

    # eos id 2: CLIP's legacy pooling at the highest token id, which needs no end token in the tokenizer
    text = {"vocab_size": 16, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
    text |= {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 0}
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "image_size": 32}
    cfg = CLIPConfig(
        text_config={**text, "num_attention_heads": 2, "max_position_embeddings": 16},
        vision_config={**vision, "num_attention_heads": 2, "patch_size": 8},
        projection_dim=8,
    )
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(tmp_path)
    words = ["<pad>", "<unk>", "a", "star", "cat", "in", "neon", "style"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # type: ignore[assignment]
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>").save_pretrained(
        tmp_path
    )
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(tmp_path)
    score = clip_scorer(tmp_path, device="cpu")
    imgs = [Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))]
    got = score(imgs, ["a star", "a cat in neon style"])
    assert len(got) == 2 and all(-1.0 <= x <= 1.0 for x in got) and got[0] != got[1]
    assert score(imgs[:1], ["a star"]) == pytest.approx(got[:1], abs=1e-5)


def test_plots_draw_bands_bars_and_grids() -> None:
    assert nice_ticks(0.13, 0.87) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    series = [Series("content", (1, 2, 3), (0.2, 0.5, math.nan), (0.1, 0.4, 0.3), (0.3, 0.6, 0.9))]
    img = line_plot(series, title="t", xlabel="step", ylabel="p", hlines=[HLine("A only", 0.1, dotted=True)])
    assert img.size == (760, 440)
    # the band is shaded in the series' colour, mixed with white
    px = np.asarray(img)
    assert ((px[..., 0] > 180) & (px[..., 2] > 220) & (px[..., 0] < 250)).any()
    bars = bar_plot(
        ["A", "B\nsteps 1-3"],
        [Bars("x", (0.5, math.nan), (0.4, math.nan), (0.6, math.nan))],
        title="t",
        ylabel="y",
    )
    assert bars.width >= 560
    grid = image_grid(
        [[Image.new("RGB", (8, 8), (255, 0, 0)), None]], row_labels=["r"], col_labels=["A", "B"], thumb=16
    )
    assert grid.getpixel((220 + 4 + 2, 34 + 4 + 2)) == (255, 0, 0)
    with pytest.raises(ValueError, match="row labels"):
        image_grid([[None]], row_labels=[], col_labels=["A"])


def test_cli_analyze_step_and_qkv(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--model", str(tiny_model_dir), "--device", "cpu", "--cfg", "1", "--quiet", "--thumb", "16"]
    pair = ["--prompt", A, "--alt-prompt", B, "--pair-kind", "style"]
    out = tmp_path / "step"
    assert (
        main(
            ["analyze", "step-injection", *pair, "--seeds", "0", "--steps", "3", "--out-dir", str(out), *base]
        )
        == 0
    )
    rows = jsonl(out / "rows.jsonl")
    assert [(r["variant"], r["step"]) for r in rows] == [("a", None), ("b", None), ("inject", 3)]
    assert rows[2]["scale"] == 3 and (out / "grid.png").is_file()  # convention B: step s is scale s
    out = tmp_path / "qkv"
    argv = [
        "analyze",
        "qkv-injection",
        *pair,
        "--steps",
        "1-2",
        "6",
        "--components",
        "k",
        "--out-dir",
        str(out),
    ]
    assert main([*argv, *base]) == 0
    assert [(r["variant"], r["scales"]) for r in jsonl(out / "rows.jsonl")][2:] == [("k", [1, 2]), ("k", [6])]
    capsys.readouterr()
    assert main(["analyze", "step-injection", "--prompt", A, "--out-dir", str(out), *base]) == 2
    assert "--alt-prompt" in capsys.readouterr().err
    assert (
        main(["analyze", "step-injection", *pair, "--steps", "7", "--out-dir", str(tmp_path / "x"), *base])
        == 2
    )
    assert "step 7 outside [0, 6]" in capsys.readouterr().err
    argv = ["analyze", "qkv-injection", *pair, "--batch", "0", "--out-dir", str(tmp_path / "x")]
    assert main([*argv, *base]) == 2
    assert "--batch: must be >= 1" in capsys.readouterr().err
