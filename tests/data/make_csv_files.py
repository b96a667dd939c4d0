"""Write the CSV files that the batch command-line tests read.

The output is deterministic, so running it again rewrites the same bytes::

    python tests/data/make_csv_files.py

- ``products_en_bom.csv``: 220 rows of English text, UTF-8 with a byte order
  mark, comma-delimited, CRLF line endings. Cells hold quotes, commas, line
  breaks, emoji, numbers and accented letters; some text cells are empty.
- ``reviews_es_cp1252.csv``: 40 rows of Spanish text in cp1252, delimited by
  semicolons, with cells that hold semicolons, quotes and the euro sign.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
ENGLISH_FILE = DATA_DIR / "products_en_bom.csv"
SPANISH_FILE = DATA_DIR / "reviews_es_cp1252.csv"
ENGLISH_ROWS = 220
SPANISH_ROWS = 40
SEED = 20240611

ENGLISH_SENTENCES = (
    "The kettle boils water in two minutes.",
    "Please return the form before Friday.",
    "Our café opens at 8 a.m. on weekdays.",
    'The label says "handle with care".',
    "Screws, nails, and bolts are sold separately.",
    "This jacket is waterproof 🌧️ and light.",
    "Delivery takes 3 to 5 working days.",
    "The naïve design won an award in 2019.",
    "Free shipping on orders over $50!",
    "Batteries not included.",
    "Fits most doors up to 45 mm thick.",
    "Made from recycled plastic ♻️.",
    "Ask our staff about the crème brûlée.",
    "Keep out of reach of children.",
    "Available in red, green and blue.",
    "The façade was painted last spring.",
    "Our best seller since 1998 👍",
    "Wash at 30 °C, do not tumble dry.",
    "Each box holds 12 items.",
    "Warranty: 2 years, parts and labour.",
)
CATEGORIES = (
    "kitchen",
    "tools, hardware",
    'say "hello"',
    "",
    "garden",
    "clothing & shoes",
    "café / bar",
)

SPANISH_SENTENCES = (
    "El café estaba muy rico; volveré pronto.",
    "La señora pagó 12 € por el menú del día.",
    "Un servicio “excelente”, sin duda.",
    "El niño comió paella y pidió más.",
    "Mañana abrimos a las nueve.",
    "¿Dónde está la estación de tren?",
    "Habitación limpia, cama cómoda, buen precio.",
    "No me gustó el ruido de la calle.",
)


def _english_text(rng: random.Random, row: int) -> str:
    """Return the text cell of one row; about one row in nine is empty."""
    if row % 9 == 4:
        return ""
    if row % 37 == 10:
        return "   "
    sentence = ENGLISH_SENTENCES[row % len(ENGLISH_SENTENCES)]
    variant = row % 5
    if variant == 1:
        return f"{sentence} Item {row}, size {rng.randint(1, 99)}."
    if variant == 2:
        return f"{sentence}\nSecond line of row {row}."
    if variant == 3:
        return f'"{sentence}" said customer #{row}.'
    return sentence


def write_english(path: Path = ENGLISH_FILE) -> None:
    """Write the UTF-8 file with a BOM and an id, text, category and price."""
    rng = random.Random(SEED)
    with path.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(["id", "text", "category", "price"])
        for row in range(ENGLISH_ROWS):
            price = "" if row % 11 == 0 else f"{rng.uniform(0.5, 500):.2f}"
            category = CATEGORIES[rng.randrange(len(CATEGORIES))]
            writer.writerow([row + 1, _english_text(rng, row), category, price])


def write_spanish(path: Path = SPANISH_FILE) -> None:
    """Write the cp1252 file delimited by semicolons."""
    with path.open("w", encoding="cp1252", newline="") as handle:
        writer = csv.writer(handle, delimiter=";", lineterminator="\r\n")
        writer.writerow(["código", "reseña", "puntuación"])
        for row in range(SPANISH_ROWS):
            sentence = SPANISH_SENTENCES[row % len(SPANISH_SENTENCES)]
            text = "" if row % 10 == 7 else f"{sentence} Nº {row}"
            writer.writerow([f"R{row:03d}", text, f"{row % 5 + 1};5"])


if __name__ == "__main__":
    write_english()
    write_spanish()
