"""Command-line tool that translates one column of a CSV file with the workers.

Translate a file and wait for the result::

    python app_batch_celery.py input.csv output.csv --text-column text \\
        --source-lang en --target-lang es

Detect the language of each row, keep HTML tags and apply a glossary::

    python app_batch_celery.py input.csv output.csv --text-column body \\
        --source-lang auto --target-lang es --detected-column lang \\
        --format html --glossary terms.csv --score-column score

Queue it and come back later::

    python app_batch_celery.py input.csv output.csv ... --async
    python app_batch_celery.py --status JOB_ID
    python app_batch_celery.py --collect JOB_ID output.csv

The input is streamed and held in memory one sorting window at a time. A check
pass validates the column, the encoding and the cell lengths and counts the
rows before anything is submitted. A submit pass sends the rows in chunks to
the ``bulk`` queue, and a write pass pairs each row with its translation as the
workers return them. Within each window of rows (see ``sort_window``) the rows
are sent shortest first, so each task contains texts of similar length,
which the workers batch with little padding. The job records each row's place,
so its items and the output keep the input's row order. Texts already in the shared
cache are not sent to a worker, so a rerun after a crash only translates the
rows that were not done.

This module never imports torch or transformers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from tqdm import tqdm

from core import csvio
from core.broker import require_workers
from core.config import ConfigError, get_settings
from core.csvio import CsvFormat, CsvFormatError
from core.dispatch import QUEUE_BULK, Submission, needs_model, resolve_languages
from core.errors import (
    BackendUnavailable,
    DeadlineExceeded,
    InputTooLarge,
    InvalidRequest,
    JobExpired,
    JobLost,
    JobNotFound,
    ServiceError,
    UnsupportedLanguagePair,
)
from core.jobs import (
    STATUS_CANCELLED,
    STATUS_DONE,
    STATUS_FAILED,
    cancel_job,
    iter_items,
    job_status,
    load_job,
    release_private_job,
)
from core.logs import LOG_FORMAT
from core.options import FORMATS, TranslationOptions
from core.pipeline import (
    AUTO,
    OUTCOME_CACHED,
    OUTCOME_FAILED,
    OUTCOME_UNCHANGED,
    item_outcome,
)
from core.workers import HEARTBEAT_TTL

logger = logging.getLogger(__name__)

JOB_KIND = "csv"
PROGRAM = "app_batch_celery.py"

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_BACKEND_UNAVAILABLE = 3
EXIT_NOT_FINISHED = 4
EXIT_INTERRUPTED = 130
# 128 + SIGPIPE, the status of a program that a closed pipe stopped.
EXIT_BROKEN_PIPE = 141

USAGE_ERRORS = (
    InvalidRequest,
    UnsupportedLanguagePair,
    InputTooLarge,
    JobNotFound,
    JobExpired,
)

# Keys of the job metadata that --collect needs to write the output again.
META_KEYS = (
    "input_path",
    "input_size",
    "input_mtime_ns",
    "encoding",
    "delimiter",
    "had_bom",
    "line_terminator",
    "text_column",
    "output_column",
    "rows",
)

# Rows are sent to the workers sorted by length within windows of this many
# chunks, so a task contains texts of similar length and is batched with little
# padding. In file order, the texts of a task fall into many length buckets,
# which the workers translate as separate small batches.
SORT_WINDOW_CHUNKS = 8
# Maximum rows of a sorting window, unless one chunk alone is larger. A window
# is held in memory, so a large --chunk-size does not multiply it by 8.
MAX_SORT_WINDOW_ROWS = 4096
# Maximum characters of a chunk per row of --chunk-size, unless one row alone
# is longer. Sorting puts the longest rows of a window together, and this keeps
# such a chunk about as long to translate as a chunk of rows in file order.
# An estimate: 64 rows of 1,000 characters are about 16,000 tokens, so about
# 160 s at the 100 target tokens/s of the slowest engine in BENCHMARKS.md,
# within the default soft time limit of 270 s.
CHUNK_CHARS_PER_ROW = 1000

# Maximum row numbers kept per kind for the --verbose log. Later rows are counted only.
MAX_LOGGED_ROWS = 1000
SCORE_FORMAT = ".4f"
# Failed rows that --status lists with their reason.
MAX_STATUS_ERRORS = 20


class CliError(Exception):
    """An error reported as one line on stderr with its exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass
