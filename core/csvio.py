"""CSV reading and writing for batch translation of files.

Input files come from spreadsheets and exports: UTF-8 with or without a byte
order mark, or a legacy single-byte encoding such as cp1252, delimited by
commas, semicolons, tabs or pipes, with quoted fields that may hold line
breaks. ``detect_format`` works out how to read a file from its bytes,
``open_rows`` streams its rows one at a time, and ``atomic_writer`` writes an
output file that appears under its final name only when it is complete.
"""

from __future__ import annotations

import codecs
import csv
import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import charset_normalizer

logger = logging.getLogger(__name__)

DELIMITERS = ",;\t|"
DEFAULT_DELIMITER = ","
DEFAULT_LINE_TERMINATOR = "\r\n"
SAMPLE_BYTES = 64 * 1024
READ_BLOCK_BYTES = 1024 * 1024
UTF8 = "utf-8"
UTF8_WITH_BOM = "utf-8-sig"

# Encodings whose byte order marks are recognised, longest mark first so the
# UTF-32 little-endian mark is not taken for the UTF-16 one it starts with.
BOM_ENCODINGS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, UTF8_WITH_BOM),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)

# Western single-byte encodings preferred when charset-normalizer scores them
# as well as its first guess. Its first guess on short Latin text is often a
# Central European or Baltic code page that decodes the same bytes
# differently, while spreadsheet exports are most often cp1252.
PREFERRED_LEGACY_ENCODINGS = ("cp1252", "latin_1")
CHAOS_TOLERANCE = 0.01

DELIMITER_NAMES = {
    "tab": "\t",
    "\\t": "\t",
    "comma": ",",
    "semicolon": ";",
    "pipe": "|",
}


