"""A random-weight checkpoint with the shape of Helsinki-NLP/opus-mt-en-de.

The benchmark needs the compute and memory cost of a real opus-mt model but no
network, so it builds one offline. Its MarianConfig is the hub model's:
d_model 512, 6 encoder and 6 decoder layers, 8 heads, feed-forward 2048, a
shared vocabulary of 58,101 tokens and 512 static sinusoidal positions. The
weights are random from a fixed seed, and the files follow the hub layout
(``source.spm``, ``target.spm``, ``vocab.json``, ``config.json``,
``generation_config.json``, ``model.safetensors``). The output is nonsense,
so the benchmark forces every engine to the same output length
(``BENCH_FORCED_OUTPUT_TOKENS``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.make_tiny_model import (
    EOS_TOKEN,
    MAX_POSITIONS,
    PAD_TOKEN,
    SHAPES,
    UNK_TOKEN,
    checkpoint_folder_name,
    save_random_model,
)

logger = logging.getLogger(__name__)

# Bump when the layout or the weights change, so cached folders are rebuilt.
BUILDER_VERSION = 1
STAMP_NAME = ".bench-model.json"

SOURCE_LANG = "en"
TARGET_LANG = "de"

# The layer sizes of Helsinki-NLP/opus-mt-en-de, shared with
# ``tests/make_tiny_model.py --shape opus-mt``. That builder trains its
# tokenizer on a few dozen embedded sentences, so real text splits into far
# more tokens than opus-mt's; this one trains on the benchmark corpus.
SHAPE = SHAPES["opus-mt"]
VOCAB_SIZE = SHAPE.vocab_size

# Fields of the hub's config.json that MarianConfig stores but never reads:
# transformers always gives Marian static sinusoidal positions.
HUB_ONLY_FIELDS: dict[str, Any] = {
    "static_position_embeddings": True,
    "normalize_before": False,
}

# Pieces of the sentencepiece model. The sentences available offline support
# only a few thousand, so placeholder tokens fill the vocabulary up to
# VOCAB_SIZE and the output layer keeps its size.
SPM_PIECES = 4000


def build_bench_model(
    out_dir: Path, sentences: Sequence[str], *, seed: int = 0
) -> Path:
    """Write ``opus-mt-en-de`` under ``out_dir`` and return its folder.

    ``sentences`` train both sentencepiece models. A folder whose stamp
    records the same builder version, seed and sentences is reused.
    """
    folder = Path(out_dir) / checkpoint_folder_name(SOURCE_LANG, TARGET_LANG)
    stamp = {
        "builder_version": BUILDER_VERSION,
        "seed": seed,
        "sentences": _digest(sentences),
    }
    if _read_stamp(folder) == stamp:
        logger.info("Reusing the benchmark checkpoint %s", folder)
        return folder

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _write_checkpoint(staging, sentences, seed)
        (staging / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Built the benchmark checkpoint %s", folder)
    return folder


def _digest(sentences: Sequence[str]) -> str:
    import hashlib

    hasher = hashlib.sha256()
    for sentence in sentences:
        hasher.update(sentence.encode())
        hasher.update(b"\n")
    return hasher.hexdigest()


def _read_stamp(folder: Path) -> dict[str, object] | None:
    required = [STAMP_NAME, "config.json", "model.safetensors"]
    if not all((folder / name).is_file() for name in required):
        return None
    try:
        return dict(json.loads((folder / STAMP_NAME).read_text()))
    except (OSError, ValueError):
        return None


def _write_checkpoint(folder: Path, sentences: Sequence[str], seed: int) -> None:
    spm = _train_sentencepiece(sentences, seed)
    # One English model serves both sides: the target side only decodes the
    # random output, whose text is not measured.
    (folder / "source.spm").write_bytes(spm)
    (folder / "target.spm").write_bytes(spm)

    vocab = joint_vocab(spm, VOCAB_SIZE)
    _write_json(folder / "vocab.json", vocab)
    _write_json(
        folder / "tokenizer_config.json",
        {
            "source_lang": SOURCE_LANG,
            "target_lang": TARGET_LANG,
            "model_max_length": MAX_POSITIONS,
            "separate_vocabs": False,
            "tokenizer_class": "MarianTokenizer",
        },
    )
    _write_json(
        folder / "special_tokens_map.json",
        {"eos_token": EOS_TOKEN, "unk_token": UNK_TOKEN, "pad_token": PAD_TOKEN},
    )
    _save_model(folder, len(vocab), seed)


def _train_sentencepiece(sentences: Sequence[str], seed: int) -> bytes:
    import sentencepiece

    sentencepiece.set_random_generator_seed(seed)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type="unigram",
        vocab_size=SPM_PIECES,
        hard_vocab_limit=False,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def joint_vocab(spm: bytes, size: int) -> dict[str, int]:
    """Build a Marian vocabulary of ``size`` tokens: EOS 0, UNK 1, pad last.

    The sentencepiece pieces come after UNK, then placeholder tokens fill the
    vocabulary up to ``size``.
    """
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_proto=spm)
    tokens = [EOS_TOKEN, UNK_TOKEN]
    for piece_id in range(processor.get_piece_size()):
        if processor.is_control(piece_id) or processor.is_unknown(piece_id):
            continue
        tokens.append(processor.id_to_piece(piece_id))
    unique = list(dict.fromkeys(tokens))
    if len(unique) + 1 > size:
        raise ValueError(
            f"The sentencepiece model has {len(unique)} pieces, more than a "
            f"vocabulary of {size} tokens can contain. Lower SPM_PIECES."
        )
    filler = size - 1 - len(unique)
    unique += [f"<unused{index}>" for index in range(filler)]
    unique.append(PAD_TOKEN)
    return {token: index for index, token in enumerate(unique)}


def _save_model(folder: Path, vocab_size: int, seed: int) -> None:
    from transformers import MarianConfig

    pad_id = vocab_size - 1
    config = MarianConfig(
        vocab_size=vocab_size,
        decoder_vocab_size=vocab_size,
        d_model=SHAPE.d_model,
        encoder_layers=SHAPE.layers,
        decoder_layers=SHAPE.layers,
        encoder_attention_heads=SHAPE.attention_heads,
        decoder_attention_heads=SHAPE.attention_heads,
        encoder_ffn_dim=SHAPE.ffn_dim,
        decoder_ffn_dim=SHAPE.ffn_dim,
        max_position_embeddings=MAX_POSITIONS,
        activation_function="swish",
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        bos_token_id=0,
        eos_token_id=0,
        forced_eos_token_id=0,
        decoder_start_token_id=pad_id,
        architectures=["MarianMTModel"],
        **HUB_ONLY_FIELDS,
    )
    save_random_model(folder, config, seed)


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