class CsvJob:
    """An input file checked for translation, and how to read it."""

    input_path: Path
    input_size: int
    input_mtime_ns: int
    csv_format: CsvFormat
    text_column: str
    output_column: str
    detected_column: str | None = None
    score_column: str | None = None
    rows: int = 0
    # Rows per sorting window when submitted, 0 to submit in row order.
    sort_window: int = 0

    @property
    def added_columns(self) -> list[str]:
        """The columns the output adds after the input's, in output order."""
        optional = (self.detected_column, self.score_column)
        return [self.output_column, *(name for name in optional if name)]

    def to_meta(self) -> dict[str, Any]:
        """Return the job metadata that lets --collect read the file again."""
        return {
            "input_path": str(self.input_path),
            "input_size": self.input_size,
            "input_mtime_ns": self.input_mtime_ns,
            **self.csv_format.to_dict(),
            "text_column": self.text_column,
            "output_column": self.output_column,
            "detected_column": self.detected_column,
            "score_column": self.score_column,
            "rows": self.rows,
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> CsvJob:
        """Rebuild a job from the metadata ``to_meta`` stored."""
        return cls(
            input_path=Path(meta["input_path"]),
            input_size=int(meta["input_size"]),
            input_mtime_ns=int(meta["input_mtime_ns"]),
            csv_format=CsvFormat.from_dict(meta),
            text_column=str(meta["text_column"]),
            output_column=str(meta["output_column"]),
            detected_column=meta.get("detected_column"),
            score_column=meta.get("score_column"),
            rows=int(meta["rows"]),
        )


@dataclass
class WriteSummary:
    """Counts of the rows written to an output file."""

    rows: int = 0
    translated: int = 0
    cache_hits: int = 0
    unchanged: int = 0
    extra_fields_rows: int = 0
    short_rows: int = 0
    unrestored_rows: list[int] = field(default_factory=list)
    unrestored: int = 0
    error_rows: list[int] = field(default_factory=list)
    errors: int = 0
    failed_rows: list[dict[str, Any]] = field(default_factory=list)
    resubmissions: list[dict[str, Any]] = field(default_factory=list)

    def count(self, text: str, item: dict[str, Any]) -> None:
        """Count one row by how its translation was obtained.

        Rows whose item has ``unrestored`` terms or an ``error`` are also
        counted apart, and the first ``MAX_LOGGED_ROWS`` of their row numbers
        are kept for the --verbose log.
        """
        self.rows += 1
        outcome = item_outcome(item)
        if outcome in (OUTCOME_FAILED, OUTCOME_UNCHANGED) or not needs_model(text):
            self.unchanged += 1
        elif outcome == OUTCOME_CACHED:
            self.cache_hits += 1
        else:
            self.translated += 1

        if item.get("unrestored"):
            self.unrestored += 1
            if len(self.unrestored_rows) < MAX_LOGGED_ROWS:
                self.unrestored_rows.append(self.rows)
        if item.get("error"):
            self.errors += 1
            if len(self.error_rows) < MAX_LOGGED_ROWS:
                self.error_rows.append(self.rows)
                self.failed_rows.append({"row": self.rows, "error": item["error"]})


# Command line.


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number >= 1")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number > 0")
    return number


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the command-line options."""
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description=(
            "Translate one column of a CSV file with the translation workers. "
            "The output keeps every column and the row order, and adds a "
            "column with the translation."
        ),
        epilog=(
            "Exit status: 0 success, 1 the job failed or was cancelled, "
            "2 invalid usage or input, 3 Redis or the workers are unavailable, "
            "4 the job has not finished yet, 130 interrupted."
        ),
    )
    parser.add_argument("input", nargs="?", help="CSV file to translate.")
    parser.add_argument(
        "output",
        nargs="?",
        help="CSV file to write. It is replaced only once it is complete.",
    )
    _add_translation_options(parser)
    _add_request_options(parser)
    _add_csv_options(parser)
    _add_job_options(parser)
    _add_display_options(parser)
    return parser


def _add_translation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("translation")
    group.add_argument(
        "--text-column",
        metavar="COLUMN",
        default="text",
        help="Name of the column that contains the text to translate (default: text).",
    )
    group.add_argument(
        "--source-lang",
        metavar="CODE",
        help="Language code of the text, e.g. en, or 'auto' to let the workers "
        "detect the language of each row among the served source languages.",
    )
    group.add_argument(
        "--target-lang", metavar="CODE", help="Language code to translate into."
    )
    group.add_argument(
        "--output-column",
        metavar="COLUMN",
        help="Name of the new column (default: COLUMN_CODE, the text column and "
        "the target language joined by '_', e.g. text_es).",
    )
    group.add_argument(
        "--detected-column",
        metavar="COLUMN",
        help="With --source-lang auto, add a column with the language detected "
        "for each row, empty for rows without text (default: no column).",
    )
    group.add_argument(
        "--score-column",
        metavar="COLUMN",
        help="Add a column with each row's translation score, a number in (0, 1] "
        "written with 4 decimals (a score under 0.00005 reads 0.0000), empty for "
        "rows the model did not translate, such as empty cells (default: no "
        "column).",
    )
    group.add_argument(
        "--chunk-size",
        metavar="ROWS",
        type=_positive_int,
        help="Rows per worker task (default: the CHUNK_SIZE setting).",
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_float,
        help="Seconds to wait for the translations before giving up. The job "
        "keeps running, and --collect writes it later (default: no limit).",
    )


def _add_request_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("markup and terms")
    group.add_argument(
        "--format",
        choices=FORMATS,
        type=str.lower,
        default="text",
        help="Format of the cells: with html, only the text between tags is "
        "translated and the markup is kept as written (default: text).",
    )
    group.add_argument(
        "--glossary",
        metavar="FILE",
        help="Terms to translate in a fixed way. A FILE ending in .json contains one "
        'JSON object mapping source term to target term, e.g. {"cloud": "nube"}. '
        "Any other FILE is a CSV file with two columns, source term and target "
        "term, one entry per row. Its first row is a header only when it reads "
        "source,target. The delimiter and encoding are detected, and spaces "
        "around terms are removed.",
    )
    group.add_argument(
        "--do-not-translate",
        metavar="TERM",
        action="append",
        default=[],
        help="A term to keep as written, e.g. a product name. Repeat the option "
        "for more terms.",
    )
    group.add_argument(
        "--no-cache",
        action="store_true",
        help="Keep the cells and their translations out of every cache tier, and "
        "delete the job's stored result once the output file is written.",
    )
    group.add_argument(
        "--do-not-translate-file",
        metavar="FILE",
        help="A UTF-8 text file of terms to keep as written, one per line. Blank "
        "lines are skipped and spaces around terms are removed.",
    )


def _add_csv_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("CSV format")
    group.add_argument(
        "--encoding",
        metavar="CODEC",
        help="Encoding of the input, e.g. utf-8 or cp1252 (default: detected).",
    )
    group.add_argument(
        "--delimiter",
        metavar="CHAR",
        help="Field delimiter of the input: one character, or tab, comma, "
        "semicolon, pipe (default: detected among , ; tab |).",
    )


def _add_job_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("jobs")
    group.add_argument(
        "--async",
        dest="run_async",
        action="store_true",
        help="Queue the job, print its id and exit without waiting.",
    )
    group.add_argument(
        "--status",
        metavar="JOB_ID",
        help="Print the status and progress of a job, then exit.",
    )
    group.add_argument(
        "--collect",
        nargs=2,
        metavar=("JOB_ID", "OUTPUT"),
        help="Write the output of a finished job to OUTPUT.",
    )


def _add_display_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("display")
    group.add_argument(
        "--json",
        action="store_true",
        help="Print results as one JSON object instead of text.",
    )
    group.add_argument(
        "--no-progress",
        action="store_true",
        help="Hide the progress bar on stderr.",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="Log INFO messages to stderr (default: warnings only).",
    )


def _check_mode(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit with a usage error when options of different modes are mixed."""
    if args.status and args.collect:
        parser.error("Use either --status or --collect, not both.")
    if args.status or args.collect:
        option = "--status" if args.status else "--collect"
        if args.input or args.output:
            parser.error(f"{option} takes no input file. Remove {args.input!r}.")
        if args.run_async:
            parser.error(f"{option} cannot be combined with --async.")
        translation_only = [name for name, value in _request_options(args) if value]
        if translation_only:
            listing = ", ".join(translation_only)
            parser.error(
                f"{option} cannot be combined with {listing}. These options apply "
                "when a file is submitted."
            )
        return

    missing = [
        name
        for name, value in (
            ("input", args.input),
            ("output", args.output),
            ("--source-lang", args.source_lang),
            ("--target-lang", args.target_lang),
        )
        if not value
    ]
    if missing:
        parser.error(f"Missing {', '.join(missing)}. Run with --help for usage.")