class CsvFormatError(ValueError):
    """A CSV file cannot be read as requested: bad encoding, delimiter or data."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class CsvFormat:
    """The encoding, delimiter, byte order mark and line ending of a CSV file."""

    encoding: str
    delimiter: str
    had_bom: bool = False
    line_terminator: str = DEFAULT_LINE_TERMINATOR

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CsvFormat:
        """Build a format from the dict ``to_dict`` returned."""
        return cls(
            encoding=str(values["encoding"]),
            delimiter=str(values["delimiter"]),
            had_bom=bool(values.get("had_bom", False)),
            line_terminator=str(
                values.get("line_terminator") or DEFAULT_LINE_TERMINATOR
            ),
        )


# Encodings.


def _read_head(path: Path, size: int = SAMPLE_BYTES) -> bytes:
    with path.open("rb") as handle:
        return handle.read(size)


def _bom_encoding(head: bytes) -> str | None:
    for bom, encoding in BOM_ENCODINGS:
        if head.startswith(bom):
            return encoding
    return None


def first_invalid_utf8_offset(path: Path) -> int | None:
    """Return the byte offset of the first invalid UTF-8 sequence, or None.

    The file is decoded in blocks of ``READ_BLOCK_BYTES``, so memory use does
    not grow with the file.
    """
    decoder = codecs.getincrementaldecoder(UTF8)()
    offset = 0
    with path.open("rb") as handle:
        while block := handle.read(READ_BLOCK_BYTES):
            # Error positions count from the start of the unfinished sequence
            # that the decoder holds over from the previous block.
            held_over = len(decoder.getstate()[0])
            try:
                decoder.decode(block)
            except UnicodeDecodeError as error:
                return offset - held_over + error.start
            offset += len(block)
        held_over = len(decoder.getstate()[0])
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as error:
            return offset - held_over + error.start
    return None


def _legacy_sample(path: Path, invalid_offset: int) -> bytes:
    """Return the head of the file plus the bytes around the first invalid one."""
    head = _read_head(path)
    if invalid_offset < len(head):
        return head
    window_start = max(0, invalid_offset - SAMPLE_BYTES // 2)
    with path.open("rb") as handle:
        handle.seek(window_start)
        window = handle.read(SAMPLE_BYTES)
    return head + b"\n" + window


def _guess_legacy_encoding(sample: bytes) -> str | None:
    # NOTE: with only a few non-ASCII bytes the guess can be wrong. The cp1252
    # file "a\nSmörgåsbord\n" is read as big5. --encoding overrides the guess.
    matches = list(charset_normalizer.from_bytes(sample))
    if not matches:
        return None

    best_chaos = min(match.chaos for match in matches)
    close = [match for match in matches if match.chaos <= best_chaos + CHAOS_TOLERANCE]
    for preferred in PREFERRED_LEGACY_ENCODINGS:
        for match in close:
            if preferred in match.could_be_from_charset:
                return preferred
    return str(close[0].encoding)


def detect_encoding(path: Path) -> tuple[str, bool]:
    """Return the codec that reads ``path`` and whether the file has a BOM.

    A byte order mark decides. Otherwise bytes that are valid UTF-8 are read
    as UTF-8, and anything else is guessed by charset-normalizer from a
    sample, preferring cp1252 or Latin-1 when they fit as well as its first
    guess. Raises ``CsvFormatError`` when no encoding fits.
    """
    bom_encoding = _bom_encoding(_read_head(path, 4))
    if bom_encoding is not None:
        return bom_encoding, True

    invalid_offset = first_invalid_utf8_offset(path)
    if invalid_offset is None:
        return UTF8, False

    encoding = _guess_legacy_encoding(_legacy_sample(path, invalid_offset))
    if encoding is None:
        raise CsvFormatError(
            f"{str(path)!r} is not valid UTF-8 (first invalid byte at offset "
            f"{invalid_offset}) and its encoding could not be detected. Pass "
            "the encoding with --encoding, for example --encoding cp1252."
        )
    logger.info("%s is not UTF-8, so it is read as %s", path, encoding)
    return encoding, False


def resolve_encoding(name: str, path: Path) -> tuple[str, bool]:
    """Validate an encoding given by the user and return the codec and BOM flag.

    UTF-8 becomes ``utf-8-sig`` when the file starts with a BOM, so the mark
    does not end up in the first column name.
    """
    try:
        codec = codecs.lookup(name).name
    except LookupError:
        raise CsvFormatError(
            f"Unknown encoding {name!r}. Use a Python codec name such as "
            "utf-8, cp1252 or latin-1."
        ) from None

    head = _read_head(path, 4)
    if codec in {UTF8, UTF8_WITH_BOM}:
        had_bom = head.startswith(codecs.BOM_UTF8)
        return (UTF8_WITH_BOM if had_bom else UTF8), had_bom
    return codec, _bom_encoding(head) == codec


# Delimiters and line endings.


def parse_delimiter(value: str) -> str:
    """Turn a ``--delimiter`` value (``;``, ``tab``, ``\\t``) into one character."""
    delimiter = DELIMITER_NAMES.get(value.lower(), value)
    if len(delimiter) != 1 or delimiter in {'"', "\r", "\n"}:
        raise CsvFormatError(
            f"Invalid delimiter {value!r}. Give one character such as ',' or ';', "
            "or one of the names tab, comma, semicolon, pipe."
        )
    return delimiter


def _complete_lines(sample: str) -> str:
    """Cut a text sample after its last line break so no line is truncated."""
    end = max(sample.rfind("\n"), sample.rfind("\r"))
    return sample[: end + 1] if end > 0 else sample


def _first_line(sample: str) -> str:
    return sample.splitlines()[0] if sample else ""


def _most_frequent_delimiter(line: str) -> str | None:
    counts = {delimiter: line.count(delimiter) for delimiter in DELIMITERS}
    delimiter, count = max(counts.items(), key=lambda pair: pair[1])
    return delimiter if count else None


def sniff_delimiter(sample: str) -> str:
    """Return the delimiter of a CSV text sample, one of ``DELIMITERS``.

    ``csv.Sniffer`` decides when its result also occurs in the header line.
    Otherwise the candidate that occurs most often in the header line wins,
    and a header with none of them is a single column, read with a comma.
    """
    sample = _complete_lines(sample)
    header = _first_line(sample)
    try:
        sniffed = csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        sniffed = None

    if sniffed is not None and sniffed in header:
        return sniffed
    return _most_frequent_delimiter(header) or DEFAULT_DELIMITER


def detect_line_terminator(sample: str) -> str:
    """Return the line ending of the first line of a sample: CRLF, LF or CR."""
    for index, character in enumerate(sample):
        if character == "\n":
            return "\n"
        if character == "\r":
            return "\r\n" if sample[index + 1 : index + 2] == "\n" else "\r"
    return DEFAULT_LINE_TERMINATOR


def _read_text_sample(path: Path, encoding: str) -> str:
    try:
        with path.open(encoding=encoding, errors="replace", newline="") as handle:
            return handle.read(SAMPLE_BYTES)
    except LookupError:
        raise CsvFormatError(f"Unknown encoding {encoding!r}.") from None


def detect_format(
    path: Path, encoding: str | None = None, delimiter: str | None = None
) -> CsvFormat:
    """Detect the format of ``path``. A given encoding or delimiter wins."""
    if encoding is None:
        codec, had_bom = detect_encoding(path)
    else:
        codec, had_bom = resolve_encoding(encoding, path)

    sample = _read_text_sample(path, codec)
    if delimiter is None:
        delimiter = sniff_delimiter(sample)
    else:
        delimiter = parse_delimiter(delimiter)
    return CsvFormat(
        encoding=codec,
        delimiter=delimiter,
        had_bom=had_bom,
        line_terminator=detect_line_terminator(sample),
    )


# Reading.


def _checked_rows(
    reader: Any, path: Path, csv_format: CsvFormat
) -> Iterator[list[str]]:
    """Yield the reader's rows, turning decode and parse errors into one type."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except UnicodeDecodeError as error:
            raise CsvFormatError(
                f"{str(path)!r} is not valid {csv_format.encoding} near line "
                f"{reader.line_num + 1} (byte {error.object[error.start]:#04x}). "
                "Pass the right encoding with --encoding, for example "
                "--encoding cp1252 or --encoding utf-8."
            ) from None
        except csv.Error as error:
            raise CsvFormatError(
                f"{str(path)!r} is not valid CSV at line {reader.line_num}: "
                f"{error}. Fix the file or check --delimiter."
            ) from None
        yield row


