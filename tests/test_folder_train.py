from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from scalestyle.cli import main
from scalestyle.config import SamplingConfig
from scalestyle.data import procedural as world
from scalestyle.data.folder import ImageFolder, scan_folder
from scalestyle.pipeline import Pipeline
from scalestyle.train.folder import FolderTrainConfig, caption_words, train_on_folder
from scalestyle.train.transformer import TransformerTrainConfig
from scalestyle.train.vae import VAETrainConfig
from scalestyle.weights import read_model_config


def make_folder(root: Path, n: int = 5) -> Path:
    (root / "sub").mkdir(parents=True)
    rows = []
    for i in range(n):
        content, style = world.CONTENTS[i], world.TRAIN_STYLES[i]
        sample = world.render(content, style, i, size=80).image
        if i % 2:
            sample.save(root / "sub" / f"img{i}.png")
            (root / "sub" / f"img{i}.txt").write_text(world.caption(content, style) + "\n")
        else:
            sample.convert("RGBA").save(root / f"img{i}.webp")
            rows.append({"file_name": f"img{i}.webp", "text": world.caption(content, style)})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_folder_reads_captions_from_metadata_and_sidecars(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    items = scan_folder(root)
    assert [i.path.name for i in items] == ["img0.webp", "img2.webp", "img4.webp", "img1.png", "img3.png"]
    assert items[0].caption == "a circle in " + world.TRAIN_STYLES[0] + " style"
    assert items[3].caption == world.caption(world.CONTENTS[1], world.TRAIN_STYLES[1])
    Image.new("RGB", (32, 32)).save(root / "sub" / "orphan.png")
    with pytest.raises(ValueError, match=r"1 image\(s\) .* no caption .*sub/orphan\.png"):
        scan_folder(root)
    assert scan_folder(root, uncaptioned="empty")[-1].caption == ""
    (root / "metadata.jsonl").write_text('{"file_name": "gone.png", "text": "x"}\n')
    with pytest.raises(ValueError, match="lists missing image"):
        scan_folder(root)
    (root / "metadata.jsonl").write_text('{"name": "img0.webp"}\n')
    with pytest.raises(ValueError, match=r"metadata\.jsonl:1: expected"):
        scan_folder(root)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        scan_folder(tmp_path / "nope")


def test_folder_batches_cover_each_epoch_and_depend_only_on_the_step(tmp_path: Path) -> None:
    data = ImageFolder(make_folder(tmp_path / "data"), (64, 64), seed=3)
    epoch = [i for step in range(5) for i in data.indices(step, 1)]
    assert sorted(epoch) == list(range(5))
    # batches of 2: positions 4 and 5 straddle two epochs, each epoch its own permutation
    again = ImageFolder(tmp_path / "data", (64, 64), seed=3)
    assert again.indices(2, 2) == data.indices(2, 2) and again.indices(2, 2)[0] == epoch[4]
    imgs, captions = data.batch(1, 2, torch.Generator())
    assert imgs.shape == (2, 3, 64, 64) and imgs.min() >= -1 and imgs.max() <= 1
    assert captions == [data.items[i].caption for i in data.indices(1, 2)]


def test_caption_words_match_the_demo_tokenizer() -> None:
    assert caption_words(["a star, in neon style!", "Tie-dye"]) == sorted(
        {"a", "star", ",", "in", "neon", "style", "!", "Tie", "-", "dye"}
    )


TINY_STEPS = FolderTrainConfig(
    vae=VAETrainConfig(steps=2, batch_size=2, log_every=1, ckpt_every=1),
    transformer=TransformerTrainConfig(
        steps=2, batch_size=2, log_every=1, ckpt_every=1, scale_weighting="scale"
    ),
    preset="tiny",
)


@pytest.mark.slow  # over 5 s on 2 cores: the CI's slow step
def test_train_from_scratch_writes_a_loadable_model(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data")
    out = train_on_folder(data, tmp_path / "model", tmp_path / "work", TINY_STEPS, progress=False)
    assert read_model_config(out).text.source == "text_encoder"
    assert (tmp_path / "work" / "vae.ckpt").is_file() and (tmp_path / "work" / "transformer.ckpt").is_file()
    pipe = Pipeline.load(out, device="cpu")
    assert pipe("a circle in neon style", sampling=SamplingConfig(seed=0)).images[0].size == (64, 64)
    info = json.loads((out / "config.json").read_text())["extra"]["training"]
    assert info["images"] == 5 and info["trained_by"] == "scalestyle train folder"


def test_fine_tuning_starts_from_the_given_model_and_keeps_its_vae(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    data = make_folder(tmp_path / "data")
    cfg = FolderTrainConfig(
        transformer=TransformerTrainConfig(steps=1, batch_size=2, lr=1e-3, warmup=1, log_every=1),
        init=str(tiny_model_dir),
    )
    out = train_on_folder(data, tmp_path / "model", tmp_path / "work", cfg, progress=False)
    base, tuned = Pipeline.load(tiny_model_dir, device="cpu"), Pipeline.load(out, device="cpu")
    assert not (tmp_path / "work" / "vae.ckpt").exists()
    for a, b in zip(base.vae.state_dict().values(), tuned.vae.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    moved = [
        float((a.float() - b.float()).abs().max())
        for a, b in zip(
            base.transformer.state_dict().values(), tuned.transformer.state_dict().values(), strict=True
        )
    ]
    # one small step from the base weights: everything close to them, something moved
    assert max(moved) < 0.05 and max(moved) > 0


@pytest.mark.slow  # over 5 s on 2 cores: the CI's slow step
def test_cli_train_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_folder(tmp_path / "data")
    base = ["train", "folder", "--out", str(tmp_path / "m"), "--work-dir", str(tmp_path / "w"), "--quiet"]
    assert main(base) == 2 and "--data" in capsys.readouterr().err
    assert main(["train", "demo", "--out", str(tmp_path / "m"), "--data", str(data)]) == 2
    assert main([*base, "--data", str(data), "--quick", "--bsc-strength", "0.9"]) == 2
    assert "bsc_strength must be in [0, 0.5]" in capsys.readouterr().err
    assert main([*base, "--data", str(data), "--quick", "--prefix-scales", "2"]) == 2
    assert "go together" in capsys.readouterr().err
    # quick runs 2 images a step: one on every scale, one on the first 2 only
    coarse = ["--prefix-scales", "2", "--full-rows", "1"]
    assert (
        main([*base, "--data", str(data), "--quick", "--preset", "tiny", "--bsc-strength", "0.3", *coarse])
        == 0
    )
    assert (tmp_path / "m" / "config.json").is_file()
