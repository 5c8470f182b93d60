"""Subject adapters (proxy-tuning, issue 18): config checks, off == base to the bit, merged == unmerged,
exact resumption, captions, the world's subjects."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from scalestyle.data import procedural as world
from scalestyle.data.folder import ImageFolder
from scalestyle.models.stylear import TEXT_LORA_TARGETS
from scalestyle.models.subject import (
    DEFAULT_TARGETS,
    SubjectAdapter,
    SubjectConfig,
    adapter_kind,
    added_tokens,
    lora_applied,
    merged,
    subjects_applied,
)
from scalestyle.pipeline import Pipeline, bundled_demo_dir
from scalestyle.train.subject import SubjectTrainConfig, subject_batch, subject_caption, train_subject
from scalestyle.train.transformer import encode_batch


@pytest.fixture(scope="module")
def pipe(tiny_model_dir: Path) -> Pipeline:
    return Pipeline.load(tiny_model_dir, device="cpu")


def write_folder(root: Path, subject: str, n: int, caption: str | None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        sample = world.render_subject(subject, world.TRAIN_STYLES[i % 3], i)
        sample.image.save(root / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": caption or ""})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def trained_like(
    pipe: Pipeline, seed: int, token: str = "sks", targets: tuple[str, ...] = DEFAULT_TARGETS
) -> SubjectAdapter:
    adapter = SubjectAdapter(SubjectConfig(token, "star", 128, lora_rank=2, lora_targets=targets))
    with lora_applied(pipe.transformer, [adapter], seed=seed):  # fresh LoRA: B = 0
        pass
    g = torch.Generator().manual_seed(seed)
    adapter.lora = {k: torch.randn(v.shape, generator=g) * 0.05 for k, v in adapter.lora.items()}
    return adapter


def logits(pipe: Pipeline, prompt: str = "a star in style") -> torch.Tensor:
    schedule = pipe.schedule_for()
    img = world.to_tensor(world.render("star", "neon", 0).image)[None]
    inputs, _ = encode_batch(pipe.vae, img, schedule)  # type: ignore[arg-type]
    cond = pipe.transformer.condition([pipe.encode_text([prompt])])  # type: ignore[union-attr]
    with torch.no_grad():
        return pipe.transformer(inputs, cond, schedule)  # type: ignore[call-arg]


def assert_rounding_close(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to float32 rounding amplified through the layers: scaled to the logits' magnitude,
    and much closer than that on average."""
    scale = float(b.abs().max())
    torch.testing.assert_close(a, b, rtol=0, atol=5e-4 * scale)
    assert float((a - b).abs().mean()) < 1e-5 * scale


def test_config_checks_name_the_value_and_range() -> None:
    with pytest.raises(ValueError, match=r"lora_rank must be in \[1, 1024\], got 0"):
        SubjectConfig("sks", "star", 128, lora_rank=0)
    with pytest.raises(ValueError, match="token must be non-empty"):
        SubjectConfig(" ", "star", 128)
    with pytest.raises(ValueError, match="lora_targets must be a non-empty subset"):
        SubjectConfig("sks", "star", 128, lora_targets=("sa.mat_qkv",))
    with pytest.raises(ValueError, match=r"prior_weight must be in \[0, 100\], got -1"):
        SubjectTrainConfig(prior_weight=-1)
    with pytest.raises(ValueError, match=r"lr must be in \(0, 1\), got 2"):
        SubjectTrainConfig(lr=2)
    assert SubjectConfig("<sks>", "star", 128, lora_rank=4, lora_alpha=8).scale == 2.0


def test_world_subjects_are_not_contents_and_render_like_them() -> None:
    assert not set(world.SUBJECTS) & set(world.CONTENTS)
    for subject in world.SUBJECTS:
        a = world.render_subject(subject, "plain", 5)
        b = world.render_subject(subject, "neon", 5)
        assert np.array_equal(a.mask, b.mask) and a.mask.mean() > 0.05
        assert world.SUBJECT_CLASSES[subject] in world.CONTENTS
    with pytest.raises(ValueError, match="unknown content"):
        world.render("hexstar", "plain", 0)
    with pytest.raises(ValueError, match="unknown subject"):
        world.render_subject("star", "plain", 0)