def _request_options(args: argparse.Namespace) -> list[tuple[str, object]]:
    """Return the options that only a new translation uses, with their values."""
    return [
        ("--format", args.format != "text"),
        ("--glossary", args.glossary),
        ("--do-not-translate", args.do_not_translate),
        ("--do-not-translate-file", args.do_not_translate_file),
        ("--no-cache", args.no_cache),
        ("--detected-column", args.detected_column),
        ("--score-column", args.score_column),
    ]


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format=LOG_FORMAT,
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_mode(parser, args)
    _configure_logging(args.verbose)

    try:
        if args.status:
            code = run_status(args)
        elif args.collect:
            code = run_collect(args)
        else:
            code = run_translate(args)
        # Flushed here, so a closed pipe is reported below and not at exit.
        sys.stdout.flush()
        return code
    except CliError as error:
        return _fail(error.message, error.exit_code)
    except BrokenPipeError:
        # The reader of stdout, such as head, exited. Python would report the
        # pipe again when it flushes stdout at exit, so stdout goes to devnull.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except CsvFormatError as error:
        return _fail(error.message, EXIT_USAGE)
    except ConfigError as error:
        return _fail(f"Invalid setting: {error}", EXIT_USAGE)
    except ServiceError as error:
        return _fail(error.message, _exit_code_for(error))
    except OSError as error:
        return _fail(
            f"Cannot access {error.filename!r}: {error.strerror}. Check the path, "
            "its permissions and the free disk space.",
            EXIT_USAGE,
        )
    except KeyboardInterrupt:
        return _fail("Interrupted.", EXIT_INTERRUPTED)


def _exit_code_for(error: ServiceError) -> int:
    if isinstance(error, BackendUnavailable):
        return EXIT_BACKEND_UNAVAILABLE
    if isinstance(error, USAGE_ERRORS):
        return EXIT_USAGE
    if isinstance(error, DeadlineExceeded):
        return EXIT_NOT_FINISHED
    return EXIT_JOB_FAILED


