"""The demo StyleVAR's foundations: the VQ-VAE and VAR trainers, the demo presets and the VAR model folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scalestyle.config import (
    STYLEVAR_ALPHAS,
    SamplingConfig,
    VARPreset,
    VQVAEConfig,
    get_preset,
    get_stylevar_preset,
)
from scalestyle.data import procedural as world
from scalestyle.models.stylevar import StyleVAR
from scalestyle.models.var import VAR
from scalestyle.models.vqvae import VQVAE
from scalestyle.pipeline import Pipeline
from scalestyle.train.demo_stylevar import DemoStyleVARTrainConfig, world_images
from scalestyle.train.var import VARTrainConfig, encode_targets, save_var_folder, train_var, var_loss
from scalestyle.train.vqvae import (
    VQVAEObjective,
    VQVAETrainConfig,
    build_vqvae,
    quantize_train,
    restart_dead_codes,
    train_vqvae,
)

# a VQ-VAE small enough for many training steps a second: downsample 2, 16 px images, an 8x8 latent
SMALL_VQ = VQVAEConfig(vocab_size=32, z_channels=4, ch=32, ch_mult=(1, 2), num_res_blocks=1, num_scales=4)
SMALL_GRIDS = [(1, 1), (2, 2), (4, 4), (8, 8)]
TINY = get_preset("var-tiny", VARPreset)
MiB = 2**20


def noise_images(step: int, batch_size: int, g: torch.Generator) -> torch.Tensor:
    return torch.rand(batch_size, 3, 16, 16, generator=g) * 2 - 1


class Killed(Exception):
    pass


def killed_at(step_to_die: int, batches):  # type: ignore[no-untyped-def]
    """``batches`` that raise when asked for ``step_to_die``: a run killed just after a checkpoint."""

    def fn(step: int, batch_size: int, g: torch.Generator):  # type: ignore[no-untyped-def]
        if step == step_to_die:
            raise Killed
        return batches(step, batch_size, g)

    return fn


def assert_same_checkpoint(a: Path, b: Path) -> None:
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert sa["step"] == sb["step"]
    for key, value in sa["model"].items():
        assert torch.equal(value, sb["model"][key]), key
    for pid, state in sa["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, sb["optimizer"]["state"][pid][name]), (pid, name)


# ---- VQ-VAE --------------------------------------------------------------------------------------------


def test_training_quantizer_gives_the_inference_indices_and_values() -> None:
    vqvae = build_vqvae(SMALL_VQ, 0)
    f = vqvae.encode_features(noise_images(0, 3, torch.Generator().manual_seed(0)))
    indices, f_hat = vqvae.quantize.quantize(f, SMALL_GRIDS)
    q = quantize_train(vqvae.quantize, f, SMALL_GRIDS, beta=0.25)
    assert torch.allclose(q.f_hat_BdHW, f_hat, atol=1e-6)
    for si, idx in enumerate(indices):
        assert torch.equal(q.hits_SV[si], torch.bincount(idx.flatten(), minlength=32).float())
    assert q.residuals_Nd.shape == (3 * sum(h * w for h, w in SMALL_GRIDS), 4)
    # the straight-through latent passes the decoder's gradient to the encoder; the VQ loss, the codebook's
    q.f_hat_BdHW.sum().backward(retain_graph=True)
    assert vqvae.encoder.conv_in.weight.grad is not None and vqvae.quantize.embedding.weight.grad is None
    q.vq_loss.backward()
    assert vqvae.quantize.embedding.weight.grad is not None
    assert vqvae.quantize.embedding.weight.grad.abs().sum() > 0


def test_dead_codes_restart_on_residuals_with_fresh_optimizer_state() -> None:
    vqvae = build_vqvae(SMALL_VQ, 0)
    q = vqvae.quantize
    opt = torch.optim.AdamW(vqvae.parameters())
    q.embedding.weight.sum().backward()
    opt.step()
    with torch.no_grad():
        q.ema_vocab_hit_SV.zero_()
        q.ema_vocab_hit_SV[2, :5] = 1.0  # codes 0-4 used at one scale, the rest dead
    before = q.embedding.weight.detach().clone()
    residuals = torch.randn(7, 4)
    n = restart_dead_codes(q, opt, residuals, margin=0.5, generator=torch.Generator().manual_seed(0))
    assert n == 27
    w = q.embedding.weight.detach()
    assert torch.equal(w[:5], before[:5])
    assert all(any(torch.equal(row, r) for r in residuals) for row in w[5:])
    assert opt.state[q.embedding.weight]["exp_avg"][5:].abs().sum() == 0
    assert opt.state[q.embedding.weight]["exp_avg"][:5].abs().sum() > 0
    assert (q.ema_vocab_hit_SV[:, 5:] == 0.5).all()


def test_vqvae_loss_falls_on_two_world_images() -> None:
    img = world_images(0, 2, torch.Generator().manual_seed(0))[0][:, :, ::4, ::4]  # 16 px
    objective = VQVAEObjective(build_vqvae(SMALL_VQ, 0), SMALL_GRIDS, VQVAETrainConfig())
    opt = torch.optim.Adam(objective.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = objective(img)[0]["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_vqvae_resume_after_a_kill_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    # restarts every step, so the codebook EMA and the restarts' draws are part of what must resume
    cfg = VQVAETrainConfig(steps=4, batch_size=2, log_every=1, ckpt_every=2, warmup=1, restart_every=1)
    train_vqvae(SMALL_VQ, cfg, noise_images, SMALL_GRIDS, tmp_path / "whole", progress=False)
    with pytest.raises(Killed):
        train_vqvae(SMALL_VQ, cfg, killed_at(3, noise_images), SMALL_GRIDS, tmp_path / "cut", progress=False)
    train_vqvae(SMALL_VQ, cfg, noise_images, SMALL_GRIDS, tmp_path / "cut", progress=False)
    assert_same_checkpoint(tmp_path / "whole" / "vqvae.ckpt", tmp_path / "cut" / "vqvae.ckpt")
    rows = (tmp_path / "whole" / "vqvae_log.jsonl").read_text().splitlines()
    assert len(rows) == 4 and '"usage"' in rows[-1] and '"restarted"' in rows[-1]


def test_vqvae_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="restart_every"):
        VQVAETrainConfig(restart_every=-1)
    with pytest.raises(ValueError, match="beta"):
        VQVAETrainConfig(beta=-0.1)
    with pytest.raises(ValueError, match="num_scales"):
        train_vqvae(SMALL_VQ, VQVAETrainConfig(steps=1), noise_images, SMALL_GRIDS[1:], Path("unused"))


# ---- VAR -----------------------------------------------------------------------------------------------


def tiny_vqvae() -> VQVAE:
    return build_vqvae(TINY.vae, 0).eval()


def labelled(step: int, batch_size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    img = torch.rand(batch_size, 3, 64, 64, generator=g) * 2 - 1
    return img, torch.randint(TINY.transformer.num_classes, (batch_size,), generator=g)


def test_var_loss_falls_on_two_images() -> None:
    model = VAR(TINY.transformer)
    model.init_weights(torch.Generator().manual_seed(0))
    img, labels = labelled(0, 2, torch.Generator().manual_seed(0))
    inputs, target = encode_targets(tiny_vqvae(), img, model)
    assert target.shape == (2, TINY.transformer.num_tokens) and inputs.shape[1] == target.shape[1] - 1
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    weights = torch.full((target.shape[1],), 1 / target.shape[1])
    losses = []
    for _ in range(10):
        out = var_loss(model, inputs, target, labels, weights, label_smoothing=0.1)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"]))
    assert losses[-1] < 0.8 * losses[0]


def test_var_resume_after_a_kill_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    cfg = VARTrainConfig(steps=4, batch_size=2, log_every=1, ckpt_every=2, warmup=1, class_drop=0.5)
    vq = tiny_vqvae()
    train_var(TINY.transformer, cfg, vq, labelled, tmp_path / "whole", progress=False)
    with pytest.raises(Killed):
        train_var(TINY.transformer, cfg, vq, killed_at(3, labelled), tmp_path / "cut", progress=False)
    train_var(TINY.transformer, cfg, vq, labelled, tmp_path / "cut", progress=False)
    assert_same_checkpoint(tmp_path / "whole" / "var.ckpt", tmp_path / "cut" / "var.ckpt")


def test_var_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="class_drop"):
        VARTrainConfig(class_drop=1.0)
    with pytest.raises(ValueError, match="scale_weighting"):
        VARTrainConfig(scale_weighting="pixel")


def test_var_folder_loads_with_the_pipeline_and_generates_by_class(tmp_path: Path) -> None:
    model = VAR(TINY.transformer)
    model.init_weights(torch.Generator().manual_seed(0))
    vq = tiny_vqvae()
    folder = save_var_folder(tmp_path / "m", TINY, model, vq, extra={"note": "test"})
    assert (folder / "var.safetensors").stat().st_size < 0.6 * sum(
        v.numel() * v.element_size() for v in model.state_dict().values()
    )  # fp16
    pipe = Pipeline.load(folder, device="cpu")
    for key, value in model.state_dict().items():
        loaded = pipe.transformer.state_dict()[key]
        assert torch.equal(loaded, value.half().to(value.dtype) if value.is_floating_point() else value), key
    sampling = SamplingConfig(cfg=1.5, top_k=20, top_p=0.96, seed=0)
    images = pipe(class_label=[3, 7], sampling=sampling).images
    assert [im.size for im in images] == [(64, 64), (64, 64)]
    again = pipe(class_label=[3, 7], sampling=sampling).images
    assert [im.tobytes() for im in images] == [im.tobytes() for im in again]


def test_var_folder_needs_a_registered_preset(tmp_path: Path) -> None:
    other = VARPreset("not-registered", TINY.transformer, TINY.vae)
    model = VAR(TINY.transformer)
    with pytest.raises(ValueError, match="not-registered"):
        save_var_folder(tmp_path, other, model, tiny_vqvae())


# ---- the demo presets and recipe -----------------------------------------------------------------------


def state_bytes(model: torch.nn.Module, bytes_per_float: int) -> int:
    return sum(
        v.numel() * (bytes_per_float if v.is_floating_point() else v.element_size())
        for v in model.state_dict().values()
    )


def test_demo_presets_fit_the_file_budget_and_the_world() -> None:
    var_p, style_p = get_preset("var-demo", VARPreset), get_stylevar_preset("stylevar-demo")
    with torch.device("meta"):
        var, vq, style = VAR(var_p.transformer), VQVAE(var_p.vae), StyleVAR(style_p.transformer)
    assert state_bytes(var, 2) < 15 * MiB
    assert state_bytes(style, 2) < 15.5 * MiB
    assert state_bytes(vq, 4) < 15 * MiB
    assert var_p.image_size == style_p.image_size == 64
    assert var_p.transformer.patch_nums[-1] * var_p.vae.downsample == 64
    assert var_p.vae.num_scales == len(var_p.transformer.patch_nums)
    assert var_p.transformer.num_classes == len(world.CONTENTS)
    # the authors' alphas resampled to the demo's scales: same ends, still rising
    alphas = style_p.transformer.alphas
    assert (alphas[0], alphas[-1]) == (STYLEVAR_ALPHAS[0], STYLEVAR_ALPHAS[-1])
    assert list(alphas) == sorted(alphas) and style_p.vae == var_p.vae
    # the authors' top-k 900 must stay within the codebook
    assert var_p.vae.vocab_size >= 900


def test_recipe_checks_that_the_stylevar_preset_fits_its_var() -> None:
    with pytest.raises(ValueError, match="must share the VQ-VAE"):
        DemoStyleVARTrainConfig(stylevar_preset="stylevar-tiny")
    with pytest.raises(ValueError, match="classes"):
        DemoStyleVARTrainConfig(var_preset="var-tiny", stylevar_preset="stylevar-tiny")


def test_world_images_are_training_styles_labelled_by_content() -> None:
    g = torch.Generator().manual_seed(5)
    img, labels = world_images(3, 4, g)
    assert img.shape == (4, 3, 64, 64) and labels.dtype == torch.long
    assert int(labels.min()) >= 0 and int(labels.max()) < len(world.CONTENTS)
    img2, labels2 = world_images(3, 4, torch.Generator().manual_seed(5))
    assert torch.equal(img, img2) and torch.equal(labels, labels2)
    assert not torch.equal(world_images(4, 4, torch.Generator().manual_seed(5))[0], img)


def test_driver_status_reads_steps_usage_and_the_latest_runs_rate(tmp_path: Path) -> None:
    import importlib.util
    import json

    path = Path(__file__).resolve().parents[1] / "tools" / "train_demo_stylevar.py"
    spec = importlib.util.spec_from_file_location("train_demo_stylevar_tool", path)
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    rows = [
        {"time_s": 10.0, "step": 25, "loss": 1.0, "usage": 0.5, "usage_S": [0.1]},
        # resumed: the clock restarts, so only these two rows give the rate (2 s per step)
        {"time_s": 5.0, "step": 50, "loss": 0.7, "usage": 0.8, "usage_S": [0.2]},
        {"time_s": 55.0, "step": 75, "loss": 0.6, "usage": 0.9, "usage_S": [0.3]},
    ]
    (tmp_path / "vqvae_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = tool.status(tmp_path)
    assert "vqvae: step 75, 2.0 s/step lately" in text and "'usage': 0.9" in text
    assert "var: not started" in text and "var model folder: not yet" in text
    assert "stylevar-sft: not started" in text and "stylevar-remix: not started" in text
    # numbered remix stages are found by their logs, in their numeric order
    for i in (2, 10):
        (tmp_path / f"remix{i}").mkdir()
        (tmp_path / f"remix{i}" / "stylevar_sft_log.jsonl").write_text(json.dumps(rows[-1]) + "\n")
    text = tool.status(tmp_path)
    assert text.index("stylevar-remix2: step 75") < text.index("stylevar-remix10: step 75")
    assert "stylevar-remix: not started" not in text


@pytest.mark.slow
def test_recipe_runs_every_stage_and_writes_loadable_folders(tmp_path: Path) -> None:
    from scalestyle.train.demo_stylevar import train_demo_stylevar
    from scalestyle.transfer import TransferPipeline

    var_folder, stylevar_folder = train_demo_stylevar(
        tmp_path, DemoStyleVARTrainConfig.quick(), progress=False
    )
    for name in (
        "vqvae.ckpt",
        "var.ckpt",
        "stylevar_sft.ckpt",
        "sft2/stylevar_sft.ckpt",
        "remix1/stylevar_sft.ckpt",
    ):
        assert (tmp_path / name).is_file(), name
    assert stylevar_folder == tmp_path / "stylevar_remix1"
    history = json.loads((stylevar_folder / "config.json").read_text())["extra"]["training"]
    assert "trunks" in [h.get("stage") for h in history]  # the trunks' pretraining is on record
    # the remix stage continues stage 5 with its own seed, on named and remixed triplets
    assert history[-1]["origin"]["init"] == str(tmp_path / "stylevar_final")
    assert history[-1]["config"]["seed"] == 1 and "remix" in history[-1]["data"]
    pipe = Pipeline.load(var_folder, device="cpu")
    assert pipe.preset.name == "var-demo"
    assert (var_folder / "var.safetensors").stat().st_size < 16 * MiB
    image = pipe(class_label=[0], sampling=SamplingConfig(cfg=1.5, top_k=900, top_p=0.96)).images[0]
    assert image.size == (64, 64)
    transfer = TransferPipeline.load(stylevar_folder, device="cpu")
    assert transfer.pipe.preset.name == "stylevar-demo"
    assert all(f.stat().st_size < 16 * MiB for f in stylevar_folder.iterdir())


def test_trunk_pretraining_moves_both_trunks_and_reports_accuracies() -> None:
    from scalestyle.models.stylevar import StyleVAR
    from scalestyle.train.demo_stylevar import TrunkPretrainConfig, pretrain_trunks

    with pytest.raises(ValueError, match="steps"):
        TrunkPretrainConfig(steps=0)
    model = StyleVAR(get_stylevar_preset("stylevar-tiny").transformer)
    model.init_weights(torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    acc = pretrain_trunks(model, TrunkPretrainConfig(steps=2, batch_size=4))
    assert set(acc) == {"content_acc", "style_acc"} and all(0 <= a <= 1 for a in acc.values())
    moved = {k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert moved == {"content_encoder", "style_encoder"}  # nothing but the trunks is trained
