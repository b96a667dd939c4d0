"""Tests of the CSV batch command line (``app_batch_celery.py``) and ``core.csvio``.

Unit tests run ``main()`` in this process with the Redis and Celery calls
replaced by an in-memory backend. Integration tests run the command as a
subprocess against a real Redis and a real Celery worker with tiny models.
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
import os
import re
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

import app_batch_celery as cli
from core import csvio
from core.config import PROJECT_ROOT
from core.csvio import CsvFormat, CsvFormatError
from core.errors import BackendUnavailable, JobNotFound, TranslationFailed
from core.options import TranslationOptions

DATA_DIR = Path(__file__).resolve().parent / "data"
ENGLISH_FILE = DATA_DIR / "products_en_bom.csv"
SPANISH_FILE = DATA_DIR / "reviews_es_cp1252.csv"
MIXED_FILE = DATA_DIR / "mixed_en_es.csv"
CLI_TIMEOUT = 240.0
STATUS_WAIT_TIMEOUT = 120.0
STATUS_POLL_INTERVAL = 0.5

ROWS_WITH_LINE_BREAKS = [
    ["id", "text", "note"],
    ["1", "first line\nsecond line", "plain"],
    ["2", "windows\r\nline break", 'has "quotes", commas'],
    ["3", "", "empty text"],
    ["4", 'only "quotes"', ""],
    ["5", "semi;colon|pipe\ttab", "emoji 🎉"],
]


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def read_csv(path: Path, encoding: str = "utf-8-sig", delimiter: str = ",") -> list:
    with path.open(encoding=encoding, newline="") as handle:
        return list(csv.reader(handle, delimiter=delimiter))


def leftover_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


# core.csvio: encodings.


@pytest.mark.unit
def test_detect_encoding_utf8(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "in.csv", "id,text\n1,café 🎉\n".encode())

    assert csvio.detect_encoding(path) == ("utf-8", False)


@pytest.mark.unit
def test_detect_encoding_utf8_bom(tmp_path: Path) -> None:
    data = codecs.BOM_UTF8 + "id,text\n1,café\n".encode()
    path = write_bytes(tmp_path / "in.csv", data)

    assert csvio.detect_encoding(path) == ("utf-8-sig", True)
    with csvio.open_rows(path, csvio.detect_format(path)) as (header, rows):
        assert header == ["id", "text"]
        assert list(rows) == [["1", "café"]]


@pytest.mark.unit
def test_detect_encoding_cp1252(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "in.csv", b"id,text\n1,caf\xe9\n2,na\xefve\n")

    csv_format = csvio.detect_format(path)

    assert csv_format.encoding == "cp1252"
    assert csv_format.had_bom is False
    with csvio.open_rows(path, csv_format) as (_, rows):
        assert list(rows) == [["1", "café"], ["2", "naïve"]]


@pytest.mark.unit
def test_detect_encoding_cp1252_late_byte(tmp_path: Path) -> None:
    """A non-UTF-8 byte after the first sample still selects cp1252."""
    ascii_rows = b"".join(b"%d,plain ascii text\n" % row for row in range(8000))
    path = write_bytes(
        tmp_path / "in.csv", b"id,text\n" + ascii_rows + b"9,cr\xe8me br\xfbl\xe9e\n"
    )
    assert path.stat().st_size > csvio.SAMPLE_BYTES

    assert csvio.detect_encoding(path) == ("cp1252", False)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"plain", None),
        (b"caf\xc3\xa9", None),
        (b"abc\xe9", 3),
        (b"a" * (csvio.READ_BLOCK_BYTES - 1) + "é".encode() + b"\xff", 2**20 + 1),
        (b"a" * (csvio.READ_BLOCK_BYTES - 1) + b"\xc3\x28", 2**20 - 1),
    ],
    ids=["ascii", "utf-8", "truncated", "after block", "across blocks"],
)
def test_first_invalid_utf8_offset(
    tmp_path: Path, data: bytes, expected: int | None
) -> None:
    path = write_bytes(tmp_path / "in.csv", data)

    assert csvio.first_invalid_utf8_offset(path) == expected


@pytest.mark.unit
def test_detect_encoding_utf16_bom(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "in.csv", "id\ttext\n1\tcafé\n".encode("utf-16"))

    csv_format = csvio.detect_format(path)

    assert (csv_format.encoding, csv_format.had_bom) == ("utf-16", True)
    assert csv_format.delimiter == "\t"
    with csvio.open_rows(path, csv_format) as (header, rows):
        assert header == ["id", "text"]
        assert list(rows) == [["1", "café"]]


@pytest.mark.unit
def test_detect_encoding_spanish_file() -> None:
    csv_format = csvio.detect_format(SPANISH_FILE)

    assert csv_format.encoding == "cp1252"
    assert csv_format.delimiter == ";"
    with csvio.open_rows(SPANISH_FILE, csv_format) as (header, rows):
        assert header == ["código", "reseña", "puntuación"]
        assert "€" in next(row for row in rows if "€" in row[1])[1]


@pytest.mark.unit
def test_encoding_override(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "in.csv", codecs.BOM_UTF8 + b"id,text\n")

    assert csvio.resolve_encoding("UTF8", path) == ("utf-8-sig", True)
    assert csvio.resolve_encoding("latin-1", path) == ("iso8859-1", False)
    with pytest.raises(CsvFormatError, match="Unknown encoding 'klingon'"):
        csvio.resolve_encoding("klingon", path)


@pytest.mark.unit
def test_decode_error_names_encoding(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "in.csv", b"id,text\n1,caf\xe9\n")
    csv_format = CsvFormat(encoding="utf-8", delimiter=",")

    with (
        pytest.raises(CsvFormatError, match="not valid utf-8") as caught,
        csvio.open_rows(path, csv_format) as (_, rows),
    ):
        list(rows)
    assert "--encoding" in caught.value.message


# core.csvio: delimiters and line endings.


DELIMITER_SAMPLES = [
    ("comma", 'id,text\n1,"a; b; c"\n2,plain\n', ","),
    ("semicolon", 'id;text;note\n1;"Hello, world; yes";x\n2;a, b, c;y\n', ";"),
    ("tab", "id\ttext\n1\thello, there\n2\tok; fine\n", "\t"),
    ("pipe", "a|b|c\n1|2,3|4\n", "|"),
    ("single column", "text\nhello, there\nhi; you\n", ","),
    ("embedded newline", 'id;text\n1;"multi\nline, here"\n2;"x""y"\n', ";"),
]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("sample", "expected"),
    [case[1:] for case in DELIMITER_SAMPLES],
    ids=[case[0] for case in DELIMITER_SAMPLES],
)
def test_sniff_delimiter(sample: str, expected: str) -> None:
    assert csvio.sniff_delimiter(sample) == expected


@pytest.mark.unit
def test_parse_delimiter_names() -> None:
    assert csvio.parse_delimiter("tab") == "\t"
    assert csvio.parse_delimiter("\\t") == "\t"
    assert csvio.parse_delimiter(";") == ";"
    with pytest.raises(CsvFormatError, match="Invalid delimiter ';;'"):
        csvio.parse_delimiter(";;")


@pytest.mark.unit
def test_detect_line_terminator() -> None:
    assert csvio.detect_line_terminator("a,b\r\n1,2\r\n") == "\r\n"
    assert csvio.detect_line_terminator("a,b\n1,2\n") == "\n"
    assert csvio.detect_line_terminator("a,b") == "\r\n"


# core.csvio: reading and writing.


@pytest.mark.unit
@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_round_trip_line_breaks(tmp_path: Path, delimiter: str) -> None:
    path = tmp_path / "round.csv"
    csv_format = CsvFormat(encoding="utf-8", delimiter=delimiter, line_terminator="\n")

    with csvio.atomic_writer(path, csv_format) as writer:
        writer.writerows(ROWS_WITH_LINE_BREAKS)
    detected = csvio.detect_format(path)
    with csvio.open_rows(path, detected) as (header, rows):
        read_back = [header, *rows]

    assert detected.delimiter == delimiter
    assert read_back == ROWS_WITH_LINE_BREAKS


@pytest.mark.unit
def test_atomic_writer_removes_temporary(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    path.write_text("old content\n")
    csv_format = CsvFormat(encoding="utf-8", delimiter=",")

    with pytest.raises(RuntimeError), csvio.atomic_writer(path, csv_format) as writer:
        writer.writerow(["partial"])
        raise RuntimeError("stop")

    assert path.read_text() == "old content\n"
    assert leftover_files(tmp_path) == []


@pytest.mark.unit
def test_atomic_writer_keeps_bom(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    csv_format = CsvFormat(encoding="utf-8-sig", delimiter=";", had_bom=True)

    with csvio.atomic_writer(path, csv_format) as writer:
        writer.writerow(["a", "b"])

    assert path.read_bytes() == codecs.BOM_UTF8 + b"a;b\r\n"


@pytest.mark.unit
def test_output_row_shapes() -> None:
    assert cli.output_row(["1", "hi", "x"], 3, "hola") == ["1", "hi", "x", "hola"]
    assert cli.output_row(["1"], 3, "") == ["1", "", "", ""]
    assert cli.output_row(["1", "hi", "x", "extra"], 3, "hola") == [
        "1",
        "hi",
        "x",
        "hola",
        "extra",
    ]
    assert cli.output_row([], 3, "") == []


# The command line, with an in-memory backend.


def fake_translation(text: str, target_lang: str) -> str:
    return f"[{target_lang}] {text}" if text.strip() else text


class FakeBackend:
    """Jobs kept in memory, standing in for Redis and the Celery workers."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.status = "done"
        self.failure: Exception | None = None
        self.missing_items = 0
        self.cancelled: list[str] = []
        # Item fields to add for a given input text, such as "score".
        self.item_fields: dict[str, dict[str, Any]] = {}

    def submission(self, *args: Any, **kwargs: Any) -> FakeSubmission:
        return FakeSubmission(self, *args, **kwargs)

    def require_workers(self) -> list[dict[str, Any]]:
        return [{"hostname": "fake"}]

    def load_job(self, job_id: str) -> dict[str, Any]:
        if job_id not in self.jobs:
            raise JobNotFound(f"No job with id {job_id!r} was submitted.")
        return self.jobs[job_id]

    def job_status(self, job_id: str, include_result: bool = False) -> dict[str, Any]:
        record = self.load_job(job_id)
        total = record["total"]
        current = total if self.status == "done" else total // 2
        return {
            "task_id": job_id,
            "status": self.status,
            "source_lang": record["source_lang"],
            "target_lang": record["target_lang"],
            "progress": {"current": current, "total": total},
            "errors": [],
            "created_at": "2024-01-01T00:00:00Z",
            "expires_at": "2024-01-02T00:00:00Z",
        }

    def iter_items(
        self,
        job_id: str,
        deadline: float | None = None,
        ride_out_outages: bool = False,
    ) -> Iterator[dict[str, Any]]:
        record = self.load_job(job_id)
        texts = record["texts"][: len(record["texts"]) - self.missing_items]
        for text in texts:
            if self.failure is not None:
                raise self.failure
            yield {
                "translation": fake_translation(text, record["target_lang"]),
                "cached": False,
                "model": "fake",
                **self.item_fields.get(text, {}),
            }

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        self.cancelled.append(job_id)
        return {"task_id": job_id, "status": "cancelled"}


