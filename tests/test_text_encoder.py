from __future__ import annotations

import hashlib
import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from scalestyle.config import get_preset
from scalestyle.models.demo_text import BUILD_FILES, build_demo_text_encoder, demo_vocabulary
from scalestyle.models.text_encoder import PackedText, TextEncoder, pack_padded, resolve_text_source

WORDS = ["a", "an", "in", "style", "star", "circle", "neon", "blueprint"]
GENERIC = ["the", "of", "with", "and", "on", "red", "blue", "small", "large", ",", "."]
PROMPTS = [
    "a neon star",
    "A blueprint circle, in the style of neon",
    "",
    "star",
    "a small red circle with a large blue star on the blueprint.",
]


@pytest.fixture(scope="module")
def offline() -> Iterator[None]:
    """No network: the hub's offline switch, and any socket connection fails loudly."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted in an offline test")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        yield


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_text_encoder(WORDS + GENERIC, tmp_path_factory.mktemp("demo_t5"))


@pytest.fixture(scope="module")
def encoder(demo_dir: Path, offline: None) -> TextEncoder:
    return TextEncoder.from_pretrained(demo_dir, max_length=32)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# --- build ---------------------------------------------------------------------------------------------


def test_build_is_small_deterministic_and_order_free(demo_dir: Path, tmp_path: Path) -> None:
    assert sorted(p.name for p in demo_dir.iterdir()) == sorted(BUILD_FILES)
    assert all(p.stat().st_size < 2_000_000 for p in demo_dir.iterdir())
    rng_before = torch.get_rng_state()
    again = build_demo_text_encoder([*reversed(GENERIC + WORDS), "STAR"], tmp_path / "again")
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's global RNG is left alone
    assert _digests(again) == _digests(demo_dir)
    # Rebuilding into the same directory overwrites it with the same bytes.
    assert _digests(build_demo_text_encoder(WORDS + GENERIC, again)) == _digests(demo_dir)
    other = build_demo_text_encoder(WORDS + GENERIC, tmp_path / "seed1", seed=1)
    assert _digests(other)["model.safetensors"] != _digests(demo_dir)["model.safetensors"]
    assert _digests(other)["tokenizer.json"] == _digests(demo_dir)["tokenizer.json"]


def test_build_config_and_vocabulary(demo_dir: Path) -> None:
    cfg = json.loads((demo_dir / "config.json").read_text())
    assert cfg["model_type"] == "t5"
    sizes = (cfg["d_model"], cfg["num_layers"], cfg["num_heads"], cfg["d_kv"], cfg["d_ff"])
    assert sizes == (128, 2, 4, 32, 256)
    assert cfg["vocab_size"] == 3 + len(WORDS) + len(GENERIC)
    tokens = demo_vocabulary(["Neon", "star", "neon", "ＳＴＡＲ"])  # NFKC folds the full-width letters
    assert tokens == ["<pad>", "</s>", "<unk>", "neon", "star"]


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["sci-fi"], "not a single token"),
        (["two words"], "not a single token"),
        (["  "], "empty"),
        (["</s>"], "special token"),
        ([], "empty"),
    ],
)
def test_build_rejects_bad_vocabulary(words: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        build_demo_text_encoder(words, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_build_refuses_foreign_files(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"old")
    with pytest.raises(FileExistsError, match=r"pytorch_model\.bin"):
        build_demo_text_encoder(WORDS, tmp_path)


# --- load and encode -----------------------------------------------------------------------------------


def test_encode_lens_count_eos_and_match_the_tokenizer(encoder: TextEncoder) -> None:
    packed = encoder.encode(PROMPTS)
    tok = encoder.tokenizer
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    assert packed.lens == tuple(len(i) for i in ids)
    assert all(i[-1] == tok.eos_token_id for i in ids)
    assert packed.lens[2] == 1  # "" is just the EOS
    assert packed.lens[1] == 10  # 8 words + "," + EOS
    assert encoder.width == 128
    assert packed.feats_NE.shape == (sum(packed.lens), 128)
    assert packed.feats_NE.dtype == torch.float32
    assert torch.isfinite(packed.feats_NE).all()
    # An ordinary tensor, not an inference tensor: training layers can save it for backward.
    assert not packed.feats_NE.is_inference()
    layer = torch.nn.Linear(128, 4)
    layer(packed.feats_NE).sum().backward()
    assert layer.weight.grad is not None


def test_features_do_not_depend_on_padding_or_chunking(encoder: TextEncoder) -> None:
    batch = encoder.encode(PROMPTS)
    alone = PackedText.concat([encoder.encode([p]) for p in PROMPTS])
    chunked = encoder.encode(PROMPTS, batch_size=2)
    encoder.padding = "max_length"
    try:
        padded = encoder.encode(PROMPTS)
    finally:
        encoder.padding = "longest"
    for other in (alone, chunked, padded):
        assert other.lens == batch.lens
        torch.testing.assert_close(other.feats_NE, batch.feats_NE, rtol=1e-5, atol=1e-5)


def test_unknown_words_are_unk(encoder: TextEncoder) -> None:
    tok = encoder.tokenizer
    assert tok("zebra neon")["input_ids"] == [tok.unk_token_id, tok.convert_tokens_to_ids("neon"), 1]
    packed = encoder.encode(["zebra neon star", "okapi neon star"])
    assert packed.lens == (4, 4)
    a, b = packed.feats_NE.split(4)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_different_captions_give_different_features(encoder: TextEncoder) -> None:
    packed = encoder.encode(["a neon star", "a blueprint star", "a neon circle"])
    rows = packed.feats_NE.split(list(packed.lens))
    for i in range(3):
        for j in range(i + 1, 3):
            assert (rows[i] - rows[j]).abs().max() > 0.1


def test_truncation_keeps_the_eos(encoder: TextEncoder) -> None:
    packed = encoder.encode(["neon star " * 40, "star"])
    assert packed.lens == (32, 2)
    ids, _ = encoder.tokenize(["neon star " * 40])
    assert ids.shape == (1, 32) and ids[0, -1].item() == encoder.tokenizer.eos_token_id


def test_encode_rejects_a_bare_string_and_empty_batches(encoder: TextEncoder) -> None:
    with pytest.raises(TypeError, match="single string"):
        encoder.encode("a neon star")
    with pytest.raises(ValueError, match="no prompts"):
        encoder.encode([])
    with pytest.raises(ValueError, match="batch_size"):
        encoder.encode(["star"], batch_size=0)


def test_default_max_length_comes_from_the_tokenizer(demo_dir: Path, offline: None) -> None:
    enc = TextEncoder.from_pretrained(str(demo_dir), dtype=torch.float64)
    assert enc.max_length == 32
    assert enc.dtype == torch.float64 and enc.device == torch.device("cpu")
    assert enc.encode(["star"]).feats_NE.dtype == torch.float32  # `.float()` as upstream


def test_loads_a_t5_tokenizer_with_legacy(demo_dir: Path, tmp_path: Path, offline: None) -> None:
    """The class real Flan-T5 checkpoints use (T5TokenizerFast; one T5Tokenizer in transformers 5)."""
    from transformers import T5Tokenizer

    for name in ("config.json", "model.safetensors"):
        shutil.copy(demo_dir / name, tmp_path / name)
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0), ("▁a", -1.0), ("▁neon", -1.0)]
    pieces += [("▁star", -1.0), ("s", -3.0), ("t", -3.0), ("a", -3.0), ("r", -3.0)]
    T5Tokenizer(vocab=pieces, extra_ids=0).save_pretrained(tmp_path)
    enc = TextEncoder.from_pretrained(tmp_path, max_length=16)
    assert "T5Tokenizer" in type(enc.tokenizer).__name__
    packed = enc.encode(["a neon star", ""])
    assert packed.lens == (4, 1)


# --- sources and errors --------------------------------------------------------------------------------


def test_missing_and_non_t5_directories_fail_clearly(demo_dir: Path, tmp_path: Path, offline: None) -> None:
    messages = []
    with pytest.raises(FileNotFoundError, match="does not exist") as caught:
        TextEncoder.from_pretrained(tmp_path / "nope")
    messages.append(str(caught.value))
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="not a directory") as caught:
        TextEncoder.from_pretrained(tmp_path / "file")
    messages.append(str(caught.value))
    with pytest.raises(ValueError, match=r"no config\.json") as caught:
        TextEncoder.from_pretrained(tmp_path)
    messages.append(str(caught.value))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type 'bert'") as caught:
        TextEncoder.from_pretrained(tmp_path)
    messages.append(str(caught.value))
    shutil.copy(demo_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(ValueError, match="no weights") as caught:
        TextEncoder.from_pretrained(tmp_path)
    messages.append(str(caught.value))
    shutil.copy(demo_dir / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="no tokenizer") as caught:
        TextEncoder.from_pretrained(tmp_path)
    messages.append(str(caught.value))
    assert all("\n" not in m for m in messages)


def test_hub_ids_fail_clearly_offline(offline: None) -> None:
    with pytest.raises(FileNotFoundError, match="neither a local directory nor loadable"):
        TextEncoder.from_pretrained("scalestyle-tests/no-such-model", local_files_only=True)


def test_resolve_text_source(tmp_path: Path) -> None:
    assert resolve_text_source("google/flan-t5-xl") == "google/flan-t5-xl"
    assert resolve_text_source(tmp_path) == tmp_path
    assert resolve_text_source(str(tmp_path)) == tmp_path
    assert resolve_text_source("./weights/flan-t5-xl") == Path("weights/flan-t5-xl")
    assert resolve_text_source("weights/t5/flan-t5-xl") == Path("weights/t5/flan-t5-xl")
    with pytest.raises(ValueError, match="unknown bundled"):
        resolve_text_source("bundled:nope")


def test_bundled_demo_source_resolves_or_says_how_to_build_it() -> None:
    source = get_preset("demo").text.source
    try:
        path = resolve_text_source(source)
    except FileNotFoundError as err:
        assert "build_demo_text_encoder" in str(err)
    else:
        assert isinstance(path, Path) and path.parts[-2:] == ("assets", "demo_t5")


# --- PackedText ----------------------------------------------------------------------------------------


def test_packed_text_rows_concat_cu_seqlens() -> None:
    feats = torch.arange(6 * 2, dtype=torch.float32).view(6, 2)
    packed = PackedText(feats, (1, 3, 2))
    assert packed.batch == 3
    cu = packed.cu_seqlens()
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 1, 4, 6]
    picked = packed.rows([2, 0, 2])
    assert picked.lens == (2, 1, 2)
    assert torch.equal(picked.feats_NE, torch.cat([feats[4:6], feats[0:1], feats[4:6]]))
    both = PackedText.concat([packed, picked])
    assert both.lens == (1, 3, 2, 2, 1, 2) and both.cu_seqlens()[-1].item() == 11
    assert torch.equal(both.rows([3, 4, 5]).feats_NE, picked.feats_NE)
    assert packed.to("cpu", torch.float64).feats_NE.dtype == torch.float64


def test_packed_text_validates_and_pack_padded_keeps_real_tokens() -> None:
    with pytest.raises(ValueError, match="at least one token"):
        PackedText(torch.zeros(2, 4), (2, 0))
    with pytest.raises(ValueError, match="sum"):
        PackedText(torch.zeros(3, 4), (2, 2))
    with pytest.raises(ValueError, match="2-D"):
        PackedText(torch.zeros(3), (3,))
    feats = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    packed = pack_padded(feats, mask)
    assert packed.lens == (2, 3)
    assert torch.equal(packed.feats_NE, torch.cat([feats[0, :2], feats[1, :3]]))


def test_added_tokens_are_tokens_of_their_own_and_change_nothing_else(encoder: TextEncoder) -> None:
    assert not encoder.spells("<sks>") and encoder.spells("neon star")
    vocab = len(encoder.tokenizer)
    vectors = {t: encoder.new_token_embedding(t) for t in ("<sks>", "<zwx>")}
    assert torch.equal(vectors["<sks>"], encoder.new_token_embedding("<sks>"))  # the token's text seeds it
    assert not torch.allclose(vectors["<sks>"], vectors["<zwx>"])
    added = encoder.with_tokens(vectors)
    assert len(encoder.tokenizer) == vocab and not encoder.spells("<sks>")  # the original is untouched
    assert added.spells("<sks>") and added.spells("a <ZWX> star")  # the tokenizer's lowercasing applies
    # captions without the added tokens: the same features to the bit (inputs_embeds is T5's own lookup)
    plain = ["a neon star", "A blueprint circle, in the style of neon", "star"]
    a, b = encoder.encode(plain), added.encode(plain)
    assert a.lens == b.lens and torch.equal(a.feats_NE, b.feats_NE)
    sks, zwx = added.encode(["a <sks> star"]), added.encode(["a <zwx> star"])
    assert sks.lens == zwx.lens == (4,)
    assert not torch.allclose(sks.feats_NE, zwx.feats_NE, atol=1e-3)  # two identifiers, two meanings
    ids, _ = added.tokenize(["a <sks> star"])
    assert ids[0, 1] == vocab  # one token, not three <unk>
    with pytest.raises(ValueError, match="already has them"):
        added.with_tokens({"<sks>": vectors["<sks>"]})
    with pytest.raises(ValueError, match="already has them"):
        encoder.with_tokens({"star": vectors["<sks>"]})
    with pytest.raises(ValueError, match="one word"):
        encoder.with_tokens({"<a b>": vectors["<sks>"]})
