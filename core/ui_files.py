"""Files uploaded through the browser UI: checks, storage and translated output.

The browser sends an upload to the Streamlit process, which keeps it only for
that session. So that a page refresh or a second tab can re-attach to a
running job, the UI saves each accepted upload under ``upload_root()``, next
to the disk cache, in a folder of its own (mode 700, files mode 600), and the
job metadata records the saved path. The translated file is written beside it
once the job is done. ``sweep_uploads`` deletes folders older than
``JOB_TTL``, when their jobs have expired too.

CSV files are read with ``core.csvio`` (encoding, delimiter and line ending
detection, streamed rows). A plain text file is one item per line and is
shown as a table with one column, ``text``.
"""

from __future__ import annotations

import csv
import itertools
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import csvio
from core.config import Settings, get_settings
from core.csvio import CsvFormat, CsvFormatError

logger = logging.getLogger(__name__)

PREVIEW_ROWS = 10
# Rows sampled to guess which column contains the text.
GUESS_SAMPLE_ROWS = 200

UPLOAD_DIR_NAME = "ui-uploads"
FOLDER_MODE = 0o700
FILE_MODE = 0o600
KIND_CSV = "csv"
KIND_TEXT = "text"
CSV_SUFFIXES = (".csv", ".tsv")
TEXT_SUFFIXES = (".txt",)
TEXT_FILE_COLUMN = "text"
# Column names preselected as the text column, best first.
TEXT_COLUMN_NAMES = (
    "text",
    "source",
    "source_text",
    "sentence",
    "content",
    "body",
    "description",
    "message",
    "comment",
    "review",
    "title",
)
LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LETTER = re.compile(r"[^\W\d_]")
_FOLDER_NAME = re.compile(r"^[0-9a-f]{32}$")


class UploadError(Exception):
    """An upload that cannot be translated; ``message`` states what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Upload:
    """An accepted upload saved on the server, and how to read it."""

    path: Path
    file_name: str
    kind: str
    csv_format: CsvFormat
    header: list[str]
    rows: int
    size: int
    trailing_newline: bool = False

    def to_meta(self) -> dict[str, Any]:
        """Return the job metadata that lets another session re-attach."""
        return {
            "input_path": str(self.path),
            "input_size": self.size,
            "input_mtime_ns": self.path.stat().st_mtime_ns,
            **self.csv_format.to_dict(),
            "file_name": self.file_name,
            "file_kind": self.kind,
            "trailing_newline": self.trailing_newline,
            "rows": self.rows,
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Upload:
        """Rebuild an upload from ``to_meta``'s output; the header is read again."""
        path = Path(str(meta["input_path"]))
        upload = cls(
            path=path,
            file_name=str(meta["file_name"]),
            kind=str(meta["file_kind"]),
            csv_format=CsvFormat.from_dict(meta),
            header=[],
            rows=int(meta["rows"]),
            size=int(meta["input_size"]),
            trailing_newline=bool(meta.get("trailing_newline")),
        )
        with open_rows(upload) as (header, _):
            return cls(**{**upload.__dict__, "header": header})


# Storage.


def upload_root(settings: Settings | None = None) -> Path:
    """Return the folder holding saved uploads.

    ``UI_UPLOAD_DIR`` when set, else ``ui-uploads`` beside ``CACHE_DIR``.
    """
    settings = settings or get_settings()
    if settings.ui_upload_dir is not None:
        return settings.ui_upload_dir
    return settings.cache_dir.parent / UPLOAD_DIR_NAME


def is_saved_upload(path: Path, settings: Settings | None = None) -> bool:
    """True when ``path`` is a file inside one folder of ``upload_root()``."""
    root = upload_root(settings).resolve()
    resolved = path.resolve()
    return resolved.parent.parent == root and bool(
        _FOLDER_NAME.match(resolved.parent.name)
    )


def _new_folder(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True, mode=FOLDER_MODE)
    os.chmod(root, FOLDER_MODE)
    folder = root / secrets.token_hex(16)
    folder.mkdir(mode=FOLDER_MODE)
    return folder


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with open(descriptor, "wb") as handle:
        handle.write(data)


def sweep_uploads(max_age: float, settings: Settings | None = None) -> int:
    """Delete upload folders not modified for ``max_age`` seconds; return how many."""
    root = upload_root(settings)
    if not root.is_dir():
        return 0
    cutoff = time.time() - max_age
    removed = 0
    for folder in root.iterdir():
        if not folder.is_dir() or not _FOLDER_NAME.match(folder.name):
            continue
        try:
            if folder.stat().st_mtime >= cutoff:
                continue
            shutil.rmtree(folder)
        except OSError as error:
            logger.warning("Could not delete the old upload %s: %s", folder, error)
            continue
        removed += 1
    if removed:
        logger.info("Deleted %d uploads older than %d s", removed, max_age)
    return removed