def test_adapter_off_is_the_base_model_bit_for_bit(pipe: Pipeline) -> None:
    base = logits(pipe)
    adapter = trained_like(pipe, 1)
    with merged(pipe.transformer, [adapter]):  # type: ignore[arg-type]
        assert not torch.equal(logits(pipe), base)
    assert torch.equal(logits(pipe), base)
    with lora_applied(pipe.transformer, [adapter]):  # type: ignore[arg-type]
        assert not torch.equal(logits(pipe), base)
    assert torch.equal(logits(pipe), base)
    assert not any(".lora_" in n for n, _ in pipe.transformer.named_parameters())


def test_merged_equals_unmerged_for_one_and_two_adapters(pipe: Pipeline) -> None:
    a, b = trained_like(pipe, 1), trained_like(pipe, 2, token="zwx")
    for adapters in ([a], [a, b]):
        with lora_applied(pipe.transformer, adapters):  # type: ignore[arg-type]
            unmerged = logits(pipe)
        with merged(pipe.transformer, adapters):  # type: ignore[arg-type]
            folded = logits(pipe)
        # float32 rounding of the folded caption projection reaches every layer's keys and values: a few
        # logits of magnitude ~12 move by up to 1.4e-3 (peft 0.21, transformers 5.24), the mean by 5e-6
        assert_rounding_close(folded, unmerged)
    with lora_applied(pipe.transformer, [a]):  # type: ignore[arg-type]
        only_a = logits(pipe)
    assert not torch.allclose(only_a, unmerged, atol=1e-2)  # two adapters are not one


def test_text_targets_adapt_the_caption_memory_and_merge_exactly(pipe: Pipeline) -> None:
    adapter = trained_like(pipe, 4, targets=TEXT_LORA_TARGETS)
    assert adapter.lora and all(k.startswith("text_proj_for_ca.") for k in adapter.lora)
    base = logits(pipe)
    with lora_applied(pipe.transformer, [adapter]):  # type: ignore[arg-type]
        unmerged = logits(pipe)
    with merged(pipe.transformer, [adapter]):  # type: ignore[arg-type]
        folded = logits(pipe)
    assert not torch.allclose(unmerged, base, atol=1e-2)
    # float32 rounding of the folded weight reaches every layer's keys and values through the memory
    assert_rounding_close(folded, unmerged)
    assert torch.equal(logits(pipe), base)


def test_shape_judge_learns_contents_and_subjects(pipe: Pipeline, tmp_path: Path) -> None:
    from scalestyle.eval.subject import SHAPE_JUDGE_FILE, score_images, train_shape_judge
    from scalestyle.eval.world import Judges
    from scalestyle.train.classifiers import classifier_batch

    shapes = world.CONTENTS + world.SUBJECTS
    img, c_idx, s_idx = classifier_batch(0, 24, torch.Generator().manual_seed(0), shapes=shapes)
    i = next(j for j, c in enumerate(c_idx.tolist()) if shapes[c] in world.SUBJECTS)
    seed = world.SPLIT_SEEDS["classifier"][i]
    truth = world.render_subject(shapes[int(c_idx[i])], world.STYLES[int(s_idx[i])], seed).image
    assert torch.equal(img[i], world.to_tensor(truth))
    judge = train_shape_judge(pipe.vae, pipe.schedule_for(), tmp_path, steps=2)  # type: ignore[arg-type]
    assert judge.labels == shapes and (tmp_path / SHAPE_JUDGE_FILE).is_file()
    again = train_shape_judge(pipe.vae, pipe.schedule_for(), tmp_path, steps=2)  # type: ignore[arg-type]
    assert all(
        torch.equal(a, b)
        for a, b in zip(judge.state_dict().values(), again.state_dict().values(), strict=True)
    )
    images = [world.render_subject("cactus", "plain", 0).image, world.render("tree", "neon", 1).image]
    scores = score_images(images, "cactus", ["plain", "neon"], Judges.load(bundled_demo_dir()), judge)
    assert all(sc.judged in shapes for sc in scores)
    assert [
        sc.judged for sc in score_images(images, "cactus", ["plain", "neon"], Judges.load(bundled_demo_dir()))
    ] == ["", ""]


