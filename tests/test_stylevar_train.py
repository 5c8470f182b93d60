"""StyleVAR SFT (issue 15): the triplet layouts, the world's triplets, the trainer (exact resumption, the
loss falling on a couple of triplets, the folder it writes loading in TransferPipeline) and the CLI."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from scalestyle.config import SamplingConfig, VARPreset, get_preset, get_stylevar_preset
from scalestyle.data import procedural as world
from scalestyle.data.triplets import (
    ConcatTriplets,
    TripletFolder,
    WorldTriplets,
    detect_layout,
    triplet_folders,
    world_triplets,
)
from scalestyle.models.var import VAR
from scalestyle.models.vqvae import VQVAE
from scalestyle.stylevar_weights import (
    load_stylevar_models,
    resolve_stylevar_files,
    stylevar_preset_for_var,
)
from scalestyle.train.stylevar import (
    CHECKPOINT,
    StyleVARTrainConfig,
    lin0_lr,
    sft_loss,
    sft_start,
    step_indices,
    train_stylevar_sft,
)
from scalestyle.transfer import TransferPipeline, square_tensor
from scalestyle.weights import LAYOUT_FILE, WeightsError

PRESET = get_stylevar_preset("stylevar-tiny")
SIZE = 16  # layout tests: any size works, the smallest that load_image accepts is cheapest


def solid(path: Path, value: int, size: tuple[int, int] = (20, 24)) -> Path:
    """A one-colour image whose grey level identifies it after resizing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)
    return path


def level(x_3PP: torch.Tensor) -> int:
    return round(float(x_3PP.mean().add(1).mul(127.5)))


def levels(item: tuple[torch.Tensor, ...]) -> tuple[int, ...]:
    return tuple(level(x) for x in item)


# ---------------------------------------------------------------------------------------------------------
# Layouts


def omnistyle(root: Path) -> Path:
    solid(root / "content" / "cat.png", 10)
    solid(root / "content" / "dog.jpg", 20)
    solid(root / "style" / "wave.jpg", 30)
    solid(root / "style" / "ink.webp", 40)
    # the released names: the content's file name, then the style's with the target's .png after it
    solid(root / "target" / "cat.png&&wave.jpg.png", 50)
    # parts without extensions are found by stem
    solid(root / "target" / "dog&&ink.png", 60)
    return root


def test_omnistyle_layout_pairs_each_target_with_its_named_content_and_style(tmp_path: Path) -> None:
    root = omnistyle(tmp_path / "omni")
    data = TripletFolder(root, SIZE)
    assert data.layout == "omnistyle" and len(data) == 2
    assert [levels(data[i]) for i in range(2)] == [(50, 10, 30), (60, 20, 40)]
    assert all(x.shape == (3, SIZE, SIZE) for x in data[0])
    (root / "train_files.txt").write_text("dog&&ink.png\n")
    assert [levels(t) for t in TripletFolder(root, SIZE)] == [(60, 20, 40)]


def test_omnistyle_errors_name_the_target_and_what_is_missing(tmp_path: Path) -> None:
    root = omnistyle(tmp_path / "omni")
    solid(root / "target" / "cow.png&&wave.jpg.png", 70)
    with pytest.raises(ValueError, match=r"cow.png&&wave.jpg.png: names the content 'cow.png'"):
        TripletFolder(root, SIZE)
    (root / "target" / "cow.png&&wave.jpg.png").unlink()
    solid(root / "target" / "no-separator.png", 70)
    with pytest.raises(ValueError, match=r"no-separator.png: an OmniStyle target is named"):
        TripletFolder(root, SIZE)