# Checking an upload.


def _kind_of(file_name: str) -> str:
    suffix = Path(file_name).suffix.lower()
    if suffix in CSV_SUFFIXES:
        return KIND_CSV
    if suffix in TEXT_SUFFIXES:
        return KIND_TEXT
    allowed = ", ".join(CSV_SUFFIXES + TEXT_SUFFIXES)
    raise UploadError(
        f"{file_name!r} is not a CSV or text file. Upload a file ending in "
        f"{allowed}: save a spreadsheet as CSV first."
    )


def _check_content(file_name: str, data: bytes) -> None:
    """Reject empty and binary files, such as a spreadsheet renamed to .csv."""
    if not data.strip():
        raise UploadError(f"{file_name!r} is empty. Upload a file with rows of text.")
    has_bom = any(data.startswith(bom) for bom, _ in csvio.BOM_ENCODINGS)
    if not has_bom and b"\x00" in data[: csvio.SAMPLE_BYTES]:
        raise UploadError(
            f"{file_name!r} is a binary file, not text. If it is an Excel "
            "workbook, open it and save it as 'CSV UTF-8'."
        )


def max_upload_mb() -> int:
    """Return the largest upload size in MiB (``UI_MAX_UPLOAD_MB``).

    start_services.sh passes the same value to Streamlit's
    ``server.maxUploadSize``, so the browser rejects a larger file first.
    """
    return get_settings().ui_max_upload_mb


def max_upload_rows() -> int:
    """Return the row limit per uploaded file (``UI_MAX_UPLOAD_ROWS``)."""
    return get_settings().ui_max_upload_rows


def check_size(file_name: str, size: int) -> None:
    """Raise ``UploadError`` for a file over ``UI_MAX_UPLOAD_MB``."""
    if size > max_upload_mb() * 1024 * 1024:
        raise UploadError(
            f"{file_name!r} is {size / 1024 / 1024:.1f} MiB; the limit is "
            f"{max_upload_mb()} MiB (UI_MAX_UPLOAD_MB). Split the file, or "
            "translate it with app_batch_celery.py on the server."
        )


def save_upload(
    file_name: str, data: bytes, settings: Settings | None = None
) -> Upload:
    """Check an upload, save it on the server and count its rows.

    Raises ``UploadError`` for a wrong file type, a binary or empty file, an
    encoding or CSV syntax that cannot be read, a cell over
    ``MAX_TEXT_CHARS`` or more than ``MAX_UPLOAD_ROWS`` rows. Nothing is kept
    on disk then.
    """
    settings = settings or get_settings()
    file_name = Path(file_name).name or "upload.csv"
    kind = _kind_of(file_name)
    check_size(file_name, len(data))
    _check_content(file_name, data)

    folder = _new_folder(upload_root(settings))
    path = folder / f"input{Path(file_name).suffix.lower()}"
    try:
        _write_private(path, data)
        upload = _inspect(path, file_name, kind, len(data), settings)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    logger.info(
        "Saved the upload %s (%d bytes, %d rows) as %s",
        file_name,
        len(data),
        upload.rows,
        path,
    )
    return upload


def _detect_format(path: Path, file_name: str, kind: str) -> CsvFormat:
    try:
        if kind == KIND_CSV:
            return csvio.detect_format(path)
        encoding, had_bom = csvio.detect_encoding(path)
    except CsvFormatError:
        raise UploadError(
            f"The encoding of {file_name!r} could not be detected. Save it as "
            "UTF-8 ('CSV UTF-8' in a spreadsheet) and upload it again."
        ) from None
    with path.open(encoding=encoding, errors="replace", newline="") as handle:
        sample = handle.read(csvio.SAMPLE_BYTES)
    return CsvFormat(
        encoding=encoding,
        delimiter=csvio.DEFAULT_DELIMITER,
        had_bom=had_bom,
        line_terminator=csvio.detect_line_terminator(sample),
    )