class FakeSubmission:
    def __init__(
        self,
        backend: FakeBackend,
        kind: str,
        source_lang: str,
        target_lang: str,
        *,
        options: TranslationOptions | None = None,
        queue: str = "bulk",
        **meta: Any,
    ) -> None:
        self.job_id = f"job-{len(backend.jobs) + 1}"
        self.total = 0
        self.record: dict[str, Any] = {
            "job_id": self.job_id,
            "kind": kind,
            "source_lang": source_lang,
            "target_lang": target_lang,
            "options": options,
            "queue": queue,
            "total": meta.pop("total", None),
            "meta": meta,
            "texts": [],
            "sent": [],
            "placed": [],
            "chunk_sizes": [],
        }
        backend.jobs[self.job_id] = self.record

    def add(self, texts: list[str], rows: list[int] | None = None) -> None:
        positions = (
            rows if rows is not None else range(self.total, self.total + len(texts))
        )
        self.record["sent"].extend(texts)
        self.record["placed"].extend(zip(positions, texts, strict=True))
        self.record["chunk_sizes"].append(len(texts))
        self.total += len(texts)

    def finish(self) -> str:
        # Like the job record, keep the texts in row order whatever order they came in.
        placed = sorted(self.record["placed"])
        assert [row for row, _ in placed] == list(range(self.total))
        self.record["texts"] = [text for _, text in placed]
        self.record["total"] = self.total
        return self.job_id


@pytest.fixture
def backend(clean_env: pytest.MonkeyPatch) -> FakeBackend:
    """Replace every Redis and Celery call of the command line."""
    fake = FakeBackend()
    clean_env.setattr(cli, "Submission", fake.submission)
    clean_env.setattr(cli, "require_workers", fake.require_workers)
    clean_env.setattr(cli, "load_job", fake.load_job)
    clean_env.setattr(cli, "job_status", fake.job_status)
    clean_env.setattr(cli, "iter_items", fake.iter_items)
    clean_env.setattr(cli, "cancel_job", fake.cancel_job)
    return fake