@contextmanager
def open_rows(
    path: Path, csv_format: CsvFormat
) -> Iterator[tuple[list[str], Iterator[list[str]]]]:
    """Open a CSV file and yield its header and an iterator over the other rows.

    Rows are read one at a time. A blank line is an empty list. Raises
    ``CsvFormatError`` for a file without a header row, and later, while
    iterating, for bytes the encoding cannot decode or malformed CSV.
    """
    with path.open(encoding=csv_format.encoding, newline="") as handle:
        # strict: a quote left open at the end of the file is an error
        # instead of one field that silently swallows every following row.
        reader = csv.reader(handle, delimiter=csv_format.delimiter, strict=True)
        rows = _checked_rows(reader, path, csv_format)
        header = next(rows, None)
        if header is None:
            raise CsvFormatError(
                f"{str(path)!r} is empty. Give a CSV file whose first row contains "
                "the column names."
            )
        yield header, rows


# Writing.


def output_encoding(csv_format: CsvFormat) -> str:
    """Return the codec of output files: UTF-8, with a BOM if the input had one."""
    return UTF8_WITH_BOM if csv_format.had_bom else UTF8


def _create_temporary(path: Path) -> tuple[Path, int]:
    """Create a hidden file beside ``path`` and return its path and descriptor."""
    while True:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
        try:
            # Mode 0o666 lets the umask decide the permissions, as for any
            # file a program creates with open().
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        return temporary, descriptor


@contextmanager
def atomic_writer(path: Path, csv_format: CsvFormat) -> Iterator[Any]:
    """Yield a ``csv.writer`` for ``path`` that only replaces it on success.

    Rows go to a hidden temporary file in the same folder, which is renamed to
    ``path`` with ``os.replace`` when the block ends without an exception and
    deleted when it raises, so ``path`` never holds a partial file.
    """
    temporary, descriptor = _create_temporary(path)
    try:
        with open(
            descriptor, "w", encoding=output_encoding(csv_format), newline=""
        ) as handle:
            yield csv.writer(
                handle,
                delimiter=csv_format.delimiter,
                lineterminator=csv_format.line_terminator,
            )
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# Glossaries.

GLOSSARY_HEADER = ("source", "target")


def _glossary_rows(path: Path) -> Iterator[list[str]]:
    """Yield the rows of a glossary CSV file.

    Decode and parse errors are raised again with a message about the glossary,
    because the messages of ``detect_format`` and ``_checked_rows`` suggest
    --encoding and --delimiter, which only apply to the input file.
    """
    encoding = "an unknown encoding"
    try:
        csv_format = detect_format(path)
        encoding = csv_format.encoding
        with path.open(encoding=encoding, newline="") as handle:
            reader = csv.reader(handle, delimiter=csv_format.delimiter)
            yield from _checked_rows(reader, path, csv_format)
    except CsvFormatError:
        raise CsvFormatError(
            f"Cannot read the glossary file {str(path)!r} as CSV in {encoding}. "
            "Save it as UTF-8 CSV with one source term and target term per row."
        ) from None


def read_glossary(path: Path) -> dict[str, str]:
    """Read a two-column glossary CSV file: a source term, then its target term.

    The encoding and delimiter are detected as for input files. A first row
    ``source,target`` (any case) is a header and skipped, blank rows are
    skipped and whitespace around each term is removed. Raises
    ``CsvFormatError`` naming the file and row for a row without exactly two
    cells, a source term given twice, or a file without entries.
    """
    glossary: dict[str, str] = {}
    first_rows: dict[str, int] = {}
    for number, row in enumerate(_glossary_rows(path), 1):
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        if number == 1 and tuple(cell.lower() for cell in cells) == GLOSSARY_HEADER:
            continue
        if len(cells) != 2:
            raise CsvFormatError(
                f"Glossary file {str(path)!r} has {len(cells)} cells in row "
                f"{number}. Give each row a source term and a target term, "
                "such as cloud,nube."
            )
        source, target = cells
        if source in first_rows:
            raise CsvFormatError(
                f"Glossary file {str(path)!r} gives the source term {source!r} "
                f"twice, in rows {first_rows[source]} and {number}. Keep one."
            )
        first_rows[source] = number
        glossary[source] = target
    if not glossary:
        raise CsvFormatError(
            f"Glossary file {str(path)!r} has no entries. Add rows such as "
            "cloud,nube, or remove --glossary."
        )
    return glossary
