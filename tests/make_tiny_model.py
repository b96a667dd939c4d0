"""Build tiny random-weight MarianMT checkpoints in the opus-mt hub layout.

The checkpoints load with ``MarianTokenizer`` and ``MarianMTModel`` exactly
like a downloaded ``Helsinki-NLP/opus-mt-SRC-TGT`` folder, but hold a few
thousand parameters, so tests can run the real loading and generation code in
seconds. The output is nonsense; only its shape and determinism matter.

``--shape opus-mt`` builds a random-weight model with the layer sizes and
vocabulary size of the real opus-mt checkpoints (74 M parameters), for speed
measurements. Usable as a function (``build_tiny_model``) and as a command::

    python tests/make_tiny_model.py OUT_DIR en es --seed 0 --target-tokens es,fr
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Bump when the layout or the weights change, so stamped folders are rebuilt.
BUILDER_VERSION = 1
STAMP_NAME = ".tiny-model.json"

VOCAB_SIZE_PER_SIDE = 250
MAX_POSITIONS = 512


@dataclass(frozen=True)
class ModelShape:
    """Layer sizes of a built model.

    ``vocab_size`` 0 keeps the joint sentencepiece vocabulary, about 500
    tokens. A larger value appends filler tokens that the tokenizer never
    produces, so the embedding and output layers get the real size.
    """

    d_model: int
    layers: int
    attention_heads: int
    ffn_dim: int
    vocab_size: int = 0


SHAPES = {
    "tiny": ModelShape(d_model=32, layers=2, attention_heads=2, ffn_dim=64),
    # Helsinki-NLP/opus-mt-en-de: 6 + 6 layers, 8 heads, shared 58101 tokens.
    "opus-mt": ModelShape(
        d_model=512, layers=6, attention_heads=8, ffn_dim=2048, vocab_size=58101
    ),
}

EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
PAD_TOKEN = "<pad>"

CORPORA: dict[str, tuple[str, ...]] = {
    "en": (
        "The morning train to the coast leaves at seven.",
        "My neighbour grows tomatoes and beans in her garden.",
        "Could you send me the invoice before Friday?",
        "The museum is closed on Mondays during the winter.",
        "We walked along the river until the sun went down.",
        "Dr. Lewis checked the results twice before lunch.",
        "A cup of coffee costs 3.50 at the station kiosk.",
        "The children painted a large map of the world.",
        "Heavy rain is expected in the north this weekend.",
        "Please turn off the lights when you leave the office.",
        "Our team finished the project three days early.",
        "She reads a chapter of a novel every evening.",
        "The library has thousands of old newspapers.",
        "He forgot his umbrella at the restaurant again.",
        "Which bus goes to the airport from here?",
        "The recipe needs flour, butter, sugar and two eggs.",
        "They moved to a quiet village in the mountains.",
        "I would like a table for four people, please.",
        "The bridge was built more than a hundred years ago.",
        "Turn left at the bakery and walk straight ahead.",
        "Her sister teaches music at the local school.",
        "The meeting has been moved to Thursday afternoon.",
        "Birds were singing in the tall trees behind the house.",
        "This software translates short texts very quickly.",
        "Why did the shop raise its prices in June?",
        "The doctor said that I should drink more water.",
        "Every window in the old hotel faces the sea.",
        "We need new tyres before the long journey south.",
        "The farmer sold apples, pears and fresh cheese.",
        "It was cold, so we lit a fire in the kitchen.",
        "The students asked many questions after the lecture.",
        "Nobody knew where the old key had been hidden.",
    ),
    "es": (
        "El tren de la mañana a la costa sale a las siete.",
        "Mi vecina cultiva tomates y judías en su jardín.",
        "¿Podría enviarme la factura antes del viernes?",
        "El museo cierra los lunes durante el invierno.",
        "Caminamos junto al río hasta que se puso el sol.",
        "La Dra. López revisó los resultados dos veces.",
        "Un café cuesta 3,50 en el quiosco de la estación.",
        "Los niños pintaron un gran mapa del mundo.",
        "Se esperan lluvias fuertes en el norte este fin de semana.",
        "Por favor, apaga las luces al salir de la oficina.",
        "Nuestro equipo terminó el proyecto tres días antes.",
        "Ella lee un capítulo de una novela cada noche.",
        "La biblioteca tiene miles de periódicos antiguos.",
        "Él olvidó otra vez su paraguas en el restaurante.",
        "¿Qué autobús va al aeropuerto desde aquí?",
        "La receta lleva harina, mantequilla, azúcar y dos huevos.",
        "Se mudaron a un pueblo tranquilo en las montañas.",
        "Quisiera una mesa para cuatro personas, por favor.",
        "El puente se construyó hace más de cien años.",
        "Gire a la izquierda en la panadería y siga recto.",
        "Su hermana enseña música en la escuela del barrio.",
        "La reunión se ha trasladado al jueves por la tarde.",
        "Los pájaros cantaban en los árboles detrás de la casa.",
        "Este programa traduce textos cortos muy rápido.",
        "¿Por qué subió la tienda sus precios en junio?",
        "El médico dijo que debería beber más agua.",
        "Todas las ventanas del viejo hotel dan al mar.",
        "Necesitamos neumáticos nuevos antes del largo viaje.",
        "El granjero vendió manzanas, peras y queso fresco.",
        "Hacía frío, así que encendimos fuego en la cocina.",
        "Los estudiantes hicieron muchas preguntas tras la clase.",
        "Nadie sabía dónde se había escondido la llave.",
    ),
    "de": (
        "Der Morgenzug an die Küste fährt um sieben Uhr ab.",
        "Meine Nachbarin baut Tomaten und Bohnen im Garten an.",
        "Könnten Sie mir die Rechnung vor Freitag schicken?",
        "Das Museum ist im Winter montags geschlossen.",
        "Wir gingen am Fluss entlang, bis die Sonne unterging.",
        "Dr. Weber prüfte die Ergebnisse zweimal vor dem Essen.",
        "Ein Kaffee kostet 3,50 am Kiosk im Bahnhof.",
        "Die Kinder malten eine große Karte der Welt.",
        "Am Wochenende wird im Norden starker Regen erwartet.",
        "Bitte schalten Sie das Licht aus, wenn Sie gehen.",
        "Unser Team hat das Projekt drei Tage früher beendet.",
        "Sie liest jeden Abend ein Kapitel aus einem Roman.",
        "Die Bibliothek besitzt tausende alte Zeitungen.",
        "Er hat seinen Schirm wieder im Restaurant vergessen.",
        "Welcher Bus fährt von hier zum Flughafen?",
        "Für das Rezept braucht man Mehl, Butter, Zucker und Eier.",
        "Sie zogen in ein ruhiges Dorf in den Bergen.",
        "Ich hätte gern einen Tisch für vier Personen.",
        "Die Brücke wurde vor mehr als hundert Jahren gebaut.",
        "Biegen Sie an der Bäckerei links ab und gehen Sie geradeaus.",
        "Ihre Schwester unterrichtet Musik an der Schule.",
        "Die Besprechung wurde auf Donnerstagnachmittag verschoben.",
        "Vögel sangen in den hohen Bäumen hinter dem Haus.",
        "Diese Software übersetzt kurze Texte sehr schnell.",
        "Warum hat der Laden im Juni die Preise erhöht?",
        "Der Arzt sagte, ich solle mehr Wasser trinken.",
        "Jedes Fenster des alten Hotels blickt aufs Meer.",
        "Vor der langen Reise brauchen wir neue Reifen.",
        "Der Bauer verkaufte Äpfel, Birnen und frischen Käse.",
        "Es war kalt, also machten wir Feuer in der Küche.",
        "Die Studenten stellten nach der Vorlesung viele Fragen.",
        "Niemand wusste, wo der alte Schlüssel versteckt war.",
    ),
    "fr": (
        "Le train du matin pour la côte part à sept heures.",
        "Ma voisine cultive des tomates et des haricots.",
        "Pourriez-vous m'envoyer la facture avant vendredi ?",
        "Le musée est fermé le lundi pendant l'hiver.",
        "Nous avons marché le long du fleuve jusqu'au soir.",
        "Le Dr Martin a vérifié les résultats deux fois.",
        "Un café coûte 3,50 au kiosque de la gare.",
        "Les enfants ont peint une grande carte du monde.",
        "De fortes pluies sont attendues dans le nord ce week-end.",
        "Merci d'éteindre la lumière en quittant le bureau.",
        "Notre équipe a terminé le projet trois jours plus tôt.",
        "Elle lit un chapitre d'un roman chaque soir.",
        "La bibliothèque possède des milliers de vieux journaux.",
        "Il a encore oublié son parapluie au restaurant.",
        "Quel bus va à l'aéroport depuis ici ?",
        "La recette demande de la farine, du beurre et du sucre.",
        "Ils ont déménagé dans un village calme en montagne.",
        "Je voudrais une table pour quatre personnes, s'il vous plaît.",
        "Le pont a été construit il y a plus de cent ans.",
        "Tournez à gauche à la boulangerie puis allez tout droit.",
        "Sa sœur enseigne la musique à l'école du quartier.",
        "La réunion a été déplacée à jeudi après-midi.",
        "Les oiseaux chantaient dans les grands arbres.",
        "Ce logiciel traduit très vite les textes courts.",
        "Pourquoi le magasin a-t-il augmenté ses prix en juin ?",
        "Le médecin a dit que je devais boire plus d'eau.",
        "Chaque fenêtre du vieil hôtel donne sur la mer.",
        "Il nous faut des pneus neufs avant le long voyage.",
        "Le fermier vendait des pommes, des poires et du fromage.",
        "Il faisait froid, alors nous avons fait du feu.",
        "Les étudiants ont posé beaucoup de questions.",
        "Personne ne savait où la vieille clé était cachée.",
    ),
}

# Used for languages without their own corpus: mixed Latin-script words,
# digits and punctuation, so that most European text maps to known pieces.
GENERIC_CORPUS: tuple[str, ...] = (
    "abc def ghi jkl mno pqr stu vwx yz",
    "ABC DEF GHI JKL MNO PQR STU VWX YZ",
    "0 1 2 3 4 5 6 7 8 9 10 25 100 2024 3.50 7,25",
    "a e i o u y á é í ó ú à è ì ò ù â ê î ô û ä ë ï ö ü ñ ç ã õ ø å æ ß",
    ". , ; : ! ? ' \" ( ) [ ] - / % & + = « » ¿ ¡ …",
    "casa mesa porta livro agua tempo cidade amigo noite sol",
    "hus bord dør bok vann tid by venn natt sol",
    "talo pöytä ovi kirja vesi aika kaupunki ystävä yö aurinko",
    "dom stol drzwi książka woda czas miasto przyjaciel noc słońce",
    "huis tafel deur boek water tijd stad vriend nacht zon",
    "casa tavolo porta libro acqua tempo città amico notte sole",
    "ház asztal ajtó könyv víz idő város barát éjszaka nap",
    "ev masa kapı kitap su zaman şehir arkadaş gece güneş",
    "dům stůl dveře kniha voda čas město přítel noc slunce",
    "The quick brown fox jumps over the lazy dog.",
    "Numbers, names and places: Anna, Marco, Oslo, Lisboa, Praha.",
)


def checkpoint_folder_name(source: str, target: str) -> str:
    """Return ``opus-mt-SRC-TGT`` with a region tag written ``pt_BR``."""
    return f"opus-mt-{source.replace('-', '_')}-{target.replace('-', '_')}"


def corpus_for(language: str) -> tuple[str, ...]:
    """Return the embedded training lines for a language code."""
    base = language.replace("_", "-").split("-", 1)[0].lower()
    return CORPORA.get(base, GENERIC_CORPUS)


def build_tiny_model(
    out_dir: Path,
    source: str,
    target: str,
    *,
    seed: int = 0,
    init_std: float | None = None,
    target_tokens: Sequence[str] = (),
    shape: str = "tiny",
) -> Path:
    """Write a tiny ``opus-mt-SRC-TGT`` checkpoint under ``out_dir``.

    Returns the checkpoint folder. A folder whose stamp records the same
    arguments is reused as it is. ``target_tokens`` such as ``["es", "fr"]``
    add ``>>es<<`` and ``>>fr<<`` to the vocabulary, as in multi-target
    checkpoints. ``init_std`` overrides the weight initialisation scale of
    0.02; a larger value makes the output depend strongly on the input.
    ``shape`` is a key of ``SHAPES``.
    """
    if shape not in SHAPES:
        raise ValueError(
            f"Unknown model shape {shape!r}. Use one of {', '.join(SHAPES)}."
        )
    out_dir = Path(out_dir)
    folder = out_dir / checkpoint_folder_name(source, target)
    stamp = {
        "builder_version": BUILDER_VERSION,
        "source": source,
        "target": target,
        "seed": seed,
        "init_std": init_std,
        "target_tokens": list(target_tokens),
    }
    # The tiny stamp keeps its earlier content, so existing folders are reused.
    if shape != "tiny":
        stamp["shape"] = asdict(SHAPES[shape])
    if _read_stamp(folder) == stamp:
        logger.debug("Reusing tiny checkpoint %s", folder)
        return folder

    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=out_dir))
    try:
        _write_checkpoint(
            staging, source, target, seed, init_std, target_tokens, SHAPES[shape]
        )
        (staging / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Built tiny checkpoint %s", folder)
    return folder


def _read_stamp(folder: Path) -> dict[str, object] | None:
    required = [STAMP_NAME, "config.json", "model.safetensors"]
    if not all((folder / name).is_file() for name in required):
        return None
    try:
        return dict(json.loads((folder / STAMP_NAME).read_text()))
    except (OSError, ValueError):
        return None


def _write_checkpoint(
    folder: Path,
    source: str,
    target: str,
    seed: int,
    init_std: float | None,
    target_tokens: Sequence[str],
    shape: ModelShape,
) -> None:
    source_spm = _train_sentencepiece(corpus_for(source), seed)
    target_spm = _train_sentencepiece(corpus_for(target), seed)
    (folder / "source.spm").write_bytes(source_spm)
    (folder / "target.spm").write_bytes(target_spm)

    vocab = _joint_vocab(source_spm, target_spm, target_tokens, shape.vocab_size)
    _write_json(folder / "vocab.json", vocab)
    _write_json(
        folder / "tokenizer_config.json",
        {
            "source_lang": source,
            "target_lang": target,
            "model_max_length": MAX_POSITIONS,
            "separate_vocabs": False,
            "tokenizer_class": "MarianTokenizer",
        },
    )
    _write_json(
        folder / "special_tokens_map.json",
        {"eos_token": EOS_TOKEN, "unk_token": UNK_TOKEN, "pad_token": PAD_TOKEN},
    )
    _save_model(folder, len(vocab), seed, init_std, shape)


def _train_sentencepiece(lines: Sequence[str], seed: int) -> bytes:
    import sentencepiece

    # Training is deterministic with one thread and a fixed generator seed.
    sentencepiece.set_random_generator_seed(seed)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="unigram",
        vocab_size=VOCAB_SIZE_PER_SIDE,
        hard_vocab_limit=False,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def _joint_vocab(
    source_spm: bytes,
    target_spm: bytes,
    target_tokens: Sequence[str],
    vocab_size: int = 0,
) -> dict[str, int]:
    """Build the shared Marian vocabulary: EOS 0, UNK 1, pieces, pad last.

    Filler tokens ``<fill-N>`` go before pad until ``vocab_size`` tokens.
    """
    import sentencepiece

    tokens = [EOS_TOKEN, UNK_TOKEN]
    tokens += [f">>{code}<<" for code in target_tokens]
    for proto in (source_spm, target_spm):
        processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
        for piece_id in range(processor.get_piece_size()):
            if processor.is_control(piece_id) or processor.is_unknown(piece_id):
                continue
            tokens.append(processor.id_to_piece(piece_id))
    unique = list(dict.fromkeys(tokens))
    fillers = max(0, vocab_size - len(unique) - 1)
    unique += [f"<fill-{index}>" for index in range(fillers)]
    unique.append(PAD_TOKEN)
    return {token: index for index, token in enumerate(unique)}


def _save_model(
    folder: Path,
    vocab_size: int,
    seed: int,
    init_std: float | None,
    shape: ModelShape,
) -> None:
    from transformers import MarianConfig

    pad_id = vocab_size - 1
    config = MarianConfig(
        vocab_size=vocab_size,
        decoder_vocab_size=vocab_size,
        d_model=shape.d_model,
        encoder_layers=shape.layers,
        decoder_layers=shape.layers,
        encoder_attention_heads=shape.attention_heads,
        decoder_attention_heads=shape.attention_heads,
        encoder_ffn_dim=shape.ffn_dim,
        decoder_ffn_dim=shape.ffn_dim,
        max_position_embeddings=MAX_POSITIONS,
        activation_function="swish",
        scale_embedding=True,
        init_std=0.02 if init_std is None else init_std,
        pad_token_id=pad_id,
        eos_token_id=0,
        forced_eos_token_id=0,
        decoder_start_token_id=pad_id,
        architectures=["MarianMTModel"],
    )
    save_random_model(folder, config, seed)


def save_random_model(folder: Path, config: Any, seed: int) -> None:
    """Write a MarianMTModel of ``config`` with weights drawn from ``seed``.

    The generation config is the one opus-mt checkpoints on the hub carry:
    beam 4, EOS forced at the length limit and the pad token never generated.
    """
    import torch
    from transformers import GenerationConfig, MarianMTModel

    pad_id = config.pad_token_id
    # fork_rng keeps the caller's global random state unchanged.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MarianMTModel(config)
    model.generation_config = GenerationConfig(
        bad_words_ids=[[pad_id]],
        bos_token_id=0,
        decoder_start_token_id=pad_id,
        eos_token_id=0,
        forced_eos_token_id=0,
        max_length=config.max_position_embeddings,
        num_beams=4,
        pad_token_id=pad_id,
        renormalize_logits=True,
    )
    model.save_pretrained(folder)


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line: build one checkpoint and print its folder."""
    parser = argparse.ArgumentParser(
        description="Write a tiny random-weight opus-mt checkpoint for tests."
    )
    parser.add_argument("out_dir", type=Path, help="folder to write into")
    parser.add_argument("source", help="source language code, such as en")
    parser.add_argument("target", help="target language code, such as es")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--init-std",
        type=float,
        default=None,
        help="standard deviation of the initial weights (default 0.02)",
    )
    parser.add_argument(
        "--target-tokens",
        default="",
        help="comma-separated target codes added as >>xx<< tokens, such as es,fr",
    )
    parser.add_argument(
        "--shape",
        choices=sorted(SHAPES),
        default="tiny",
        help="layer sizes: tiny (default) or opus-mt (74 M parameters)",
    )
    args = parser.parse_args(argv)

    codes = [code.strip() for code in args.target_tokens.split(",") if code.strip()]
    folder = build_tiny_model(
        args.out_dir,
        args.source,
        args.target,
        seed=args.seed,
        init_std=args.init_std,
        target_tokens=codes,
        shape=args.shape,
    )
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