def _inspect(
    path: Path, file_name: str, kind: str, size: int, settings: Settings
) -> Upload:
    csv_format = _detect_format(path, file_name, kind)
    upload = Upload(path, file_name, kind, csv_format, [], 0, size)
    max_chars = settings.max_text_chars
    rows = 0
    with open_rows(upload) as (header, row_iterator):
        for row in row_iterator:
            rows += 1
            if rows > max_upload_rows():
                raise UploadError(
                    f"{file_name!r} has more than {max_upload_rows():,} rows. Split "
                    "it into smaller files, or translate it with "
                    "app_batch_celery.py on the server."
                )
            longest = max((len(cell) for cell in row), default=0)
            if longest > max_chars:
                raise UploadError(
                    f"Row {rows} of {file_name!r} has a cell of {longest:,} "
                    f"characters; the limit is {max_chars:,} (MAX_TEXT_CHARS). "
                    "Split or shorten that cell."
                )
    if kind == KIND_CSV and rows == 0:
        raise UploadError(
            f"{file_name!r} has a header row but no data rows. Upload a file "
            "with one row per text."
        )
    return Upload(
        path,
        file_name,
        kind,
        csv_format,
        header,
        rows,
        size,
        trailing_newline=kind == KIND_TEXT
        and _read_text(upload).endswith(("\n", "\r")),
    )


# Reading rows.


def _read_error(upload: Upload, line: int, error: Exception) -> UploadError:
    """Turn a decode or parse error into a message for the person uploading.

    ``csvio`` raises ``CsvFormatError`` from None, so its cause is in
    ``__context__``, and its own message names the saved path and command-line
    options, which mean nothing in the browser.
    """
    cause = error.__context__ if isinstance(error, CsvFormatError) else error
    if isinstance(cause, UnicodeDecodeError):
        return UploadError(
            f"{upload.file_name!r} is not valid {upload.csv_format.encoding} text "
            f"near line {line}. Save it as UTF-8 ('CSV UTF-8' in a spreadsheet) "
            "and upload it again."
        )
    if isinstance(cause, csv.Error):
        return UploadError(
            f"{upload.file_name!r} is not valid CSV near line {line}: {cause}. "
            "Check the quotes in that line, or save the file again from the "
            "spreadsheet."
        )
    return UploadError(
        f"{upload.file_name!r} has no header row. Upload a CSV file whose first "
        "row holds the column names."
    )


def _read_text(upload: Upload) -> str:
    """Decode a whole text file; it is at most ``UI_MAX_UPLOAD_MB``."""
    data = upload.path.read_bytes()
    try:
        return data.decode(upload.csv_format.encoding)
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise _read_error(upload, line, error) from None


def _text_file_rows(text: str) -> Iterator[list[str]]:
    lines = LINE_BREAK.split(text)
    # A final line break ends the last line; it does not start another.
    if lines and not lines[-1]:
        lines.pop()
    for line in lines:
        yield [line]


def _csv_rows(upload: Upload, rows: Iterator[list[str]]) -> Iterator[list[str]]:
    line = 1
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except CsvFormatError as error:
            raise _read_error(upload, line + 1, error) from None
        line += 1
        yield row


@contextmanager
def open_rows(upload: Upload) -> Iterator[tuple[list[str], Iterator[list[str]]]]:
    """Open an upload and yield its header and an iterator over its rows.

    Raises ``UploadError`` for bytes the encoding cannot decode or malformed
    CSV, with the line number and what to do.
    """
    if upload.kind == KIND_TEXT:
        yield [TEXT_FILE_COLUMN], _text_file_rows(_read_text(upload))
        return
    try:
        with csvio.open_rows(upload.path, upload.csv_format) as (header, rows):
            yield header, _csv_rows(upload, rows)
    except CsvFormatError as error:
        raise _read_error(upload, 1, error) from None


def _cell(row: list[str], index: int) -> str:
    """Return a row's cell, or "" for a short row that lacks the column."""
    return row[index] if index < len(row) else ""


def preview(upload: Upload, limit: int = PREVIEW_ROWS) -> list[list[str]]:
    """Return the first ``limit`` rows of an upload, padded to the header width."""
    with open_rows(upload) as (header, rows):
        width = len(header)
        return [
            [*row[:width], *[""] * (width - len(row))]
            for row in itertools.islice(rows, limit)
        ]


def guess_text_column(upload: Upload) -> str:
    """Return the column most likely to hold the text to translate.

    A column named like one of ``TEXT_COLUMN_NAMES`` (in any case) wins when
    its first rows have letters. Otherwise the column with the most letters
    per cell in the first ``GUESS_SAMPLE_ROWS`` rows wins, the leftmost on a
    tie.
    """
    header = upload.header
    letters = [0] * len(header)
    with open_rows(upload) as (_, rows):
        for row in itertools.islice(rows, GUESS_SAMPLE_ROWS):
            for index, cell in enumerate(row[: len(header)]):
                letters[index] += len(_LETTER.findall(cell))

    names = [name.strip().lower() for name in header]
    for wanted in TEXT_COLUMN_NAMES:
        if wanted in names and letters[names.index(wanted)] > 0:
            return header[names.index(wanted)]
    best = max(range(len(header)), key=lambda index: (letters[index], -index))
    return header[best]