def test_imagepulse_sample_folders_and_json_records(tmp_path: Path) -> None:
    root = tmp_path / "pulse"
    for name, base in (("0000001", 10), ("0000000", 40)):
        for i, part in enumerate(("content", "style", "target")):
            solid(root / name / f"{part}.png", base + i)
        (root / name / "meta.json").write_text('{"prompt": "not a record"}')
    archive = root / "archive_7" / "nested"
    for i, name in enumerate(("c.png", "s.png", "t.png")):
        solid(archive / name, 100 + i)
    (archive / "sample.json").write_text(
        json.dumps({"image_1": "c.png", "image_2": "s.png", "image_4": "t.png"})
    )
    rows = [
        {
            "image_1": "archive_7/nested/t.png",
            "image_2": "archive_7/nested/c.png",
            "image_4": "0000000/target.png",
        }
    ]
    (root / "index.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = TripletFolder(root, SIZE)
    assert data.layout == "imagepulse"
    # sample folders in sorted order, then records: the root's index, then those under other folders
    assert [levels(t) for t in data] == [(42, 40, 41), (12, 10, 11), (42, 102, 100), (102, 100, 101)]
    (root / "train_files.txt").write_text("0000001\narchive_7\n")
    assert [levels(t) for t in TripletFolder(root, SIZE)] == [(12, 10, 11), (102, 100, 101)]


def test_imagepulse_record_naming_a_missing_file_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "pulse"
    solid(root / "a" / "c.png", 1)
    (root / "a" / "r.json").write_text(
        json.dumps([{"image_1": "c.png", "image_2": "x.png", "image_4": "c.png"}])
    )
    with pytest.raises(ValueError, match=r"r.json\[0\]: image_2 \(style\) names .*x.png, which is missing"):
        TripletFolder(root, SIZE)


def test_a_folder_of_neither_layout_names_both(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    solid(loose / "img.png", 1)
    for folder in (loose, tmp_path / "empty_sub"):
        (tmp_path / "empty_sub" / "x").mkdir(parents=True, exist_ok=True)
        with pytest.raises(
            ValueError, match=rf"{folder.name}: no triplets found; expected the OmniStyle-150K"
        ):
            TripletFolder(folder, SIZE)
    with pytest.raises(ValueError, match="no such folder"):
        detect_layout(tmp_path / "absent")


def test_folders_concatenate_in_order_at_one_size(tmp_path: Path) -> None:
    a, b = omnistyle(tmp_path / "a"), tmp_path / "b"
    for i, part in enumerate(("content", "style", "target")):
        solid(b / "s" / f"{part}.png", 200 + i)
    data = triplet_folders([b, a], SIZE)
    assert isinstance(data, ConcatTriplets) and len(data) == 3
    assert [levels(data[i]) for i in range(3)] == [(202, 200, 201), (50, 10, 30), (60, 20, 40)]
    assert "imagepulse:" in data.description and "omnistyle:" in data.description
    with pytest.raises(IndexError):
        data[3]
    with pytest.raises(ValueError, match="one image size"):
        ConcatTriplets([TripletFolder(a, SIZE), TripletFolder(b, SIZE * 2)])


def test_world_triplets_are_the_train_split_without_held_out_styles() -> None:
    data = WorldTriplets(32, length=400)
    nc = len(world.CONTENTS)
    # contents cycle fastest, so one index per block of nc reaches every target style
    seen = [data.triplet(i) for i in range(0, 21 * nc, nc)]
    styles = {t.target.style for t in seen}
    assert styles == set(world.TRAIN_STYLES) - {world.NEUTRAL_STYLE}
    assert not styles & set(world.HELD_OUT_STYLES)
    assert all(t.style.style == t.target.style and t.content.style == world.NEUTRAL_STYLE for t in seen)
    t = world.triplet(5, "train", 32)
    expected = [square_tensor(s.image, 32) for s in (t.target, t.content, t.style)]
    assert all(torch.equal(x, y) for x, y in zip(data[5], expected, strict=True))
    with pytest.raises(ValueError, match="offset"):
        WorldTriplets(32, length=10, offset=len(world.TRAIN_SEEDS))


def test_world_triplets_join_remixes_by_share() -> None:
    assert isinstance(world_triplets(32, 0.0, length=40), WorldTriplets)
    data = world_triplets(32, 0.2, length=40)
    assert len(data) == 50 and "world-remix:train[0:10]" in data.description
    assert isinstance(data, ConcatTriplets)
    t = world.remix_triplet(3, 32)
    expected = [square_tensor(s.image, 32) for s in (t.target, t.content, t.style)]
    assert all(torch.equal(x, y) for x, y in zip(data[43], expected, strict=True))
    with pytest.raises(ValueError, match=r"remix must be in \[0, 1\), got 1"):
        world_triplets(32, 1.0)


# ---------------------------------------------------------------------------------------------------------
# Trainer


def test_config_errors_name_value_and_range() -> None:
    bad = (
        ("lr", 0.0),
        ("warmup", 1.0),
        ("alpha_jitter", 0.6),
        ("mixed_precision", "fp16"),
        ("scale_weighting", "x"),
    )
    for field, value in bad:
        with pytest.raises(ValueError, match=rf"{field}.* must .*{value}"):
            StyleVARTrainConfig(**{field: value})  # type: ignore[arg-type]


def test_scale_weighting_token_is_the_authors_mean_and_scale_reweighs() -> None:
    from scalestyle.train.transformer import scale_loss_weights

    preset = get_stylevar_preset("stylevar-tiny")
    start = sft_start("stylevar-tiny")
    model, vqvae = start.build(0)
    g = torch.Generator().manual_seed(0)
    t, c, s = (torch.rand(2, 3, preset.image_size, preset.image_size, generator=g) * 2 - 1 for _ in range(3))
    with torch.no_grad():
        authors = sft_loss(model, vqvae, t, c, s)
        token = sft_loss(model, vqvae, t, c, s, weights_L=scale_loss_weights(model.schedule, "token"))
        scale = sft_loss(model, vqvae, t, c, s, weights_L=scale_loss_weights(model.schedule, "scale"))
    torch.testing.assert_close(token, authors)  # the same mean, up to the order of the sum
    assert abs(float(scale - authors)) > 1e-4


def test_sft_loss_under_bf16_autocast_tokenizes_in_float32() -> None:
    # `--mixed-precision bf16` autocasts the whole objective; the frozen VQ-VAE's in-place addmm refused
    # the bf16 features, and bf16 tokens would differ from the float32 run's targets
    start = sft_start("stylevar-tiny")
    model, vqvae = start.build(0)
    size = get_stylevar_preset("stylevar-tiny").image_size
    g = torch.Generator().manual_seed(0)
    t, c, s = (torch.rand(2, 3, size, size, generator=g) * 2 - 1 for _ in range(3))
    with torch.no_grad():
        full = sft_loss(model, vqvae, t, c, s)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = sft_loss(model, vqvae, t, c, s)
    assert torch.isfinite(mixed) and abs(float(mixed - full)) < 0.05 * float(full)


def test_lin0_warms_up_holds_then_decays_to_one_percent() -> None:
    cfg = StyleVARTrainConfig(steps=1000, lr=0.5, warmup=0.02)
    lrs = [lin0_lr(s, cfg) / cfg.lr for s in range(cfg.steps)]
    assert lrs[0] == pytest.approx(0.005) and lrs[10] == pytest.approx(0.005 + 0.995 * 0.5)
    assert lrs[20] == lrs[60] == 1.0 and lrs[80] < 1.0
    assert lrs[-1] == pytest.approx(0.01)
    assert all(a >= b for a, b in itertools.pairwise(lrs[20:]))


def test_step_indices_depend_only_on_seed_and_step() -> None:
    assert step_indices(10, 4, 0, 7) == step_indices(10, 4, 0, 7)
    assert step_indices(10, 4, 0, 7) != step_indices(10, 4, 0, 8)
    assert step_indices(10, 4, 0, 7, stream=1) != step_indices(10, 4, 0, 7)


class Interrupt(Exception):
    pass


class KilledAfter(WorldTriplets):
    """The world's triplets, killed (as a process would be) at the ``limit``-th item read."""

    def __init__(self, limit: int, **kwargs: int) -> None:
        super().__init__(PRESET.image_size, **kwargs)
        self.limit, self.reads = limit, 0

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.reads += 1
        if self.reads > self.limit:
            raise Interrupt
        return super().__getitem__(index)


@pytest.mark.slow
def test_resume_after_a_kill_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    cfg = StyleVARTrainConfig(steps=2, batch_size=1, log_every=1, ckpt_every=1, alpha_jitter=0.15)
    data = WorldTriplets(PRESET.image_size, length=8)
    full = train_stylevar_sft(
        tmp_path / "full", tmp_path / "w_full", cfg, data, init="stylevar-tiny", progress=False
    )
    with pytest.raises(Interrupt):
        train_stylevar_sft(
            tmp_path / "res",
            tmp_path / "w_res",
            cfg,
            KilledAfter(1, length=8),
            init="stylevar-tiny",
            progress=False,
        )
    assert not (tmp_path / "res").exists()
    resumed = train_stylevar_sft(
        tmp_path / "res", tmp_path / "w_res", cfg, data, init="stylevar-tiny", progress=False
    )
    a, b = (torch.load(p / CHECKPOINT, weights_only=True) for p in (tmp_path / "w_full", tmp_path / "w_res"))
    assert a["step"] == b["step"] == 2
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    opt_a, opt_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert opt_a.keys() == opt_b.keys()
    assert all(
        torch.equal(opt_a[i][k], opt_b[i][k]) for i in opt_a for k in ("step", "exp_avg", "exp_avg_sq")
    )
    shipped = [load_file(p / "transformer.safetensors") for p in (full, resumed)]
    assert all(torch.equal(shipped[0][k], shipped[1][k]) for k in shipped[0])
    history = json.loads((resumed / "config.json").read_text())["extra"]["training"]
    assert [run["resumed_at"] for run in history] == [1]
    with pytest.raises(ValueError, match="use another --work-dir"):
        train_stylevar_sft(tmp_path / "x", tmp_path / "w_res", cfg, data, init=str(full), progress=False)


@torch.no_grad()
def two_triplet_loss(model: torch.nn.Module, vqvae: torch.nn.Module) -> float:
    data = WorldTriplets(PRESET.image_size, length=2)
    target, content, style = (torch.stack(x) for x in zip(data[0], data[1], strict=True))
    return float(sft_loss(model.train(), vqvae, target, content, style))  # type: ignore[arg-type]


@pytest.mark.slow
def test_loss_falls_when_overfitting_two_triplets(tmp_path: Path) -> None:
    cfg = StyleVARTrainConfig(steps=8, batch_size=2, lr=2e-3, warmup=0.0, log_every=1, ckpt_every=8)
    data = WorldTriplets(PRESET.image_size, length=2)
    out = train_stylevar_sft(
        tmp_path / "out", tmp_path / "work", cfg, data, init="stylevar-tiny", progress=False
    )
    before = two_triplet_loss(*sft_start("stylevar-tiny").build(cfg.seed))
    after = two_triplet_loss(*load_stylevar_models(resolve_stylevar_files(out)))
    assert after < before - 0.3, (before, after)


def test_trained_folder_loads_in_transfer_pipeline_and_transfers(tmp_path: Path) -> None:
    cfg = StyleVARTrainConfig(steps=1, batch_size=1)
    data = WorldTriplets(PRESET.image_size, length=4)
    out = train_stylevar_sft(
        tmp_path / "out", tmp_path / "work", cfg, data, init="stylevar-tiny", progress=False
    )
    files = resolve_stylevar_files(out)
    assert files.variant == "sft" and files.preset == PRESET
    assert files.history[0]["origin"] == {"kind": "preset", "init": "stylevar-tiny"}
    assert files.history[0]["data"] == data.description
    with pytest.raises(WeightsError, match="has no grpo checkpoint"):
        resolve_stylevar_files(out, "grpo")
    pipe = TransferPipeline.load(out, device="cpu")
    t = world.triplet(3, "eval", 80)
    result = pipe(
        t.content.image, t.style.image, sampling=SamplingConfig(cfg=0, top_k=30, top_p=0.96, seed=0)
    )
    assert result.images[0].size == (PRESET.image_size, PRESET.image_size)
    assert result.metadata[0]["model"] == "stylevar-tiny-sft"
    assert np.asarray(result.images[0]).std() > 0


def test_init_from_a_var_folder_copies_its_weights_and_vqvae(tmp_path: Path) -> None:
    var_preset = get_preset("var-tiny", VARPreset)
    assert stylevar_preset_for_var(var_preset) == PRESET
    var, vqvae = VAR(var_preset.transformer), VQVAE(var_preset.vae)
    var.init_weights(torch.Generator().manual_seed(5))
    folder = tmp_path / "var"
    folder.mkdir()
    torch.save(var.state_dict(), folder / "var.pth")
    torch.save(vqvae.state_dict(), folder / "vae.pth")
    layout = {"preset": "var-tiny", "transformer": "var.pth", "vae": "vae.pth"}
    (folder / LAYOUT_FILE).write_text(json.dumps(layout))
    start = sft_start(str(folder))
    assert start.preset == PRESET and start.origin["kind"] == "var"
    model, got_vqvae = start.build(0)
    qkv = var.state_dict()["blocks.1.attn.mat_qkv.weight"]
    assert torch.equal(model.state_dict()["blocks.1.attn.mat_qkv_guide.weight"], qkv)
    assert torch.equal(model.state_dict()["blocks.1.attn.mat_qkv_target.weight"], qkv)
    pairs = zip(got_vqvae.state_dict().values(), vqvae.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_init_names_a_shipped_folder_before_a_preset() -> None:
    # `--init stylevar-demo` continues the shipped demo as `transfer --model stylevar-demo` samples it; it
    # silently started from random weights while the preset's name came first
    shipped = sft_start("stylevar-demo")
    assert shipped.origin["kind"] == "stylevar" and shipped.history
    random_demo = sft_start("random:stylevar-demo")
    assert random_demo.origin == {"kind": "preset", "init": "stylevar-demo"} and not random_demo.history
    assert random_demo.preset == shipped.preset
    assert sft_start("stylevar-tiny").origin["kind"] == "preset"  # no folder of that name: the preset
    with pytest.raises(ValueError, match="'nope' is not a StyleVAR preset"):
        sft_start("random:nope")


def test_init_and_size_refusals(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no StyleVAR preset fits the VAR preset 'var-d36'"):
        stylevar_preset_for_var(get_preset("var-d36", VARPreset))
    with pytest.raises(ValueError, match="neither a StyleVAR preset"):
        sft_start(str(tmp_path))
    data = WorldTriplets(32, length=2)
    with pytest.raises(ValueError, match="the triplets are 32 px; stylevar-tiny takes 64 px"):
        train_stylevar_sft(
            tmp_path / "o", tmp_path / "w", StyleVARTrainConfig.quick(), data, init="stylevar-tiny"
        )


# ---------------------------------------------------------------------------------------------------------
# CLI


@pytest.mark.slow
def test_cli_train_stylevar_sft_world_quick_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scalestyle.cli import main

    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["train", "stylevar-sft", "--world", "--quick", "--out", str(out), "--work-dir", str(work)]
    assert main([*argv, "--seed", "3"]) == 0
    assert "wrote the StyleVAR folder" in capsys.readouterr().err
    files = resolve_stylevar_files(out)
    assert files.preset == PRESET and files.history[-1]["config"]["steps"] == 2
    assert files.history[-1]["config"]["seed"] == 3
    assert len((work / "stylevar_sft_log.jsonl").read_text().splitlines()) == 2
    content, style = (world.triplet(0, "eval", 64).content.image, world.triplet(1, "eval", 64).style.image)
    content.save(tmp_path / "c.png")
    style.save(tmp_path / "s.png")
    argv = [
        "transfer",
        "--model",
        str(out),
        "--content",
        str(tmp_path / "c.png"),
        "--style",
        str(tmp_path / "s.png"),
    ]
    assert main([*argv, "--top-k", "30", "--out", str(tmp_path / "o.png"), "--quiet"]) == 0
    assert Image.open(tmp_path / "o.png").size == (PRESET.image_size, PRESET.image_size)


def test_cli_train_stylevar_sft_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scalestyle.cli import main

    base = ["train", "stylevar-sft", "--out", str(tmp_path / "o"), "--work-dir", str(tmp_path / "w")]
    cases = [
        ([*base, "--world"], "give --init"),
        ([*base, "--world", "--data", str(tmp_path)], "not allowed with argument"),
        (
            [*base, "--data", str(tmp_path), "--quick"],
            "no triplets found; expected the OmniStyle-150K layout",
        ),
        ([*base, "--world", "--init", str(tmp_path)], "neither a StyleVAR preset"),
        ([*base, "--world", "--quick", "--lr", "2"], "lr must be in (0, 1), got 2.0"),
        ([*base, "--data", str(tmp_path), "--world-remix", "0.5"], "--world-remix is a share of --world"),
        ([*base, "--world", "--quick", "--world-remix", "1"], "--world-remix must be in [0, 1), got 1.0"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()