@pytest.fixture
def no_backend(clean_env: pytest.MonkeyPatch) -> None:
    """Fail the test if the command line reaches Redis or Celery."""

    def unexpected(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("The command line called the backend.")

    for name in (
        "Submission",
        "require_workers",
        "load_job",
        "iter_items",
    ):
        clean_env.setattr(cli, name, unexpected)


def translate_args(input_path: Path, output_path: Path, *extra: str) -> list[str]:
    return [
        str(input_path),
        str(output_path),
        "--source-lang",
        "en",
        "--target-lang",
        "es",
        "--no-progress",
        *extra,
    ]


@pytest.fixture
def small_csv(tmp_path: Path) -> Path:
    path = tmp_path / "small.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(ROWS_WITH_LINE_BREAKS)
    return path


@pytest.mark.unit
def test_missing_column_lists_columns(
    no_backend: None,
    small_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    output = tmp_path / "out.csv"

    code = cli.main(translate_args(small_csv, output, "--text-column", "body"))

    stderr = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert "Column 'body' not found" in stderr
    assert "'id', 'text', 'note'" in stderr
    assert "Traceback" not in stderr
    assert not output.exists()
    assert leftover_files(tmp_path) == []


@pytest.mark.unit
def test_missing_column_subprocess(small_csv: Path, tmp_path: Path) -> None:
    """The column check exits before the process opens any connection."""
    output = tmp_path / "out.csv"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(PROJECT_ROOT)}

    completed = subprocess.run(
        [
            sys.executable,
            "app_batch_celery.py",
            *translate_args(small_csv, output, "--text-column", "body"),
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert completed.returncode == cli.EXIT_USAGE
    assert completed.stderr.count("\n") == 1, completed.stderr
    assert "Columns: 'id', 'text', 'note'" in completed.stderr
    assert not output.exists()
    assert leftover_files(tmp_path) == []


@pytest.mark.unit
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--source-lang", "en", "--target-lang", "ja"], "not served"),
        (["--source-lang", "e!", "--target-lang", "es"], "source_lang"),
        (["--encoding", "klingon"], "Unknown encoding 'klingon'"),
        (["--delimiter", "::"], "Invalid delimiter '::'"),
        (["--output-column", "note"], "Column 'note' already exists"),
    ],
    ids=["unsupported pair", "bad code", "encoding", "delimiter", "output column"],
)
def test_invalid_input_exit_2(
    no_backend: None,
    small_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    fragment: str,
) -> None:
    output = tmp_path / "out.csv"

    code = cli.main(translate_args(small_csv, output) + args)

    assert code == cli.EXIT_USAGE
    assert fragment in capsys.readouterr().err
    assert not output.exists()


@pytest.mark.unit
def test_missing_input_file(
    no_backend: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(translate_args(tmp_path / "nope.csv", tmp_path / "out.csv"))

    assert code == cli.EXIT_USAGE
    assert "nope.csv' does not exist" in capsys.readouterr().err


@pytest.mark.unit
def test_text_over_limit_rejected(
    no_backend: None,
    clean_env: pytest.MonkeyPatch,
    small_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clean_env.setenv("MAX_TEXT_CHARS", "15")

    code = cli.main(translate_args(small_csv, tmp_path / "out.csv"))

    assert code == cli.EXIT_USAGE
    assert "Row 1 of" in capsys.readouterr().err


@pytest.mark.unit
def test_backend_down_exit_3(
    backend: FakeBackend,
    clean_env: pytest.MonkeyPatch,
    small_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def down() -> None:
        raise BackendUnavailable("No translation worker is running. Start one.")

    clean_env.setattr(cli, "require_workers", down)

    code = cli.main(translate_args(small_csv, tmp_path / "out.csv"))

    assert code == cli.EXIT_BACKEND_UNAVAILABLE
    assert capsys.readouterr().err == (
        "error: No translation worker is running. Start one.\n"
    )
    assert backend.jobs == {}


@pytest.mark.unit
def test_translate_keeps_rows(
    backend: FakeBackend,
    small_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    output = tmp_path / "out.csv"

    code = cli.main(translate_args(small_csv, output, "--chunk-size", "2", "--json"))

    assert code == cli.EXIT_OK
    rows = read_csv(output)
    assert rows[0] == [*ROWS_WITH_LINE_BREAKS[0], "text_es"]
    for written, original in zip(rows[1:], ROWS_WITH_LINE_BREAKS[1:], strict=True):
        assert written[:3] == original
        assert written[3] == fake_translation(original[1], "es")
    assert output.read_bytes().startswith(b"id,text,note,text_es\n")
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 5
    assert summary["unchanged"] == 1
    assert summary["translated"] == 4


@pytest.mark.unit
def test_rows_sent_shortest_first_per_window(
    backend: FakeBackend, tmp_path: Path
) -> None:
    # Two sorting windows of 2 chunks of 3 rows, and a last short window.
    lengths = [5, 1, 4, 2, 6, 3, 9, 7, 8, 7, 1, 2, 3, 1]
    texts = [chr(ord("a") + row) * length for row, length in enumerate(lengths)]
    source = tmp_path / "lengths.csv"
    with source.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([["text"], *([text] for text in texts)])
    output = tmp_path / "out.csv"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "SORT_WINDOW_CHUNKS", 2)
        code = cli.main(translate_args(source, output, "--chunk-size", "3"))

    assert code == cli.EXIT_OK
    (record,) = backend.jobs.values()
    windows = [texts[0:6], texts[6:12], texts[12:]]
    expected = [text for window in windows for text in sorted(window, key=len)]
    assert record["sent"] == expected
    assert record["sent"] != texts
    assert record["chunk_sizes"] == [3, 3, 3, 3, 2]
    written = [row[1] for row in read_csv(output)[1:]]
    assert written == [fake_translation(text, "es") for text in texts]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("chunk_size", "window"),
    [(1, 8), (64, 512), (512, 4096), (1000, 4000), (4096, 4096), (25_000, 25_000)],
)
def test_sort_window_bounded(chunk_size: int, window: int) -> None:
    assert cli.sort_window(chunk_size) == window


@pytest.mark.unit
def test_status_row_after_resubmission(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A job resubmitted from input row 1537 numbers its items from that row.
    record = {"kind": "csv", "meta": {"first_row": 1536}}
    report = {
        "task_id": "job-2",
        "status": "done",
        "source_lang": "en",
        "target_lang": "es",
        "progress": {"current": 8464, "total": 8464},
        "errors": [{"index": 7463, "error": "Translation failed 3 times"}],
        "created_at": "2024-01-01T00:00:00Z",
        "expires_at": "2024-01-02T00:00:00Z",
    }
    monkeypatch.setattr(cli, "load_job", lambda job_id: record)
    monkeypatch.setattr(cli, "job_status", lambda job_id, include_result: report)

    code = cli.main(["--status", "job-2"])
    output = capsys.readouterr().out

    assert code == cli.EXIT_OK
    assert "  row 9000: Translation failed 3 times" in output


@pytest.mark.unit
def test_split_chunks_rows_and_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "CHUNK_CHARS_PER_ROW", 10)
    texts = ["a" * 5, "b" * 5, "c" * 5, "d" * 5, "e" * 12, "f" * 25, "g" * 3]
    texts.append("h" * 40)
    order = list(range(len(texts)))

    # Chunks of at most 3 rows and 30 characters; a longer row goes alone.
    chunks = cli.split_chunks(texts, order, 3)

    assert chunks == [[0, 1, 2], [3, 4], [5, 6], [7]]
    assert cli.split_chunks(texts, [6, 0, 1], 3) == [[6, 0, 1]]
    assert cli.split_chunks([], [], 3) == []


@pytest.mark.unit
def test_submission_order_groups_equal_texts() -> None:
    texts = ["bb", "a", "cc", "bb", "a"]
    order = cli.submission_order(texts)
    assert [texts[position] for position in order] == ["a", "a", "bb", "bb", "cc"]
    assert sorted(order) == list(range(len(texts)))


@pytest.mark.unit
def test_translate_records_job_meta(
    backend: FakeBackend, small_csv: Path, tmp_path: Path
) -> None:
    cli.main(translate_args(small_csv, tmp_path / "out.csv", "--chunk-size", "2"))

    (record,) = backend.jobs.values()
    assert record["kind"] == "csv"
    assert record["queue"] == "bulk"
    assert record["chunk_sizes"] == [2, 2, 1]
    meta = record["meta"]
    assert meta["input_path"] == str(small_csv.resolve())
    assert meta["input_size"] == small_csv.stat().st_size
    assert meta["input_mtime_ns"] == small_csv.stat().st_mtime_ns
    assert meta["encoding"] == "utf-8"
    assert meta["delimiter"] == ","
    assert meta["had_bom"] is False
    assert meta["text_column"] == "text"
    assert meta["output_column"] == "text_es"


@pytest.mark.unit
def test_translate_cp1252_semicolons(backend: FakeBackend, tmp_path: Path) -> None:
    source = write_bytes(
        tmp_path / "in.csv", b'id;text\r\n1;caf\xe9 cr\xe8me\r\n2;\r\n3;"a;b"\r\n'
    )
    output = tmp_path / "out.csv"

    code = cli.main(translate_args(source, output, "--output-column", "es"))

    assert code == cli.EXIT_OK
    assert not output.read_bytes().startswith(codecs.BOM_UTF8)
    assert read_csv(output, "utf-8", ";") == [
        ["id", "text", "es"],
        ["1", "café crème", "[es] café crème"],
        ["2", "", ""],
        ["3", "a;b", "[es] a;b"],
    ]


@pytest.mark.unit
def test_short_rows_are_empty(backend: FakeBackend, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("id,note,text\n1,a,hello\n2\n3,b\n\n4,c,bye,extra\n")
    output = tmp_path / "out.csv"

    code = cli.main(translate_args(source, output))

    assert code == cli.EXIT_OK
    assert read_csv(output) == [
        ["id", "note", "text", "text_es"],
        ["1", "a", "hello", "[es] hello"],
        ["2", "", "", ""],
        ["3", "b", "", ""],
        [],
        ["4", "c", "bye", "[es] bye", "extra"],
    ]


@pytest.mark.unit
def test_progress_bar_on_stderr(
    backend: FakeBackend,
    small_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = translate_args(small_csv, tmp_path / "out.csv")
    args.remove("--no-progress")

    cli.main(args)

    captured = capsys.readouterr()
    assert "Translating" in captured.err
    assert "5/5" in captured.err
    assert "Translating" not in captured.out


@pytest.mark.unit
def test_job_failure_leaves_no_output(
    backend: FakeBackend,
    small_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    backend.failure = TranslationFailed("The worker failed to translate: boom")
    output = tmp_path / "out.csv"

    code = cli.main(translate_args(small_csv, output))

    assert code == cli.EXIT_JOB_FAILED
    assert "boom" in capsys.readouterr().err
    assert not output.exists()
    assert leftover_files(tmp_path) == []


@pytest.mark.unit
def test_fewer_items_than_rows(
    backend: FakeBackend,
    small_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    backend.missing_items = 1
    output = tmp_path / "out.csv"

    code = cli.main(translate_args(small_csv, output))

    assert code == cli.EXIT_USAGE
    assert "no longer has the 5 rows" in capsys.readouterr().err
    assert not output.exists()
    assert leftover_files(tmp_path) == []


# Runs the command line with a backend that stalls after the first item.
STALLING_CLI = """
import signal, sys, time
import app_batch_celery as cli

class Submission:
    def __init__(self, *args, **kwargs):
        self.job_id, self.total = "stalled-job", 0
    def add(self, texts, rows=None):
        self.total += len(texts)
    def finish(self):
        return self.job_id

def iter_items(job_id, deadline=None, ride_out_outages=False):
    yield {"translation": "x", "cached": False}
    print("stalled", flush=True)
    time.sleep(60)

cli.Submission, cli.iter_items = Submission, iter_items
cli.require_workers = lambda: []
signal.signal(signal.SIGTERM, cli._exit_on_sigterm)
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.unit
def test_sigterm_removes_temporary(small_csv: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.csv"
    with subprocess.Popen(
        [sys.executable, "-c", STALLING_CLI, *translate_args(small_csv, output)],
        cwd=PROJECT_ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(PROJECT_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline() == "stalled\n"
            partial = leftover_files(tmp_path)
            process.terminate()
            process.wait(timeout=30)
        finally:
            process.kill()

    assert len(partial) == 1
    assert partial[0].startswith(".out.csv.")
    assert process.returncode == 128 + 15
    assert leftover_files(tmp_path) == []
    assert not output.exists()


@pytest.mark.unit
def test_async_then_collect(
    backend: FakeBackend,
    small_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sync_output = tmp_path / "sync.csv"
    collected = tmp_path / "collected.csv"
    cli.main(translate_args(small_csv, sync_output))
    capsys.readouterr()

    code = cli.main(translate_args(small_csv, tmp_path / "unused.csv", "--async"))
    job_id = capsys.readouterr().out.strip()
    collect_code = cli.main(["--collect", job_id, str(collected), "--no-progress"])

    assert code == cli.EXIT_OK
    assert job_id == "job-2"
    assert collect_code == cli.EXIT_OK
    assert collected.read_bytes() == sync_output.read_bytes()
    assert not (tmp_path / "unused.csv").exists()


@pytest.mark.unit
def test_collect_before_done(
    backend: FakeBackend,
    small_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli.main(translate_args(small_csv, tmp_path / "out.csv", "--async"))
    job_id = capsys.readouterr().out.strip()
    backend.status = "processing"

    code = cli.main(["--collect", job_id, str(tmp_path / "late.csv")])

    assert code == cli.EXIT_NOT_FINISHED
    assert "is processing: 2/5 rows done (40%)" in capsys.readouterr().err
    assert not (tmp_path / "late.csv").exists()


@pytest.mark.unit
def test_collect_rejects_changed_input(
    backend: FakeBackend,
    small_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli.main(translate_args(small_csv, tmp_path / "out.csv", "--async"))
    job_id = capsys.readouterr().out.strip()
    with small_csv.open("a") as handle:
        handle.write("6,added later,x\n")

    code = cli.main(["--collect", job_id, str(tmp_path / "late.csv")])

    assert code == cli.EXIT_USAGE
    assert "changed since the job was submitted" in capsys.readouterr().err
    assert not (tmp_path / "late.csv").exists()


@pytest.mark.unit
def test_collect_unknown_job(
    backend: FakeBackend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["--collect", "no-such-job", str(tmp_path / "out.csv")])

    assert code == cli.EXIT_USAGE
    assert "No job with id 'no-such-job'" in capsys.readouterr().err


@pytest.mark.unit
def test_status_text_and_json(
    backend: FakeBackend,
    small_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli.main(translate_args(small_csv, tmp_path / "out.csv", "--async"))
    job_id = capsys.readouterr().out.strip()
    backend.status = "processing"

    text_code = cli.main(["--status", job_id])
    text = capsys.readouterr().out
    json_code = cli.main(["--status", job_id, "--json"])
    report = json.loads(capsys.readouterr().out)

    assert text_code == json_code == cli.EXIT_OK
    assert f"Job {job_id}: processing" in text
    assert "Progress: 2/5 rows (40%)" in text
    assert "column 'text' -> 'text_es'" in text
    assert report["status"] == "processing"
    assert report["progress"] == {"current": 2, "total": 5}


# Runs --status with a backend that reports one job, for tests of stdout.
STATUS_CLI = """
import sys
import app_batch_celery as cli

record = {"kind": "csv", "meta": {}}
report = {
    "task_id": "job-1", "status": "processing", "source_lang": "en",
    "target_lang": "es", "progress": {"current": 1, "total": 2}, "errors": [],
    "created_at": "2024-01-01T00:00:00Z", "expires_at": "2024-01-02T00:00:00Z",
}
cli.load_job = lambda job_id: record
cli.job_status = lambda job_id, include_result=False: report
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.unit
def test_status_into_closed_pipe() -> None:
    reader, writer = os.pipe()
    # With the read end closed, the first write to stdout raises EPIPE.
    os.close(reader)
    try:
        completed = subprocess.run(
            [sys.executable, "-c", STATUS_CLI, "--status", "job-1"],
            cwd=PROJECT_ROOT,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(PROJECT_ROOT)},
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(writer)

    assert completed.returncode == cli.EXIT_BROKEN_PIPE
    assert completed.stderr == ""


@pytest.mark.unit
def test_queued_hint_names_interpreter(
    backend: FakeBackend,
    small_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "executable", str(tmp_path / ".venv" / "bin" / "python"))

    code = cli.main(translate_args(small_csv, tmp_path / "out.csv", "--async"))
    captured = capsys.readouterr()
    job_id = captured.out.strip()
    hint = captured.err

    assert code == cli.EXIT_OK
    assert (
        f"Check it with: .venv/bin/python app_batch_celery.py --status {job_id}" in hint
    )
    assert f".venv/bin/python app_batch_celery.py --collect {job_id}" in hint


class CountingSubmission:
    """A submission that keeps only the number of rows, for memory tests."""

    rows = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.job_id = "counting-job"
        self.total = 0

    def add(self, texts: list[str], rows: list[int] | None = None) -> None:
        self.total += len(texts)
        CountingSubmission.rows = self.total

    def finish(self) -> str:
        return self.job_id


def constant_items(
    job_id: str, deadline: float | None = None, ride_out_outages: bool = False
) -> Iterator[dict]:
    for _ in range(CountingSubmission.rows):
        yield {"translation": "una frase traducida", "cached": False}


def peak_memory_of_run(folder: Path, rows: int) -> int:
    """Return the peak bytes Python allocated to translate a file of ``rows``."""
    source = folder / f"rows{rows}.csv"
    with source.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "note"])
        for row in range(rows):
            writer.writerow([row, f"Sentence {row}, with a comma and more. " * 3, ""])

    tracemalloc.start()
    try:
        code = cli.main(translate_args(source, folder / f"out{rows}.csv"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == cli.EXIT_OK
    return peak


@pytest.mark.unit
def test_memory_flat_in_rows(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setattr(cli, "Submission", CountingSubmission)
    clean_env.setattr(cli, "require_workers", lambda: [{"hostname": "fake"}])
    clean_env.setattr(cli, "iter_items", constant_items)

    small = peak_memory_of_run(tmp_path, 5_000)
    large = peak_memory_of_run(tmp_path, 60_000)

    assert (tmp_path / "rows60000.csv").stat().st_size > 7_000_000
    assert large < small + 1_000_000, (small, large)


@pytest.mark.unit
def test_mixed_modes_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["--status", "abc", "in.csv"])

    assert caught.value.code == cli.EXIT_USAGE
    assert "--status takes no input file" in capsys.readouterr().err


@pytest.mark.unit
def test_help_describes_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])

    text = capsys.readouterr().out
    options = (
        "--text-column",
        "--encoding",
        "--delimiter",
        "--collect",
        "--format",
        "--glossary",
        "--do-not-translate",
        "--do-not-translate-file",
        "--detected-column",
        "--score-column",
    )
    for option in options:
        assert option in text
    assert "first row is a header only when it reads source,target" in " ".join(
        text.split()
    )


@pytest.mark.unit
def test_import_skips_torch() -> None:
    code = (
        "import sys, app_batch_celery; "
        "print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('torch', 'transformers')))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert completed.stdout.strip() == "[]"


# The command line: request options and added columns.


@pytest.fixture
def option_files(tmp_path: Path) -> Path:
    """A folder of glossary and term files, valid and broken ones."""
    folder = tmp_path / "options"
    folder.mkdir()
    files = {
        "glossary.json": '{"cloud": "nube", "server": "servidor"}',
        "glossary.csv": "Source,Target\ncloud, nube\n\nserver,servidor\n",
        "headless.csv": "cloud;nube\nserver;servidor\n",
        "broken.json": '{"cloud": "nube",}',
        "list.json": '["cloud", "nube"]',
        "number.json": '{"cloud": 3}',
        "empty.json": "{}",
        "twice.json": '{"cloud": "nube", "cloud": "nubes"}',
        "wide.csv": "source,target\ncloud,nube,extra\n",
        "twice.csv": "cloud,nube\nserver,servidor\ncloud,nubes\n",
        "header_only.csv": "source,target\n",
        "terms.txt": "ACME\n\n  Kubernetes  \n",
        "blank_terms.txt": "\n  \n",
        "cloud_term.txt": "cloud\n",
    }
    for name, content in files.items():
        (folder / name).write_text(content, encoding="utf-8")
    (folder / "latin1_terms.txt").write_bytes(b"caf\xe9\n")
    return folder


OPTION_ERRORS = [
    (
        "detected without auto",
        ["--detected-column", "lang"],
        "needs --source-lang auto",
    ),
    (
        "glossary missing",
        ["--glossary", "{dir}/absent.json"],
        "Cannot read the glossary file '{dir}/absent.json'",
    ),
    (
        "glossary csv missing",
        ["--glossary", "{dir}/absent.csv"],
        "Cannot read the glossary file '{dir}/absent.csv'",
    ),
    (
        "invalid json",
        ["--glossary", "{dir}/broken.json"],
        "Glossary file '{dir}/broken.json' is not valid JSON",
    ),
    (
        "json list",
        ["--glossary", "{dir}/list.json"],
        "must contain one JSON object mapping source terms to target terms",
    ),
    (
        "json number",
        ["--glossary", "{dir}/number.json"],
        "Invalid glossary file '{dir}/number.json': glossary contains 3 of type int",
    ),
    ("json empty", ["--glossary", "{dir}/empty.json"], "has no entries"),
    ("json duplicate", ["--glossary", "{dir}/twice.json"], "'cloud' twice"),
    ("csv wide", ["--glossary", "{dir}/wide.csv"], "has 3 cells in row 2"),
    ("csv duplicate", ["--glossary", "{dir}/twice.csv"], "twice, in rows 1 and 3"),
    ("csv header only", ["--glossary", "{dir}/header_only.csv"], "has no entries"),
    (
        "terms missing",
        ["--do-not-translate-file", "{dir}/absent.txt"],
        "Cannot read the file of terms '{dir}/absent.txt'",
    ),
    ("terms blank", ["--do-not-translate-file", "{dir}/blank_terms.txt"], "no terms"),
    (
        "terms not utf-8",
        ["--do-not-translate-file", "{dir}/latin1_terms.txt"],
        "is not valid UTF-8",
    ),
    (
        "empty term",
        ["--do-not-translate", " "],
        "do_not_translate contains an empty term",
    ),
    (
        "term in both",
        ["--glossary", "{dir}/glossary.json", "--do-not-translate", "cloud"],
        "The term 'cloud' is in both do_not_translate and glossary",
    ),
    (
        "file term in both",
        [
            "--glossary",
            "{dir}/glossary.csv",
            "--do-not-translate-file",
            "{dir}/cloud_term.txt",
        ],
        "The term 'cloud' is in both do_not_translate and glossary",
    ),
    (
        "score column exists",
        ["--score-column", "note"],
        "Column 'note' already exists",
    ),
    (
        "score column twice",
        ["--score-column", "text_es"],
        "--output-column and --score-column both name the column 'text_es'",
    ),
]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("args", "fragment"),
    [case[1:] for case in OPTION_ERRORS],
    ids=[case[0] for case in OPTION_ERRORS],
)
def test_invalid_option_one_line(
    no_backend: None,
    small_csv: Path,
    option_files: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    fragment: str,
) -> None:
    output = tmp_path / "out.csv"
    extra = [arg.format(dir=option_files) for arg in args]

    code = cli.main(translate_args(small_csv, output, *extra))

    stderr = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert fragment.format(dir=option_files) in stderr
    assert stderr.startswith("error: ")
    assert stderr.count("\n") == 1, stderr
    assert not output.exists()


@pytest.mark.unit
def test_unknown_format_rejected(
    no_backend: None,
    small_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(translate_args(small_csv, tmp_path / "out.csv", "--format", "xml"))

    assert caught.value.code == cli.EXIT_USAGE
    assert "invalid choice: 'xml'" in capsys.readouterr().err


@pytest.mark.unit
@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--collect", "job-1", "out.csv", "--score-column", "s"], "--score-column"),
        (["--collect", "job-1", "out.csv", "--glossary", "g.csv"], "--glossary"),
        (["--status", "job-1", "--format", "html"], "--format"),
        (["--status", "job-1", "--do-not-translate", "ACME"], "--do-not-translate"),
    ],
    ids=["collect score", "collect glossary", "status format", "status term"],
)
def test_mode_rejects_request_options(
    no_backend: None, capsys: pytest.CaptureFixture[str], argv: list[str], option: str
) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)

    assert caught.value.code == cli.EXIT_USAGE
    assert f"cannot be combined with {option}" in capsys.readouterr().err


@pytest.mark.unit
@pytest.mark.parametrize("glossary", ["glossary.json", "glossary.csv", "headless.csv"])
def test_glossary_reaches_job(
    backend: FakeBackend, small_csv: Path, option_files: Path, glossary: str
) -> None:
    code = cli.main(
        translate_args(
            small_csv,
            small_csv.parent / "out.csv",
            "--format",
            "HTML",
            "--glossary",
            str(option_files / glossary),
            "--do-not-translate",
            "ACME Cloud",
            "--do-not-translate-file",
            str(option_files / "terms.txt"),
        )
    )

    assert code == cli.EXIT_OK
    (record,) = backend.jobs.values()
    assert record["options"] == TranslationOptions(
        format="html",
        do_not_translate=("ACME Cloud", "ACME", "Kubernetes"),
        glossary={"cloud": "nube", "server": "servidor"},
    )


@pytest.mark.unit
def test_default_options_reach_job(
    backend: FakeBackend, small_csv: Path, tmp_path: Path
) -> None:
    cli.main(translate_args(small_csv, tmp_path / "out.csv"))

    (record,) = backend.jobs.values()
    assert record["options"] == TranslationOptions()
    assert record["meta"]["detected_column"] is None
    assert record["meta"]["score_column"] is None


@pytest.fixture
def scored_backend(backend: FakeBackend) -> FakeBackend:
    """A backend whose items carry scores and detected languages."""
    backend.item_fields = {
        "first line\nsecond line": {"score": 0.912345, "detected_source_lang": "en"},
        'only "quotes"': {"score": 1.0, "detected_source_lang": "en"},
        "semi;colon|pipe\ttab": {"score": 0.00004, "detected_source_lang": "es"},
        "": {"score": None},
    }
    return backend


@pytest.mark.unit
def test_auto_adds_detected_and_score(
    scored_backend: FakeBackend, small_csv: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out.csv"
    args = translate_args(
        small_csv, output, "--detected-column", "lang", "--score-column", "score"
    )
    args[args.index("en")] = "AUTO"

    code = cli.main(args)

    assert code == cli.EXIT_OK
    (record,) = scored_backend.jobs.values()
    assert record["source_lang"] == "auto"
    assert record["meta"]["detected_column"] == "lang"
    assert record["meta"]["score_column"] == "score"
    rows = read_csv(output)
    assert rows[0] == ["id", "text", "note", "text_es", "lang", "score"]
    assert [row[4:] for row in rows[1:]] == [
        ["en", "0.9123"],
        ["", ""],
        ["", ""],
        ["en", "1.0000"],
        ["es", "0.0000"],
    ]


@pytest.mark.unit
def test_score_column_after_extra_cells(
    scored_backend: FakeBackend, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    source.write_text('id,text\n1,only "quotes",extra\n2\n')
    output = tmp_path / "out.csv"

    cli.main(translate_args(source, output, "--score-column", "score"))

    assert read_csv(output) == [
        ["id", "text", "text_es", "score"],
        ["1", 'only "quotes"', '[es] only "quotes"', "1.0000", "extra"],
        ["2", "", "", ""],
    ]


@pytest.mark.unit
def test_collect_writes_added_columns(
    scored_backend: FakeBackend,
    small_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sync_output = tmp_path / "sync.csv"
    collected = tmp_path / "collected.csv"
    extra = ("--score-column", "score")
    cli.main(translate_args(small_csv, sync_output, *extra))
    cli.main(translate_args(small_csv, tmp_path / "unused.csv", *extra, "--async"))
    job_id = capsys.readouterr().out.strip().splitlines()[-1]

    code = cli.main(["--collect", job_id, str(collected), "--no-progress"])

    assert code == cli.EXIT_OK
    assert read_csv(collected)[0][-1] == "score"
    assert collected.read_bytes() == sync_output.read_bytes()


@pytest.fixture
def flagged_backend(backend: FakeBackend) -> FakeBackend:
    """A backend whose items report dropped terms on row 1 and errors on 4, 5."""
    dropped = {"unrestored": [{"kind": "glossary", "source": "cloud"}]}
    failed = {"error": "The language of this text could not be detected."}
    backend.item_fields = {
        "first line\nsecond line": dropped,
        'only "quotes"': failed,
        "semi;colon|pipe\ttab": failed,
    }
    return backend


@pytest.mark.unit
def test_flagged_rows_in_summary(
    flagged_backend: FakeBackend,
    small_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli.main(translate_args(small_csv, tmp_path / "a.csv", "--json"))
    report = json.loads(capsys.readouterr().out)
    cli.main(translate_args(small_csv, tmp_path / "b.csv"))
    line = capsys.readouterr().out

    assert report["unrestored"] == 1
    assert report["errors"] == 2
    assert line.count("\n") == 1
    assert "1 row lost protected spans or glossary terms" in line
    assert "2 rows failed, source text kept" in line
    assert "--verbose" in line


@pytest.mark.unit
def test_summary_without_flagged_rows(
    backend: FakeBackend,
    small_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli.main(translate_args(small_csv, tmp_path / "out.csv", "--json"))
    report = json.loads(capsys.readouterr().out)

    assert report["unrestored"] == 0
    assert report["errors"] == 0


@pytest.mark.unit
def test_verbose_logs_row_numbers(
    flagged_backend: FakeBackend,
    small_csv: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=cli.__name__)

    cli.main(translate_args(small_csv, tmp_path / "out.csv", "--verbose"))

    messages = [record.getMessage() for record in caplog.records]
    assert any(
        message.endswith("lost protected spans or glossary terms: 1")
        for message in messages
    )
    assert any(
        message.endswith("failed, with their source text kept: 4, 5")
        for message in messages
    )
    for message in messages:
        assert "quotes" not in message
        assert "semi;colon" not in message


# Integration: a real Redis and Celery worker with tiny models.


def run_cli(
    env: dict[str, str], *args: str, check: bool = False
) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(
        [sys.executable, "app_batch_celery.py", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
    if check:
        assert completed.returncode == 0, completed.stderr
    return completed


@dataclass
class SyncRun:
    """The output of one synchronous run of the English test file."""

    output: Path
    summary: dict[str, Any]
    stderr: str


@pytest.fixture(scope="module")
def cli_env(
    stack_env: dict[str, str],
    celery_worker: subprocess.Popen[bytes],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    """The worker's environment with a disk cache of the command line's own."""
    return dict(stack_env, CACHE_DIR=str(tmp_path_factory.mktemp("cli-cache")))


@pytest.fixture(scope="module")
def sync_run(
    cli_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> SyncRun:
    output = tmp_path_factory.mktemp("sync") / "products_es.csv"
    completed = run_cli(
        cli_env,
        str(ENGLISH_FILE),
        str(output),
        "--source-lang",
        "en",
        "--target-lang",
        "es",
        "--chunk-size",
        "40",
        "--json",
        check=True,
    )
    return SyncRun(output, json.loads(completed.stdout), completed.stderr)


def english_args(output: Path, *extra: str) -> list[str]:
    return [
        str(ENGLISH_FILE),
        str(output),
        "--source-lang",
        "en",
        "--target-lang",
        "es",
        *extra,
    ]


@pytest.mark.integration
def test_sync_output_keeps_rows(sync_run: SyncRun) -> None:
    source = read_csv(ENGLISH_FILE)
    output = read_csv(sync_run.output)

    assert len(source) > 200
    assert output[0] == [*source[0], "text_es"]
    assert len(output) == len(source)
    for written, original in zip(output[1:], source[1:], strict=True):
        assert written[:4] == original
        assert len(written) == 5
        if original[1].strip():
            assert written[4].strip(), f"row {original[0]} has no translation"
        else:
            assert written[4] == original[1]


@pytest.mark.integration
def test_sync_output_format(sync_run: SyncRun) -> None:
    data = sync_run.output.read_bytes()
    source_rows = len(read_csv(ENGLISH_FILE)) - 1

    assert data.startswith(codecs.BOM_UTF8)
    assert data.count(b"\r\n") >= source_rows
    assert sync_run.summary["rows"] == source_rows
    assert "Translating" in sync_run.stderr
    assert [path.name for path in sync_run.output.parent.iterdir()] == [
        sync_run.output.name
    ]


@pytest.mark.integration
def test_rerun_all_cache_hits(
    live_stack: dict[str, str], sync_run: SyncRun, tmp_path: Path
) -> None:
    from core import jobs

    output = tmp_path / "again.csv"
    completed = run_cli(
        live_stack, *english_args(output, "--no-progress", "--json"), check=True
    )
    summary = json.loads(completed.stdout)
    items = jobs.job_status(summary["task_id"], include_result=True)["result"]["items"]
    texts = [row[1] for row in read_csv(ENGLISH_FILE)[1:]]

    assert output.read_bytes() == sync_run.output.read_bytes()
    assert summary["translated"] == 0
    assert summary["cache_hits"] == sum(1 for text in texts if text.strip())
    assert len(items) == len(texts)
    for text, item in zip(texts, items, strict=True):
        if text.strip():
            assert item["cached"] is True


@pytest.mark.integration
def test_async_status_collect(
    cli_env: dict[str, str], sync_run: SyncRun, tmp_path: Path
) -> None:
    output = tmp_path / "collected.csv"
    queued = run_cli(cli_env, *english_args(tmp_path / "unused.csv", "--async"))
    job_id = queued.stdout.strip()
    assert queued.returncode == 0, queued.stderr

    deadline = time.monotonic() + STATUS_WAIT_TIMEOUT
    report = json.loads(run_cli(cli_env, "--status", job_id, "--json").stdout)
    while report["status"] != "done" and time.monotonic() < deadline:
        time.sleep(STATUS_POLL_INTERVAL)
        report = json.loads(run_cli(cli_env, "--status", job_id, "--json").stdout)
    text = run_cli(cli_env, "--status", job_id).stdout
    collected = run_cli(cli_env, "--collect", job_id, str(output), "--no-progress")

    assert report["task_id"] == job_id
    assert report["status"] == "done"
    assert f"Job {job_id}: done" in text
    assert collected.returncode == 0, collected.stderr
    assert output.read_bytes() == sync_run.output.read_bytes()
    assert not (tmp_path / "unused.csv").exists()


@pytest.mark.integration
def test_cp1252_semicolon_file(cli_env: dict[str, str], tmp_path: Path) -> None:
    output = tmp_path / "reviews_en.csv"

    completed = run_cli(
        cli_env,
        str(SPANISH_FILE),
        str(output),
        "--text-column",
        "reseña",
        "--source-lang",
        "es",
        "--target-lang",
        "en",
        "--no-progress",
    )

    assert completed.returncode == 0, completed.stderr
    source = read_csv(SPANISH_FILE, "cp1252", ";")
    written = read_csv(output, "utf-8", ";")
    assert not output.read_bytes().startswith(codecs.BOM_UTF8)
    assert written[0] == [*source[0], "reseña_en"]
    for row, original in zip(written[1:], source[1:], strict=True):
        assert row[:3] == original
        assert bool(row[3].strip()) == bool(original[1].strip())


@pytest.mark.integration
def test_collect_unknown_id(cli_env: dict[str, str], tmp_path: Path) -> None:
    completed = run_cli(cli_env, "--collect", "not-a-job", str(tmp_path / "out.csv"))

    assert completed.returncode == cli.EXIT_USAGE
    assert "No job with id 'not-a-job'" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.integration
def test_score_column_values(
    cli_env: dict[str, str], sync_run: SyncRun, tmp_path: Path
) -> None:
    output = tmp_path / "scored.csv"

    run_cli(
        cli_env,
        *english_args(output, "--score-column", "score", "--no-progress"),
        check=True,
    )

    source = read_csv(ENGLISH_FILE)
    written = read_csv(output)
    translations = [row[4] for row in read_csv(sync_run.output)[1:]]
    assert written[0] == [*source[0], "text_es", "score"]
    assert [row[4] for row in written[1:]] == translations
    for row, original in zip(written[1:], source[1:], strict=True):
        score = row[5]
        if cli.needs_model(original[1]):
            assert re.fullmatch(r"[01]\.\d{4}", score), (original[0], score)
            assert 0 < float(score) <= 1, (original[0], score)
        else:
            assert score == "", original[0]


@pytest.mark.integration
def test_auto_detected_column(cli_env: dict[str, str], tmp_path: Path) -> None:
    output = tmp_path / "mixed_es.csv"

    completed = run_cli(
        cli_env,
        str(MIXED_FILE),
        str(output),
        "--source-lang",
        "auto",
        "--target-lang",
        "es",
        "--detected-column",
        "detected",
        "--no-progress",
        "--json",
        check=True,
    )

    summary = json.loads(completed.stdout)
    rows = read_csv(output)
    assert rows[0] == ["id", "lang", "text", "text_es", "detected"]
    assert len(rows) == 11
    for row in rows[1:]:
        assert row[4] == row[1], f"row {row[0]}: expected {row[1]!r}, got {row[4]!r}"
        assert bool(row[3].strip()) == bool(row[2].strip())
    assert summary["errors"] == 0


class TagCollector(HTMLParser):
    """Collect the start, end and self-closing tags of a document, in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(("start", tag, attrs))

    def handle_endtag(self, tag: str) -> None:
        self.tags.append(("end", tag, []))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(("startend", tag, attrs))


def tag_sequence(document: str) -> list[tuple[str, str, list[tuple[str, str | None]]]]:
    collector = TagCollector()
    collector.feed(document)
    collector.close()
    return collector.tags


HTML_CELLS = [
    "<p>The weather is <b>lovely</b> today, isn't it?</p>",
    '<ul><li>Open the box.</li><li>Read the <a href="/guide?a=1&amp;b=2" '
    'title="Guide">user guide</a> first.</li></ul>',
    '<div class="note">Keep it dry.<br>Store it below <em>25 °C</em>.</div>',
    '<h1>Welcome</h1><img src="logo.png" alt="Logo"/><p>Thanks for visiting.</p>',
    "",
]


@pytest.mark.integration
def test_html_keeps_tags(cli_env: dict[str, str], tmp_path: Path) -> None:
    source = tmp_path / "pages.csv"
    with source.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "html"])
        writer.writerows([index, cell] for index, cell in enumerate(HTML_CELLS, 1))
    output = tmp_path / "pages_es.csv"

    run_cli(
        cli_env,
        str(source),
        str(output),
        "--text-column",
        "html",
        "--source-lang",
        "en",
        "--target-lang",
        "es",
        "--format",
        "html",
        "--no-progress",
        check=True,
    )

    rows = read_csv(output)
    assert rows[0] == ["id", "html", "html_es"]
    for row, cell in zip(rows[1:], HTML_CELLS, strict=True):
        assert tag_sequence(row[2]) == tag_sequence(cell), row[0]
        if cell:
            assert row[2] != cell, f"row {row[0]} was not translated"
        else:
            assert row[2] == ""


@pytest.mark.unit
def test_unterminated_quote_is_rejected(
    no_backend: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "open_quote.csv"
    source.write_text('id,text\n1,"Hello there\n2,Second row\n3,Third row\n')
    output = tmp_path / "out.csv"

    code = cli.main(translate_args(source, output))

    stderr = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert "not valid CSV" in stderr
    assert not output.exists()


@pytest.mark.unit
def test_duplicate_text_column_is_rejected(
    no_backend: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "twice.csv"
    source.write_text("text,id,text\nHello,1,World\n")
    output = tmp_path / "out.csv"

    code = cli.main(translate_args(source, output))

    stderr = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert "'text' appears 2 times" in stderr
    assert "columns 1, 3" in stderr
    assert not output.exists()