def _fail(message: str, exit_code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return exit_code


# Checking the input.


def _input_path(value: str) -> Path:
    path = Path(value).expanduser().resolve()
    if not path.exists():
        raise CliError(f"Input file {value!r} does not exist. Check the path.")
    if not path.is_file():
        raise CliError(f"Input {value!r} is not a file. Give the path of a CSV file.")
    if not os.access(path, os.R_OK):
        raise CliError(f"Input file {value!r} is not readable. Check its permissions.")
    return path


def _output_path(value: str, input_path: Path | None = None) -> Path:
    path = Path(value).expanduser().resolve()
    if input_path is not None and path == input_path:
        raise CliError(
            f"The output {value!r} is the input file. Choose another output path."
        )
    if path.is_dir():
        raise CliError(f"The output {value!r} is a folder. Give a file path.")
    if not path.parent.is_dir():
        raise CliError(
            f"The folder of the output {value!r} does not exist. Create "
            f"{str(path.parent)!r} or choose another output path."
        )
    if not os.access(path.parent, os.W_OK):
        raise CliError(
            f"Cannot create files in {str(path.parent)!r}, the folder of the "
            f"output {value!r}. Choose a writable folder."
        )
    return path


# Request options.


def _read_text_file(value: str, description: str) -> str:
    """Read a UTF-8 file given on the command line and return its text."""
    try:
        data = Path(value).expanduser().read_bytes()
    except OSError as error:
        raise CliError(
            f"Cannot read the {description} {value!r}: {error.strerror}. Check "
            "the path and its permissions."
        ) from None
    try:
        return data.decode(csvio.UTF8_WITH_BOM)
    except UnicodeDecodeError as error:
        raise CliError(
            f"The {description} {value!r} is not valid UTF-8 (byte "
            f"{data[error.start]:#04x} at offset {error.start}). Save it as UTF-8."
        ) from None


def _read_json_glossary(value: str) -> dict[str, Any]:
    text = _read_text_file(value, "glossary file")

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        mapping: dict[str, Any] = {}
        for key, entry in pairs:
            if key in mapping:
                raise CliError(
                    f"Glossary file {value!r} gives the source term {key!r} "
                    "twice. Keep one."
                )
            mapping[key] = entry
        return mapping

    try:
        glossary = json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as error:
        raise CliError(
            f"Glossary file {value!r} is not valid JSON: {error.msg} at line "
            f"{error.lineno}, column {error.colno}."
        ) from None
    if not isinstance(glossary, dict):
        raise CliError(
            f"Glossary file {value!r} must contain one JSON object mapping source "
            'terms to target terms, such as {"cloud": "nube"}, but it contains '
            f"a {type(glossary).__name__}."
        )
    if not glossary:
        raise CliError(
            f"Glossary file {value!r} has no entries. Add entries such as "
            '{"cloud": "nube"}, or remove --glossary.'
        )
    return glossary


def read_glossary(value: str) -> dict[str, Any]:
    """Read a --glossary file: JSON when its name ends in .json, else CSV."""
    path = Path(value).expanduser()
    if path.suffix.lower() == ".json":
        return _read_json_glossary(value)
    if not path.is_file():
        raise CliError(
            f"Cannot read the glossary file {value!r}: it does not exist or is "
            "not a file. Check the path."
        )
    try:
        return csvio.read_glossary(path)
    except OSError as error:
        raise CliError(
            f"Cannot read the glossary file {value!r}: {error.strerror}. Check "
            "the path and its permissions."
        ) from None


def read_terms(value: str) -> list[str]:
    """Read a --do-not-translate-file: one term per line, blank lines skipped."""
    text = _read_text_file(value, "file of terms")
    terms = [line.strip() for line in text.splitlines() if line.strip()]
    if not terms:
        raise CliError(
            f"The file of terms {value!r} has no terms. Write one term per line, "
            "or remove --do-not-translate-file."
        )
    return terms


def _validated(body: dict[str, Any], context: str = "") -> TranslationOptions:
    try:
        return TranslationOptions.from_request(body)
    except InvalidRequest as error:
        raise CliError(f"{context}{error.message}") from None


def translation_options(args: argparse.Namespace) -> TranslationOptions:
    """Read and validate --format, --glossary and the terms to keep.

    Each file is validated alone first, so an error names the file it
    comes from. Raises ``CliError`` with one line for the first problem.
    """
    glossary = None
    if args.glossary:
        glossary = read_glossary(args.glossary)
        _validated({"glossary": glossary}, f"Invalid glossary file {args.glossary!r}: ")

    terms = list(args.do_not_translate)
    if args.do_not_translate_file:
        file_terms = read_terms(args.do_not_translate_file)
        _validated(
            {"do_not_translate": file_terms},
            f"Invalid file of terms {args.do_not_translate_file!r}: ",
        )
        terms.extend(file_terms)

    body = {
        "format": args.format,
        "glossary": glossary,
        "do_not_translate": terms,
        "cache": not args.no_cache,
    }
    return _validated(body)


def _column_index(header: list[str], column: str, job: CsvJob) -> int:
    if header.count(column) > 1:
        positions = [
            str(index + 1) for index, name in enumerate(header) if name == column
        ]
        raise CliError(
            f"Column {column!r} appears {len(positions)} times in "
            f"{str(job.input_path)!r} (columns {', '.join(positions)}). Rename "
            "the duplicates so the text column is unambiguous."
        )
    if column in header:
        return header.index(column)

    listing = ", ".join(repr(name) for name in header) or "none"
    message = (
        f"Column {column!r} not found in {str(job.input_path)!r}. "
        f"Columns: {listing}. Pass one of them with --text-column."
    )
    if len(header) == 1:
        delimiter = job.csv_format.delimiter
        message += (
            f" The header was split on {delimiter!r}. Pass --delimiter if the "
            "file uses another delimiter."
        )
    raise CliError(message)


def _file_stat(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def prepare_job(
    input_path: Path,
    csv_format: CsvFormat,
    text_column: str,
    output_column: str | None,
    target_lang: str,
    detected_column: str | None = None,
    score_column: str | None = None,
) -> CsvJob:
    """Check the header and every text cell, and count the rows.

    Raises ``CliError`` for a missing column, an added column that already
    exists or is named twice, or a cell over ``MAX_TEXT_CHARS``, and
    ``CsvFormatError`` for a file that cannot be decoded or parsed.
    """
    size, mtime_ns = _file_stat(input_path)
    job = CsvJob(
        input_path=input_path,
        input_size=size,
        input_mtime_ns=mtime_ns,
        csv_format=csv_format,
        text_column=text_column,
        output_column=output_column or f"{text_column}_{target_lang}",
        detected_column=detected_column,
        score_column=score_column,
    )
    max_chars = get_settings().max_text_chars

    with csvio.open_rows(input_path, csv_format) as (header, rows):
        index = _column_index(header, text_column, job)
        _check_added_columns(header, job)
        for row in rows:
            job.rows += 1
            text = _cell(row, index)
            if len(text) > max_chars:
                raise CliError(
                    f"Row {job.rows} of {str(input_path)!r} has {len(text)} "
                    f"characters in column {text_column!r}, over the limit of "
                    f"{max_chars} (MAX_TEXT_CHARS). Split or shorten the cell."
                )
    return job


def _check_added_columns(header: list[str], job: CsvJob) -> None:
    options = (
        ("--output-column", job.output_column),
        ("--detected-column", job.detected_column),
        ("--score-column", job.score_column),
    )
    seen: dict[str, str] = {}
    for option, name in options:
        if name is None:
            continue
        if name in header:
            raise CliError(
                f"Column {name!r} already exists in {str(job.input_path)!r}. "
                f"Choose another name with {option}."
            )
        if name in seen:
            raise CliError(
                f"{seen[name]} and {option} both name the column {name!r}. "
                "Give each new column its own name."
            )
        seen[name] = option


def _cell(row: list[str], index: int) -> str:
    """Return a row's cell, or "" for a short row that lacks the column."""
    return row[index] if index < len(row) else ""


def _check_unchanged(job: CsvJob) -> None:
    try:
        current = _file_stat(job.input_path)
    except OSError as error:
        raise CliError(
            f"Cannot read the input {str(job.input_path)!r} ({error.strerror}). "
            "Restore the file, or submit the translation again."
        ) from None
    if current != (job.input_size, job.input_mtime_ns):
        raise CliError(
            f"The input {str(job.input_path)!r} changed since the job was "
            "submitted (its size or modification time differs). Restore the "
            "original file, or submit the translation again."
        )


# Submitting.


def sort_window(chunk_size: int) -> int:
    """Return the rows of a sorting window: a whole number of chunks."""
    chunks = min(SORT_WINDOW_CHUNKS, MAX_SORT_WINDOW_ROWS // chunk_size)
    return chunk_size * max(1, chunks)


def submission_order(texts: Sequence[str]) -> list[int]:
    """Return the positions of ``texts``, shortest text first.

    Texts of equal length are ordered by their content, so duplicates end up
    side by side, usually in one task.
    """
    return sorted(
        range(len(texts)), key=lambda position: (len(texts[position]), texts[position])
    )


def _windows(job: CsvJob, size: int, first_row: int = 0) -> Iterator[list[str]]:
    """Yield the texts of the rows from ``first_row`` on, ``size`` rows at a time."""
    with csvio.open_rows(job.input_path, job.csv_format) as (header, rows):
        index = header.index(job.text_column)
        texts = itertools.islice((_cell(row, index) for row in rows), first_row, None)
        while window := list(itertools.islice(texts, size)):
            yield window


def split_chunks(
    texts: Sequence[str], order: Sequence[int], chunk_size: int
) -> list[list[int]]:
    """Split the positions ``order`` of ``texts`` into chunks, keeping their order.

    A chunk contains at most ``chunk_size`` rows and, unless one row alone is
    longer, ``chunk_size * CHUNK_CHARS_PER_ROW`` characters.
    """
    budget = chunk_size * CHUNK_CHARS_PER_ROW
    chunks: list[list[int]] = []
    current: list[int] = []
    characters = 0
    for position in order:
        length = len(texts[position])
        if current and (len(current) >= chunk_size or characters + length > budget):
            chunks.append(current)
            current, characters = [], 0
        current.append(position)
        characters += length
    if current:
        chunks.append(current)
    return chunks


def _chunks(
    job: CsvJob, chunk_size: int, first_row: int = 0
) -> Iterator[tuple[list[int], list[str]]]:
    """Yield the rows from ``first_row`` on, in chunks (see ``split_chunks``).

    Each chunk is a list of job item indexes, counted from ``first_row``, and
    the texts of those rows. Within each sorting window of ``job`` the rows
    come in ``submission_order``.
    """
    offset = 0
    for window in _windows(job, job.sort_window or chunk_size, first_row):
        order = (
            submission_order(window) if job.sort_window else list(range(len(window)))
        )
        for positions in split_chunks(window, order, chunk_size):
            yield (
                [offset + position for position in positions],
                [window[position] for position in positions],
            )
        offset += len(window)


def submit_rows(
    job: CsvJob,
    source_lang: str,
    target_lang: str,
    options: TranslationOptions,
    chunk_size: int,
    progress: bool,
    first_row: int = 0,
) -> str:
    """Send the rows of ``job`` as a ``csv`` job on the bulk queue, return its id.

    With ``first_row``, only the rows from that index on are sent, and the job
    records it in its metadata as ``first_row``.
    """
    expected = job.rows - first_row
    meta = job.to_meta()
    if first_row:
        meta["first_row"] = first_row
    submission = Submission(
        JOB_KIND,
        source_lang,
        target_lang,
        options=options,
        queue=QUEUE_BULK,
        total=expected,
        **meta,
    )
    try:
        with _progress_bar(expected, "Submitting", progress) as bar:
            for rows, texts in _chunks(job, chunk_size, first_row):
                submission.add(texts, rows=rows if job.sort_window else None)
                bar.update(len(texts))
        if submission.total != expected:
            raise CliError(
                f"The input {str(job.input_path)!r} changed while it was being "
                f"submitted ({job.rows} rows at the check, "
                f"{first_row + submission.total} now). Run the translation again."
            )
        _check_unchanged(job)
        return submission.finish()
    except BaseException:
        _cancel_quietly(submission.job_id)
        raise


def _cancel_quietly(job_id: str) -> None:
    """Cancel a partly submitted job, logging a failure instead of raising it."""
    try:
        cancel_job(job_id)
    except ServiceError as error:
        logger.warning("Cancelling job %s failed: %s", job_id, error.message)


# Writing.


def _progress_bar(total: int, description: str, enabled: bool) -> tqdm[Any]:
    return tqdm(
        total=total,
        desc=description,
        unit="row",
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
    )


def output_row(row: list[str], width: int, *added: str) -> list[str]:
    """Return an input row with the added cells after the last named column.

    The added cells are the translation, then the optional detected language
    and score. A short row is padded with empty cells to the header width.
    Cells beyond the header width follow the added cells. A blank line stays
    blank.
    """
    if not row:
        return []
    padding = [""] * (width - len(row))
    return [*row[:width], *padding, *added, *row[width:]]


def added_cells(job: CsvJob, item: dict[str, Any]) -> list[str]:
    """Return the cells a row's item fills: translation, detected language, score.

    The detected language is empty when the item has none, as for empty
    cells, and so is the score, which is written with 4 decimals.
    """
    cells = [item["translation"]]
    if job.detected_column:
        cells.append(item.get("detected_source_lang") or "")
    if job.score_column:
        score = item.get("score")
        cells.append("" if score is None else format(score, SCORE_FORMAT))
    return cells


def write_output(
    job: CsvJob,
    job_id: str,
    output_path: Path,
    progress: bool,
    deadline: float | None = None,
    resubmit: Resubmission | None = None,
    progress_label: str = "Translating",
) -> WriteSummary:
    """Write the input rows plus their translations to ``output_path``.

    Rows are read again and paired in order with the items of the job as its
    tasks finish. ``deadline`` is a ``time.monotonic()`` value bounding the
    wait, None to wait as long as it takes. When Redis loses the job and
    ``resubmit`` is given, the rows not yet written are submitted again with
    it and the output goes on from the new job.
    """
    summary = WriteSummary()
    with (
        csvio.open_rows(job.input_path, job.csv_format) as (header, rows),
        csvio.atomic_writer(output_path, job.csv_format) as writer,
        _progress_bar(job.rows, progress_label, progress) as bar,
    ):
        width = len(header)
        index = _column_index(header, job.text_column, job)
        writer.writerow([*header, *job.added_columns])
        items = _job_items(job, job_id, summary, deadline, resubmit)
        for row in rows:
            item = next(items, None)
            if item is None:
                raise _rows_mismatch(job, job_id)
            summary.count(_cell(row, index), item)
            if len(row) > width:
                summary.extra_fields_rows += 1
            elif row and len(row) < width:
                summary.short_rows += 1
            writer.writerow(output_row(row, width, *added_cells(job, item)))
            bar.update(1)
        if next(items, None) is not None:
            raise _rows_mismatch(job, job_id)
        _check_unchanged(job)
    _log_irregular_rows(summary, job)
    _log_flagged_rows(summary, job_id)
    return summary


# Longer than a heartbeat's TTL, so every live worker has announced itself.
RESUBMIT_WAIT = 2.0 * HEARTBEAT_TTL
RESUBMIT_POLL = 1.0


@dataclass
class Resubmission:
    """Request settings for submitting rows again when Redis loses their job."""

    source_lang: str
    target_lang: str
    options: TranslationOptions
    chunk_size: int

    def submit(self, job: CsvJob, first_row: int) -> str:
        """Submit the rows of ``job`` from index ``first_row`` on; return the job id.

        Redis lost the workers' heartbeats with the job, and each worker
        announces itself again within ``HEARTBEAT_INTERVAL`` seconds, so the
        submission is retried until ``RESUBMIT_WAIT`` seconds have passed.
        """
        deadline = time.monotonic() + RESUBMIT_WAIT
        while True:
            try:
                return submit_rows(
                    job,
                    self.source_lang,
                    self.target_lang,
                    self.options,
                    self.chunk_size,
                    progress=False,
                    first_row=first_row,
                )
            except BackendUnavailable as error:
                if time.monotonic() >= deadline:
                    raise
                logger.warning("Resubmission waits for the workers: %s", error)
                time.sleep(RESUBMIT_POLL)


def _job_items(
    job: CsvJob,
    job_id: str,
    summary: WriteSummary,
    deadline: float | None,
    resubmit: Resubmission | None,
) -> Iterator[dict[str, Any]]:
    """Yield the job's items in row order, resubmitting rows that Redis lost."""
    written = 0
    while True:
        try:
            for item in iter_items(job_id, deadline=deadline, ride_out_outages=True):
                written += 1
                yield item
            return
        except JobLost:
            if resubmit is None:
                raise
            lost_job = job_id
            job_id = resubmit.submit(job, written)
            summary.resubmissions.append(
                {"lost": lost_job, "task_id": job_id, "first_row": written + 1}
            )
            lost_chunks = _chunk_range(written, job.rows, resubmit.chunk_size)
            _warn(
                f"Redis lost job {lost_job} before rows {written + 1}-{job.rows} "
                f"were collected ({lost_chunks}). Resubmitted them as job "
                f"{job_id}; the {written} rows already written are kept."
            )


def _chunk_range(written: int, rows: int, chunk_size: int) -> str:
    """Name the chunks, numbered from 1, that hold rows ``written`` to ``rows``."""
    first = written // chunk_size + 1
    last = max(first, -(-rows // chunk_size))
    return f"chunk {first}" if first == last else f"chunks {first}-{last}"


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _rows_mismatch(job: CsvJob, job_id: str) -> CliError:
    return CliError(
        f"The input {str(job.input_path)!r} no longer has the {job.rows} rows "
        f"that job {job_id} translated. Restore the original file, or submit "
        "the translation again."
    )


def _log_irregular_rows(summary: WriteSummary, job: CsvJob) -> None:
    if summary.short_rows:
        logger.warning(
            "%d rows of %s had fewer cells than the header and were padded",
            summary.short_rows,
            job.input_path,
        )
    if summary.extra_fields_rows:
        logger.warning(
            "%d rows of %s had more cells than the header, so the extra cells "
            "follow the translation column",
            summary.extra_fields_rows,
            job.input_path,
        )


def _log_flagged_rows(summary: WriteSummary, job_id: str) -> None:
    """Log the row numbers of items with dropped terms or errors, not their text."""
    flagged = (
        ("lost protected spans or glossary terms", summary.unrestored_rows),
        ("failed, with their source text kept", summary.error_rows),
    )
    for description, numbers in flagged:
        if not numbers:
            continue
        listing = ", ".join(str(number) for number in numbers)
        if len(numbers) == MAX_LOGGED_ROWS:
            listing += f" (only the first {MAX_LOGGED_ROWS} are listed)"
        logger.info("Job %s: rows that %s: %s", job_id, description, listing)
    for failure in summary.failed_rows:
        logger.info(
            "Job %s: row %d failed: %s",
            job_id,
            failure["row"],
            failure["error"],
        )


def _row_count(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def _flagged_counts(summary: WriteSummary) -> str:
    """Return the summary's sentences on dropped terms and errors, or ""."""
    parts = []
    if summary.unrestored:
        parts.append(
            f"{_row_count(summary.unrestored)} lost protected spans or glossary terms"
        )
    if summary.errors:
        parts.append(f"{_row_count(summary.errors)} failed, source text kept")
    if not parts:
        return ""
    return f" {' and '.join(parts)}. Run with --verbose to log their row numbers."


def _print_written(
    summary: WriteSummary, job_id: str, output_path: Path, as_json: bool
) -> None:
    if as_json:
        report = {
            "task_id": job_id,
            "status": STATUS_DONE,
            "output": str(output_path),
            "rows": summary.rows,
            "translated": summary.translated,
            "cache_hits": summary.cache_hits,
            "unchanged": summary.unchanged,
            "unrestored": summary.unrestored,
            "errors": summary.errors,
            "failed_rows": summary.failed_rows,
            "resubmissions": summary.resubmissions,
        }
        print(json.dumps(report))
        return
    print(
        f"Wrote {_row_count(summary.rows)} to {output_path} (job {job_id}: "
        f"{summary.translated} translated, {_row_count(summary.cache_hits)} from "
        "the cache, "
        f"{summary.unchanged} left unchanged).{_flagged_counts(summary)}"
    )


# Modes.


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _command() -> str:
    """Return how to run this program again: its interpreter and file name.

    The interpreter is the one running now, relative to the working directory
    when it lies inside it (``.venv/bin/python``), since a bare ``python``
    may lack the project's packages.
    """
    interpreter = Path(sys.executable or "python")
    if interpreter.is_relative_to(Path.cwd()):
        interpreter = interpreter.relative_to(Path.cwd())
    return f"{interpreter} {PROGRAM}"


def _collect_hint(job_id: str, output: str) -> str:
    return f"{_command()} --collect {job_id} {output}"


def run_translate(args: argparse.Namespace) -> int:
    """Check the input, submit it and, unless --async, write the output."""
    source_lang, target_lang = resolve_languages(args.source_lang, args.target_lang)
    if args.detected_column and source_lang != AUTO:
        raise CliError(
            "--detected-column needs --source-lang auto, because only detection "
            "fills it. Pass --source-lang auto or remove --detected-column."
        )
    options = translation_options(args)
    input_path = _input_path(args.input)
    output_path = _output_path(args.output, input_path)
    csv_format = csvio.detect_format(input_path, args.encoding, args.delimiter)
    job = prepare_job(
        input_path,
        csv_format,
        args.text_column,
        args.output_column,
        target_lang,
        detected_column=args.detected_column,
        score_column=args.score_column,
    )
    logger.info(
        "Read %s as %s, delimiter %r: %d rows",
        input_path,
        csv_format.encoding,
        csv_format.delimiter,
        job.rows,
    )

    require_workers()
    chunk_size = args.chunk_size or get_settings().chunk_size
    job.sort_window = sort_window(chunk_size)
    progress = not args.no_progress
    try:
        job_id = submit_rows(
            job, source_lang, target_lang, options, chunk_size, progress
        )
    except KeyboardInterrupt:
        return _fail(
            "Interrupted. The partly submitted job was cancelled.", EXIT_INTERRUPTED
        )

    if args.run_async:
        _print_queued(job_id, job, args)
        return EXIT_OK

    resubmit = Resubmission(source_lang, target_lang, options, chunk_size)
    try:
        summary = write_output(
            job, job_id, output_path, progress, _deadline(args.timeout), resubmit
        )
    except KeyboardInterrupt:
        return _fail(
            f"Interrupted. Job {job_id} keeps running on the workers. Write its "
            f"output later with: {_collect_hint(job_id, args.output)}",
            EXIT_INTERRUPTED,
        )
    except DeadlineExceeded:
        return _fail(
            f"Job {job_id} did not finish within --timeout {args.timeout:g} s. "
            f"It keeps running. Write its output later with: "
            f"{_collect_hint(job_id, args.output)}",
            EXIT_NOT_FINISHED,
        )
    except BackendUnavailable as error:
        return _fail(
            f"{error.message} Job {job_id} stays queued. Once the backend is "
            f"back, write its output with: {_collect_hint(job_id, args.output)}",
            EXIT_BACKEND_UNAVAILABLE,
        )
    except ServiceError as error:
        return _fail(f"Job {job_id} failed: {error.message}", _exit_code_for(error))
    if not options.cache:
        release_private_job(job_id)
    _print_written(summary, job_id, output_path, args.json)
    return EXIT_OK


def _print_queued(job_id: str, job: CsvJob, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps({"task_id": job_id, "status": "queued", "rows": job.rows}))
        return
    print(job_id)
    print(
        f"Queued {job.rows} rows as job {job_id}. Check it with: "
        f"{_command()} --status {job_id}, then write the output with: "
        f"{_collect_hint(job_id, args.output)}",
        file=sys.stderr,
    )


def _percent(current: int, total: int) -> str:
    return f"{100 * current // total}%" if total else "100%"


def run_status(args: argparse.Namespace) -> int:
    """Print the status of a job. Return 1 when it failed or was cancelled."""
    job_id = args.status
    record = load_job(job_id)
    report = job_status(job_id, include_result=False)
    if args.json:
        print(json.dumps(report))
    else:
        _print_status(report, record)
    if report["status"] in (STATUS_FAILED, STATUS_CANCELLED):
        return EXIT_JOB_FAILED
    return EXIT_OK


def _print_status(report: dict[str, Any], record: dict[str, Any]) -> None:
    progress = report["progress"]
    current, total = progress["current"], progress["total"]
    print(f"Job {report['task_id']}: {report['status']}")
    print(f"Progress: {current}/{total} rows ({_percent(current, total)})")
    meta = record.get("meta") or {}
    if "input_path" in meta:
        print(
            f"Input: {meta['input_path']}, column {meta['text_column']!r} "
            f"-> {meta['output_column']!r} "
            f"({report['source_lang']}-{report['target_lang']})"
        )
    print(f"Created: {report['created_at']}, expires: {report['expires_at']}")
    if report.get("error"):
        print(f"Error: {report['error']} ({len(report['errors'])} rows failed)")
    elif report["errors"]:
        print(f"Failed rows: {len(report['errors'])}, kept with their source text")
        # A resubmitted job starts at the input row ``first_row``.
        first_row = int(meta.get("first_row") or 0)
        for entry in report["errors"][:MAX_STATUS_ERRORS]:
            print(f"  row {first_row + entry['index'] + 1}: {entry['error']}")


def _csv_job_from_record(job_id: str, record: dict[str, Any]) -> CsvJob:
    meta = record.get("meta") or {}
    if record.get("kind") != JOB_KIND or not all(key in meta for key in META_KEYS):
        raise CliError(
            f"Job {job_id} is a {record.get('kind')!r} job, not a CSV file "
            f"submitted by {PROGRAM}, so --collect cannot write it. Read its "
            f"result with GET /api/task/{job_id}."
        )
    if meta.get("first_row"):
        raise CliError(
            f"Job {job_id} contains only the rows from row {meta['first_row'] + 1} "
            f"on: {PROGRAM} resubmitted them after Redis lost the job that had "
            "the whole file. Translate the file again to get a complete output."
        )
    return CsvJob.from_meta(meta)


def run_collect(args: argparse.Namespace) -> int:
    """Write the output of a finished job, or report how far it is."""
    job_id, output = args.collect
    output_path = _output_path(output)
    record = load_job(job_id)
    job = _csv_job_from_record(job_id, record)
    if output_path == job.input_path:
        raise CliError(
            f"The output {output!r} is the input file. Choose another output path."
        )

    report = job_status(job_id, include_result=False)
    status = report["status"]
    if status in (STATUS_FAILED, STATUS_CANCELLED):
        reason = f": {report['error']}" if report.get("error") else "."
        raise CliError(f"Job {job_id} {status}{reason}", EXIT_JOB_FAILED)
    if status != STATUS_DONE:
        progress = report["progress"]
        current, total = progress["current"], progress["total"]
        raise CliError(
            f"Job {job_id} is {status}: {current}/{total} rows done "
            f"({_percent(current, total)}). Run --collect again when it is done.",
            EXIT_NOT_FINISHED,
        )

    _check_unchanged(job)
    deadline = _deadline(args.timeout or get_settings().sync_timeout)
    summary = write_output(
        job,
        job_id,
        output_path,
        not args.no_progress,
        deadline,
        progress_label="Writing",
    )
    release_private_job(job_id, record)
    _print_written(summary, job_id, output_path, args.json)
    return EXIT_OK


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into SystemExit so the temporary output file is deleted."""
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    sys.exit(main())