def test_save_load_round_trip_and_kind(pipe: Pipeline, tmp_path: Path) -> None:
    adapter = trained_like(pipe, 3)
    out = adapter.save(tmp_path / "a")
    assert adapter_kind(out) == "subject"
    back = SubjectAdapter.load(out)
    assert back.cfg == adapter.cfg and all(torch.equal(back.lora[k], v) for k, v in adapter.lora.items())
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text('{"stylear": {}}')
    (tmp_path / "b" / "adapter.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="is not a subject adapter"):
        SubjectAdapter.load(tmp_path / "b")


def test_captions_fill_the_subject_or_draw_a_template(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    assert subject_caption("a {subject} in neon style", "<sks> star", g) == "a <sks> star in neon style"
    assert "<sks> star" in subject_caption("", "<sks> star", g)
    images = ImageFolder(write_folder(tmp_path / "s", "hexstar", 3, None), (64, 64), uncaptioned="empty")
    classes = ImageFolder(write_folder(tmp_path / "c", "hexstar", 2, "a star"), (64, 64))
    adapter = SubjectAdapter(SubjectConfig("<sks>", "star", 128))
    img, captions, n = subject_batch(images, classes, adapter, SubjectTrainConfig(batch_size=2), 0, g)
    assert img.shape == (4, 3, 64, 64) and n == 2
    assert all("<sks> star" in c for c in captions[:2]) and captions[2:] == ["a star", "a star"]


def test_resume_gives_the_uninterrupted_weights(pipe: Pipeline, tmp_path: Path) -> None:
    images = ImageFolder(write_folder(tmp_path / "s", "hexstar", 3, "a {subject}"), (64, 64))
    classes = ImageFolder(write_folder(tmp_path / "c", "hexstar", 3, "a star"), (64, 64))
    cfg = SubjectTrainConfig(steps=2, batch_size=1, warmup=1, ckpt_every=1, log_every=1, prefix_scales=3)

    def adapter() -> SubjectAdapter:
        return SubjectAdapter(SubjectConfig("sks", "star", 128, lora_rank=2))

    base = logits(pipe)
    whole = train_subject(pipe, adapter(), cfg, images, tmp_path / "w1", classes=classes, progress=False)
    assert torch.equal(logits(pipe), base)  # training leaves the transformer as it was
    from dataclasses import replace

    train_subject(pipe, adapter(), replace(cfg, steps=1), images, tmp_path / "w2", classes=classes,
                  progress=False)  # fmt: skip
    resumed = train_subject(pipe, adapter(), cfg, images, tmp_path / "w2", classes=classes, progress=False)
    assert set(whole.lora) == set(resumed.lora) and whole.lora
    for k, v in whole.lora.items():
        assert torch.equal(v, resumed.lora[k]), k
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in whole.lora.items())
    rows = [json.loads(line) for line in (tmp_path / "w1" / "subject_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and "prior_loss" in rows[0]


def test_world_instruments_find_the_drawn_shape() -> None:
    from scalestyle.eval.subject import mask_iou, nearest_shape, object_mask, shape_iou

    hexstar = world.render_subject("hexstar", "plain", world.EVAL_SEEDS[0])
    star = world.render("star", "pop art", world.EVAL_SEEDS[1])
    assert mask_iou(object_mask(hexstar.image), hexstar.mask) > 0.9
    assert nearest_shape(object_mask(hexstar.image), "hexstar") == "hexstar"
    assert nearest_shape(object_mask(star.image), "hexstar") == "star"
    assert shape_iou(star.mask, "star") > shape_iou(star.mask, "hexstar")


def test_added_identifiers_round_trip_and_are_given_back(pipe: Pipeline, tmp_path: Path) -> None:
    from scalestyle.models.text_encoder import TextEncoder

    encoder = pipe.text_encoder
    assert isinstance(encoder, TextEncoder) and not encoder.spells("<sks>")
    a = trained_like(pipe, 5, token="<sks>")
    a = SubjectAdapter(replace(a.cfg, add_token=True), a.lora, encoder.new_token_embedding("<sks>")[None])
    b = trained_like(pipe, 6, token="<zwx>")
    b = SubjectAdapter(replace(b.cfg, add_token=True), b.lora, encoder.new_token_embedding("<zwx>")[None])
    back = SubjectAdapter.load(a.save(tmp_path / "a"))
    assert back.cfg.add_token and back.tokens_NE is not None and torch.equal(back.tokens_NE, a.tokens_NE)
    assert list(added_tokens([a, b])) == ["<sks>", "<zwx>"]
    base = logits(pipe, "a <sks> star")
    with subjects_applied(pipe, [a, b]):
        assert pipe.text_encoder is not encoder
        assert pipe.text_encoder.spells("<sks> <zwx>")  # type: ignore[union-attr]
        sks, zwx = logits(pipe, "a <sks> star"), logits(pipe, "a <zwx> star")
        assert not torch.allclose(sks, zwx, atol=1e-2)  # the identifiers are no longer one <unk>
    assert pipe.text_encoder is encoder and torch.equal(logits(pipe, "a <sks> star"), base)
    with pytest.raises(ValueError, match="two subject adapters add the identifier"):
        added_tokens([a, back])
    with pytest.raises(ValueError, match="has no embeddings"):
        SubjectAdapter(replace(a.cfg, lora_rank=2)).save(tmp_path / "c")
    with pytest.raises(ValueError, match="whose config has add_token"):
        SubjectAdapter(trained_like(pipe, 7).cfg, None, a.tokens_NE)
    with pytest.raises(ValueError, match=r"must be \(2 subjects, E\)"):
        SubjectAdapter(replace(a.cfg, others=(("<zwx>", "tree"),)), None, a.tokens_NE)
    (tmp_path / "a" / "identifier.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"identifier\.safetensors"):
        SubjectAdapter.load(tmp_path / "a")


def test_training_with_an_added_identifier_fixes_its_embedding(pipe: Pipeline, tmp_path: Path) -> None:
    from scalestyle.models.text_encoder import TextEncoder

    images = ImageFolder(write_folder(tmp_path / "s", "hexstar", 2, "a {subject}"), (64, 64))
    cfg = SubjectTrainConfig(steps=1, batch_size=1, warmup=1, ckpt_every=1, log_every=1, prefix_scales=2)
    adapter = SubjectAdapter(SubjectConfig("<sks>", "star", 128, lora_rank=2, add_token=True))
    encoder = pipe.text_encoder
    trained = train_subject(pipe, adapter, cfg, images, tmp_path / "w", progress=False)
    assert pipe.text_encoder is encoder  # the pipeline's encoder is not changed by training
    assert isinstance(encoder, TextEncoder) and trained.tokens_NE is not None
    assert torch.equal(trained.tokens_NE[0], encoder.new_token_embedding("<sks>"))
    assert SubjectAdapter.load(trained.save(tmp_path / "out")).cfg.add_token


def test_one_adapter_learns_several_subjects_each_with_its_rows(tmp_path: Path) -> None:
    cfg = SubjectConfig("<sks>", "star", 128, others=(("<zwx>", "tree"),))
    assert cfg.subjects == (("<sks>", "star"), ("<zwx>", "tree"))
    assert cfg.phrases == ("<sks> star", "<zwx> tree")
    assert SubjectConfig.from_dict(json.loads(json.dumps({**cfg.__dict__}))) == cfg
    with pytest.raises(ValueError, match="each subject needs its own token"):
        SubjectConfig("<sks>", "star", 128, others=(("<SKS>", "tree"),))
    hexstar = ImageFolder(write_folder(tmp_path / "h", "hexstar", 3, "a {subject}"), (64, 64))
    cactus = ImageFolder(write_folder(tmp_path / "c", "cactus", 3, "a {subject}"), (64, 64))
    stars = ImageFolder(write_folder(tmp_path / "hs", "hexstar", 2, "a star"), (64, 64))
    trees = ImageFolder(write_folder(tmp_path / "ct", "cactus", 2, "a tree"), (64, 64))
    adapter = SubjectAdapter(cfg)
    g = torch.Generator().manual_seed(0)
    train_cfg = SubjectTrainConfig(batch_size=2, class_batch_size=1)
    img, captions, n = subject_batch([hexstar, cactus], [stars, trees], adapter, train_cfg, 0, g)
    assert img.shape == (6, 3, 64, 64) and n == 4
    assert captions == ["a <sks> star"] * 2 + ["a <zwx> tree"] * 2 + ["a star", "a tree"]
    with pytest.raises(ValueError, match=r"1 image folder\(s\) for the 2 subject\(s\)"):
        subject_batch(hexstar, None, adapter, train_cfg, 0, g)