def output_column_name(header: Iterable[str], text_column: str, target: str) -> str:
    """Return ``<text_column>_<target>``, numbered when the header has it."""
    existing = set(header)
    name = f"{text_column}_{target}"
    number = 2
    while name in existing:
        name = f"{text_column}_{target}_{number}"
        number += 1
    return name


def text_chunks(
    upload: Upload, text_column: str, chunk_size: int
) -> Iterator[list[str]]:
    """Yield the cells of ``text_column``, ``chunk_size`` rows at a time."""
    with open_rows(upload) as (header, rows):
        index = header.index(text_column)
        texts = (_cell(row, index) for row in rows)
        while chunk := list(itertools.islice(texts, chunk_size)):
            yield chunk


# Writing the translated file.


def output_path(upload: Upload) -> Path:
    """Return where the translated file of an upload is written."""
    return upload.path.with_name(f"translated{upload.path.suffix}")


def download_name(upload: Upload, target_lang: str) -> str:
    """Return the name offered for the download: ``products_es.csv``."""
    name = Path(upload.file_name)
    return f"{name.stem}_{target_lang}{name.suffix.lower()}"


def output_format(upload: Upload) -> CsvFormat:
    """Return the format of the translated file: UTF-8, as ``core.csvio`` writes."""
    return CsvFormat(
        encoding=csvio.output_encoding(upload.csv_format),
        delimiter=upload.csv_format.delimiter,
        had_bom=upload.csv_format.had_bom,
        line_terminator=upload.csv_format.line_terminator,
    )


def _mismatch(upload: Upload) -> UploadError:
    return UploadError(
        f"The saved copy of {upload.file_name!r} no longer has the "
        f"{upload.rows} rows the job translated. Upload the file again."
    )


def write_output(
    upload: Upload,
    text_column: str,
    output_column: str,
    translations: Iterable[str],
) -> Path:
    """Write the upload plus its translations beside it; return the path.

    A CSV file keeps every column, the row order and the delimiter, with the
    translation column after the last named column. Short rows are padded,
    blank lines stay blank, and cells beyond the header follow the
    translation. A text file gets one translation per line. The file appears
    under its final name only when complete.
    """
    path = output_path(upload)
    items = iter(translations)
    if upload.kind == KIND_TEXT:
        _write_text_output(upload, path, items)
        return path

    with (
        open_rows(upload) as (header, rows),
        csvio.atomic_writer(path, upload.csv_format) as writer,
    ):
        width = len(header)
        index = header.index(text_column)
        writer.writerow([*header, output_column])
        for row in rows:
            translation = next(items, None)
            if translation is None:
                raise _mismatch(upload)
            if not row:
                writer.writerow([])
                continue
            padding = [""] * (width - len(row))
            cells = [*row[:width], *padding, translation, *row[width:]]
            if _cell(row, index) == "":
                cells[width] = ""
            writer.writerow(cells)
        if next(items, None) is not None:
            raise _mismatch(upload)
    os.chmod(path, FILE_MODE)
    return path


def _write_text_output(upload: Upload, path: Path, items: Iterator[str]) -> None:
    terminator = upload.csv_format.line_terminator
    lines = []
    with open_rows(upload) as (_, rows):
        for _row in rows:
            translation = next(items, None)
            if translation is None:
                raise _mismatch(upload)
            lines.append(translation)
    if next(items, None) is not None:
        raise _mismatch(upload)
    text = terminator.join(lines) + (terminator if upload.trailing_newline else "")
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    _write_private(temporary, text.encode(csvio.output_encoding(upload.csv_format)))
    os.replace(temporary, path)


def output_preview(
    upload: Upload, output_column: str, limit: int = PREVIEW_ROWS
) -> tuple[list[str], list[list[str]]]:
    """Return the header and first rows of the translated file."""
    path = output_path(upload)
    if upload.kind == KIND_TEXT:
        originals = preview(upload, limit)
        translated = Upload(
            path, upload.file_name, KIND_TEXT, output_format(upload), [], 0, 0
        )
        lines = preview(translated, limit)
        rows = [
            [original[0], line[0]]
            for original, line in zip(originals, lines, strict=False)
        ]
        return [TEXT_FILE_COLUMN, output_column], rows

    written = Upload(path, upload.file_name, KIND_CSV, output_format(upload), [], 0, 0)
    with open_rows(written) as (header, row_iterator):
        width = len(header)
        first = [
            [*row[:width], *[""] * (width - len(row))]
            for row in itertools.islice(row_iterator, limit)
        ]
    return header, first
