"""Unit tests of the benchmark package and its forced output length.

They check the corpus builder, /proc parsing, the statistics and the page
writer with fixed inputs, and the ``BENCH_FORCED_OUTPUT_TOKENS`` setting with
a tiny checkpoint. No test measures or asserts a duration.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import run as bench_run
from bench.ceiling import expected_target_tokens
from bench.corpus import build_corpus, corpus_digest, is_prose, split_sentences
from bench.engines import (
    count_generated_tokens,
    csv_tasks,
    forced_length,
    measure_throughput,
)
from bench.memory import (
    MemoryUsage,
    mapped_library,
    parse_smaps_rollup,
    read_memory,
)
from bench.model import joint_vocab
from bench.report import (
    evaluate_goals,
    mb,
    render_markdown,
    table,
    write_chart,
)
from bench.run import evenly_spaced
from bench.scenarios import median_length_window
from bench.stats import percentile, rate, ratio
from bench.timing import estimate_full_seconds, phase
from core import translator
from core.config import load_settings, reset_settings
from core.models import load_model, unload_all
from core.translator import generation_settings, translate_texts_scored
from tests.make_tiny_model import EOS_TOKEN, PAD_TOKEN, UNK_TOKEN, build_tiny_model

pytestmark = [
    pytest.mark.unit,
    pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses"),
]

FULL_CORPUS = 3000
FUNCTION_WORDS = {"the", "a", "an", "of", "to", "is", "in", "and", "for", "be"}

SMAPS_ROLLUP = """\
55d0c0a00000-7ffd5a1f4000 ---p 00000000 00:00 0                          [rollup]
Rss:              204800 kB
Pss:              150016 kB
Pss_Dirty:         90000 kB
Pss_Anon:          88000 kB
Shared_Clean:      60000 kB
Shared_Dirty:       1000 kB
Private_Clean:     40000 kB
Private_Dirty:    103800 kB
Referenced:       200000 kB
Anonymous:         88000 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
"""

MAPS_WITH_TORCH = """\
7f1c2a000000-7f1c2b000000 r-xp 00000000 08:01 1234 /venv/lib/torch/lib/libtorch_cpu.so
7f1c2c000000-7f1c2c100000 rw-p 00000000 00:00 0
"""
MAPS_WITHOUT_TORCH = """\
7f1c2a000000-7f1c2b000000 r-xp 00000000 08:01 1234 /usr/lib/libc.so.6
7f1c2c000000-7f1c2c100000 r--p 00000000 08:01 99 /data/libtorch-notes/readme.txt
"""


# Corpus.


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return build_corpus(FULL_CORPUS)


def test_corpus_has_full_run_size(corpus: list[str]) -> None:
    assert len(corpus) >= FULL_CORPUS


def test_corpus_is_deterministic(corpus: list[str]) -> None:
    again = build_corpus(FULL_CORPUS)
    assert again == corpus
    assert corpus_digest(again) == corpus_digest(corpus)


def test_corpus_has_no_duplicates(corpus: list[str]) -> None:
    assert len(set(corpus)) == len(corpus)


def test_corpus_is_english_prose(corpus: list[str]) -> None:
    assert all(is_prose(sentence) for sentence in corpus)
    with_function_words = [
        sentence
        for sentence in corpus
        if FUNCTION_WORDS & set(sentence.lower().rstrip(".").split())
    ]
    assert len(with_function_words) / len(corpus) > 0.9


def test_corpus_lengths_vary(corpus: list[str]) -> None:
    lengths = sorted(len(sentence) for sentence in corpus)
    assert lengths[0] < 40
    assert lengths[-1] > 200


def test_corpus_rejects_too_large_request() -> None:
    with pytest.raises(ValueError, match="fewer than the 1000000 requested"):
        build_corpus(1_000_000)


@pytest.mark.parametrize(
    "sentence",
    [
        "Return x.",
        "The value is computed as foo(bar) plus one.",
        "Use :func:`open` to read the file contents here.",
        "set x = 3 when the flag is given in the call.",
        "Call it with the 123 456 789 0000 1111 2222 3333 values.",
        "the sentence starts with a lower case letter here.",
        "The sentence has no full stop at the end of it",
    ],
)
def test_is_prose_rejects(sentence: str) -> None:
    assert not is_prose(sentence)


def test_is_prose_accepts_plain_sentence() -> None:
    assert is_prose("Return the number of items in the queue, or zero if empty.")


def test_split_sentences_skips_code_and_doctests() -> None:
    docstring = (
        "Open a file and return a stream. The mode defaults to reading\n"
        "text.\n"
        "\n"
        "    with open(path) as handle:\n"
        "        handle.read()\n"
        "\n"
        ">>> open('x')\n"
        "<file>\n"
    )
    assert split_sentences(docstring) == [
        "Open a file and return a stream.",
        "The mode defaults to reading text.",
    ]


def test_evenly_spaced_keeps_order_and_spread() -> None:
    items = [str(index) for index in range(10)]
    assert evenly_spaced(items, 5) == ["0", "2", "4", "6", "8"]
    assert evenly_spaced(items, 20) == items


def test_median_length_window_picks_middle() -> None:
    pool = ["x" * length for length in (1, 50, 10, 11, 12, 13, 90, 2)]
    assert median_length_window(pool, 4) == ["x" * n for n in (10, 11, 12, 13)]


def test_median_length_window_needs_enough() -> None:
    with pytest.raises(ValueError, match="needs 4 sentences; got 3"):
        median_length_window(["a", "b", "c"], 4)


# /proc parsing.


def test_parse_smaps_rollup() -> None:
    usage = parse_smaps_rollup(SMAPS_ROLLUP)
    assert usage.rss_kib == 204800
    assert usage.pss_kib == 150016
    assert usage.uss_kib == 40000 + 103800


def test_parse_smaps_rollup_missing_field() -> None:
    text = SMAPS_ROLLUP.replace("Private_Dirty:", "Something_Else:")
    with pytest.raises(ValueError, match="Private_Dirty"):
        parse_smaps_rollup(text)


def test_read_memory_of_this_process() -> None:
    usage = read_memory(os.getpid())
    assert usage is not None
    assert 0 < usage.uss_kib <= usage.rss_kib
    assert 0 < usage.pss_kib <= usage.rss_kib


def test_memory_usage_add_and_peak() -> None:
    first = MemoryUsage(10, 6, 4)
    second = MemoryUsage(8, 7, 2)
    assert first + second == MemoryUsage(18, 13, 6)
    assert first.peak(second) == MemoryUsage(10, 7, 4)


def test_mapped_library_finds_libtorch() -> None:
    assert mapped_library(MAPS_WITH_TORCH, "libtorch")


def test_mapped_library_ignores_other_paths() -> None:
    assert not mapped_library(MAPS_WITHOUT_TORCH, "libtorch")


# Statistics.


def test_percentile_interpolates() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 95) == pytest.approx(3.85)
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0


def test_percentile_single_value() -> None:
    assert percentile([7.0], 95) == 7.0


@pytest.mark.parametrize(("values", "q"), [([], 50), ([1.0], 101), ([1.0], -1)])
def test_percentile_rejects(values: list[float], q: float) -> None:
    with pytest.raises(ValueError):
        percentile(values, q)


def test_ratio_and_rate() -> None:
    assert ratio(10, 4) == 2.5
    assert ratio(None, 4) is None
    assert ratio(10, 0) is None
    assert rate(300, 60) == 5.0


def test_mb_converts_kib() -> None:
    assert mb(1000) == pytest.approx(1.024)


# Report.


def sample_results(quick: bool = True, **changes: Any) -> dict[str, Any]:
    names = {
        "naive": "naive",
        "transformers": "ceiling: transformers float32",
        "default_ceiling": "ceiling: transformers float32",
        "csv_one": "csv one",
        "csv_default": "csv one",
    }
    results: dict[str, Any] = {
        "quick": quick,
        "command": "python bench/run.py --quick" if quick else "python bench/run.py",
        "date": "2026-12-04 18:00 UTC",
        "duration_s": 300.0,
        "seed": 0,
        "machine": {
            "cpu": "Test CPU",
            "cores": 2,
            "memory_gib": 8.0,
            "os": "Test OS",
            "kernel": "6.1",
            "python": "3.11.9",
            "packages": {"torch": "2.13.0", "ctranslate2": None},
            "load_average": [1.0, 1.0, 1.0],
        },
        "load_average_end": [2.0, 1.0, 1.0],
        "sizes": {
            "sentences": 24,
            "csv_chunk": 12,
            "naive": 4,
            "cached_requests": 50,
            "miss_requests": 3,
            "miss_requests_8": 8,
            "batch_repeats": 3,
            "batch_distinct": 24,
            "micro": 8,
            "interactive": 3,
            "bulk_chunk": 8,
            "bulk_rows": 1000,
        },
        "full_sizes": {"sentences": 3000, "naive": 100, "csv_chunk": 64},
        "settings": {"BENCH_FORCED_OUTPUT_TOKENS": "true"},
        "corpus": {"sentences": 24, "digest": "abc123"},
        "row_names": names,
        "throughput": [
            {
                "name": "naive",
                "settings": "beam 4",
                "texts": 4,
                "target_tokens": 80,
                "seconds": 40.0,
                "tokens_per_s": 2.0,
            },
            {
                "name": "ceiling: transformers float32",
                "settings": "ENGINE=transformers",
                "texts": 24,
                "target_tokens": 480,
                "seconds": 40.0,
                "tokens_per_s": 12.0,
            },
            {
                "name": "ceiling: ctranslate2 int8",
                "settings": "ENGINE=ctranslate2",
                "skipped": "ctranslate2 is not installed",
            },
            {
                "name": "csv one",
                "settings": "WORKER_CONCURRENCY=1",
                "texts": 24,
                "target_tokens": 480,
                "seconds": 48.0,
                "tokens_per_s": 10.0,
                "ceiling": "ceiling: transformers float32",
            },
        ],
        "warm": {"rows": 24, "cold_s": 48.0, "warm_s": 2.0},
        "latency": [
            {
                "name": "translate_cached",
                "label": "/api/translate, cache hits",
                "requests": 50,
                "clients": 1,
                "p50_ms": 4.0,
                "p95_ms": 6.0,
            },
            {
                "name": "batch_cached",
                "label": "/api/batch, 1,000 cached texts",
                "requests": 3,
                "clients": 1,
                "p50_ms": 150.0,
                "p95_ms": 160.0,
            },
            {
                "name": "interactive_during_bulk",
                "label": "/api/translate during a job",
                "requests": 3,
                "clients": 1,
                "p50_ms": 1000.0,
                "p95_ms": 1500.0,
            },
        ],
        "micro_batching": {"requests": 8, "concurrent_s": 8.0, "sequential_s": 8.8},
        "memory_stack": "1 worker process",
        "memory": [
            {
                "stack": "1 worker process",
                "service": "api",
                "role": "gunicorn worker",
                "pid": 10,
                "rss_kib": 60000,
                "pss_kib": 40000,
                "uss_kib": 30000,
                "torch": False,
            },
            {
                "stack": "1 worker process",
                "service": "worker",
                "role": "celery child",
                "pid": 11,
                "rss_kib": 900000,
                "pss_kib": 800000,
                "uss_kib": 700000,
                "torch": True,
            },
        ],
        "cli_memory": {
            "stack": "1 worker process",
            "rss_kib": 70000,
            "pss_kib": 50000,
            "uss_kib": 40000,
            "torch": False,
        },
        "worker_pss": {
            "children_a": 1,
            "pss_a_kib": 800000,
            "children_b": 2,
            "pss_b_kib": 1600000,
        },
    }
    results.update(changes)
    return results


def goals_by_name(results: dict[str, Any]) -> dict[str, Any]:
    return {goal.goal: goal for goal in evaluate_goals(results)}


def test_goals_met_and_not_met() -> None:
    goals = goals_by_name(sample_results())

    cold = goals[
        "cold CSV (1 worker process) >= 0.9x the in-process ceiling of the "
        "same engine and precision"
    ]
    assert cold.measured == "0.833x"
    assert cold.met is False
    assert goals["default config >= 10x the naive baseline"].measured == "5x"
    assert goals["warm CSV rerun >= 50x faster than cold"].met is False
    assert goals["cached /api/translate p50 < 5 ms"].met is True
    assert goals["/api/batch with 1,000 cached texts < 100 ms (p50)"].met is False
    assert goals["uncached /api/translate p95 < 2 s while a CSV job runs"].met is True
    assert goals["API and CLI < 120 MB RSS each, without torch"].met is True
    pss = goals[
        "workers of the default layout (2 processes) <= 1.3x the PSS of "
        "1 worker process"
    ]
    assert pss.measured == "2x"
    assert pss.met is False


def test_goal_fails_when_front_end_maps_torch() -> None:
    results = sample_results()
    results["cli_memory"]["torch"] = True
    goals = goals_by_name(results)
    assert goals["API and CLI < 120 MB RSS each, without torch"].met is False


def test_goal_not_measured_without_data() -> None:
    results = sample_results(micro_batching=None, latency=[])
    goals = goals_by_name(results)
    micro = "micro-batching: concurrent single misses >= 4x faster than sequential"
    assert goals[micro].met is None
    assert goals["cached /api/translate p50 < 5 ms"].met is None


def test_markdown_marks_quick_run() -> None:
    page = render_markdown(sample_results(quick=True), "bench/throughput.png")
    assert "**Quick run** (`--quick`)" in page
    assert "24 corpus sentences instead of 3,000" in page
    assert "python bench/run.py --quick" in page


def test_markdown_states_shared_machine_and_estimate() -> None:
    results = sample_results(quick=True, shared_machine=True, full_estimate_s=5400.0)
    page = render_markdown(results, None)
    assert "**Shared machine**" in page
    assert "full run on this machine: about 90 minutes" in page
    quiet = render_markdown(sample_results(quick=True), None)
    assert "Shared machine" not in quiet
    assert "Estimated duration" not in quiet


def test_estimate_scales_only_marked_parts() -> None:
    results: dict[str, Any] = {}
    with phase(results, "ceiling") as current:
        current.scale(2.0, 10.0)
        current.scale(1.0, 3.0)
        current.scale(-0.5, 3.0)
    with phase(results, "setup"):
        pass
    assert [row["name"] for row in results["phases"]] == ["ceiling", "setup"]
    assert results["phases"][0]["extra_s"] == 2.0 * 9 + 1.0 * 2
    assert estimate_full_seconds(100.0, results["phases"]) == 120.0


def test_markdown_full_run_has_no_quick_banner() -> None:
    page = render_markdown(sample_results(quick=False), None)
    assert "Quick run" not in page
    assert "![" not in page


def test_markdown_tables() -> None:
    page = render_markdown(sample_results(), "bench/throughput.png")
    assert "![Target tokens per second by configuration](bench/throughput.png)" in page
    assert (
        "| csv one | WORKER_CONCURRENCY=1 | 24 | 480 | 48.0 | 10.0 | 5.00x | 0.83x |"
        in (page)
    )
    assert "skipped: ctranslate2 is not installed" in page
    assert "| cached /api/translate p50 < 5 ms | 4.0 ms | met |" in page
    assert (
        "| 1 worker process | api: gunicorn worker | 61.4 | 41.0 | 30.7 | no |" in page
    )
    assert "| CPU | Test CPU |" in page
    assert "| BENCH_FORCED_OUTPUT_TOKENS | true |" in page


def test_table_escapes_pipes() -> None:
    text = table(["a", "b"], [["x|y", 1]])
    assert text.splitlines() == ["| a | b |", "| --- | --- |", "| x\\|y | 1 |"]


def test_write_chart_png(tmp_path: Path) -> None:
    path = tmp_path / "chart" / "throughput.png"
    assert write_chart(sample_results(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_chart_without_rows(tmp_path: Path) -> None:
    path = tmp_path / "throughput.png"
    assert not write_chart(sample_results(throughput=[]), path)
    assert not path.exists()


# Model shape and forced output length.


def test_joint_vocab_fills_to_size() -> None:
    import sentencepiece

    from tests.make_tiny_model import _train_sentencepiece

    spm = _train_sentencepiece(["The quick brown fox jumps over the lazy dog."], 0)
    pieces = sentencepiece.SentencePieceProcessor(model_proto=spm).get_piece_size()
    vocab = joint_vocab(spm, 500)
    assert len(vocab) == 500
    assert vocab[EOS_TOKEN] == 0
    assert vocab[UNK_TOKEN] == 1
    assert vocab[PAD_TOKEN] == 499
    assert sorted(vocab.values()) == list(range(500))
    assert len([token for token in vocab if token.startswith("<unused")]) > (
        500 - pieces - 2
    )


def test_joint_vocab_too_small() -> None:
    from tests.make_tiny_model import _train_sentencepiece

    spm = _train_sentencepiece(["The quick brown fox jumps over the lazy dog."], 0)
    with pytest.raises(ValueError, match="Lower SPM_PIECES"):
        joint_vocab(spm, 3)


@pytest.fixture
def forced_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[pytest.MonkeyPatch]:
    build_tiny_model(tmp_path, "en", "de")
    for name in ("LANGUAGE_PAIRS", "ENGINE", "PRECISION", "DEVICE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NUM_BEAMS", "2")
    # One thread: two threads on a shared two-core machine wait on each other.
    monkeypatch.setenv("TORCH_THREADS", "1")
    monkeypatch.setenv("BENCH_FORCED_OUTPUT_TOKENS", "true")
    monkeypatch.setenv("CT2_CACHE_DIR", str(tmp_path / "ct2"))
    # The first spy below wraps transformers' generate.
    monkeypatch.setenv("ENGINE", "transformers")
    reset_settings()
    unload_all()
    yield monkeypatch
    unload_all()
    reset_settings()


def test_forced_setting_defaults_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BENCH_FORCED_OUTPUT_TOKENS", raising=False)
    assert load_settings().bench_forced_output_tokens is False
    monkeypatch.setenv("BENCH_FORCED_OUTPUT_TOKENS", "true")
    assert load_settings().bench_forced_output_tokens is True


def test_forced_length_changes_cache_settings(forced_env: pytest.MonkeyPatch) -> None:
    assert generation_settings()["forced_output_tokens"] is True
    forced_env.setenv("BENCH_FORCED_OUTPUT_TOKENS", "false")
    reset_settings()
    assert "forced_output_tokens" not in generation_settings()


def test_forced_length_rule() -> None:
    assert forced_length(1, 512) == 8
    assert forced_length(8, 512) == 8
    assert forced_length(9, 512) == 16
    assert forced_length(600, 512) == 512


def test_forced_length_generates_exact_tokens(forced_env: pytest.MonkeyPatch) -> None:
    texts = [
        "The morning train to the coast leaves at seven.",
        "Could you send me the invoice before Friday?",
        "It was cold, so we lit a fire in the kitchen and waited for the "
        "rain to stop before we walked along the river.",
        "The morning train to the coast leaves at seven.",
    ]
    loaded = load_model("en", "de")
    rows: list[tuple[int, int]] = []
    generate = loaded.model.generate

    def spy(*args: Any, **kwargs: Any) -> Any:
        sequences = generate(*args, **kwargs)
        rows.append((int(sequences.shape[0]), int(sequences.shape[1]) - 1))
        return sequences

    forced_env.setattr(loaded.model, "generate", spy)
    translate_texts_scored(loaded, texts, "en")

    lengths = [
        forced_length(len(ids), loaded.max_input_tokens)
        for ids in loaded.tokenizer(list(dict.fromkeys(texts)))["input_ids"]
    ]
    assert sorted(length for count, length in rows for _ in range(count)) == sorted(
        lengths
    )
    generated = sum(count * length for count, length in rows)
    assert generated == expected_target_tokens(loaded.tokenizer, texts)


FORCED_TEXTS = [
    "The morning train to the coast leaves at seven.",
    "Could you send me the invoice before Friday?",
    "It was cold, so we lit a fire in the kitchen and waited for the "
    "rain to stop before we walked along the river.",
    "The morning train to the coast leaves at seven.",
]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_ctranslate2_forced_length_generates_exact_tokens(
    forced_env: pytest.MonkeyPatch, precision: str
) -> None:
    forced_env.setenv("ENGINE", "ctranslate2")
    forced_env.setenv("PRECISION", precision)
    reset_settings()
    loaded = load_model("en", "de")
    assert (loaded.engine, loaded.precision) == ("ctranslate2", precision)
    lengths: list[int] = []
    generate_batch = translator.generate_batch

    def spy(*args: Any, **kwargs: Any) -> list[translator.GeneratedOutput]:
        outputs = generate_batch(*args, **kwargs)
        lengths.extend(output.generated_tokens for output in outputs)
        return outputs

    forced_env.setattr(translator, "generate_batch", spy)
    translate_texts_scored(loaded, FORCED_TEXTS, "en")

    expected = [
        forced_length(len(ids), loaded.max_input_tokens)
        for ids in loaded.tokenizer(list(dict.fromkeys(FORCED_TEXTS)))["input_ids"]
    ]
    assert sorted(lengths) == sorted(expected)
    assert sum(lengths) == expected_target_tokens(loaded.tokenizer, FORCED_TEXTS)


def test_ctranslate2_without_forced_length_stops_elsewhere(
    forced_env: pytest.MonkeyPatch,
) -> None:
    # The counterpart of the test above: without the setting, the limit is
    # the larger one of MAX_NEW_TOKENS_RATIO, so the counts differ.
    forced_env.setenv("ENGINE", "ctranslate2")
    forced_env.setenv("BENCH_FORCED_OUTPUT_TOKENS", "false")
    reset_settings()
    loaded = load_model("en", "de")

    with count_generated_tokens() as count:
        translate_texts_scored(loaded, FORCED_TEXTS, "en")

    assert count.outputs == 3
    assert count.tokens != expected_target_tokens(loaded.tokenizer, FORCED_TEXTS)


@pytest.mark.parametrize("engine", ["transformers", "ctranslate2"])
def test_count_generated_tokens_counts_every_engine(
    forced_env: pytest.MonkeyPatch, engine: str
) -> None:
    forced_env.setenv("ENGINE", engine)
    reset_settings()
    loaded = load_model("en", "de")
    original = translator.generate_batch

    with count_generated_tokens() as count:
        translate_texts_scored(loaded, FORCED_TEXTS, "en")

    assert count.outputs == 3
    assert count.tokens == expected_target_tokens(loaded.tokenizer, FORCED_TEXTS)
    assert translator.generate_batch is original


@pytest.mark.unit
def test_missing_package_stops_before_measuring(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def measure(*args: Any) -> dict[str, Any]:
        raise AssertionError("The benchmark started measuring.")

    monkeypatch.setattr(bench_run, "DEV_PACKAGES", ("matplotlib", "no_such_package"))
    monkeypatch.setattr(bench_run, "run", measure)

    with pytest.raises(SystemExit) as caught:
        bench_run.main(["--quick", "--work-dir", str(tmp_path)])

    assert caught.value.code == 2
    error = capsys.readouterr().err
    assert "no_such_package is not installed" in error
    assert "pip install -r requirements-dev.txt" in error


@pytest.mark.unit
def test_csv_tasks_match_command_chunks(tmp_path: Path) -> None:
    import app_batch_celery as cli
    from core.csvio import detect_format

    texts = [f"{'word ' * (index % 5)}row {index}" for index in range(30)]
    source = tmp_path / "rows.csv"
    source.write_text("text\n" + "".join(f"{text}\n" for text in texts))
    job = cli.prepare_job(source, detect_format(source, None, None), "text", None, "de")
    job.sort_window = cli.sort_window(4)

    sent = [chunk for _, chunk in cli._chunks(job, 4)]

    assert csv_tasks(texts, 4) == sent
    assert [text for task in sent for text in task] != texts


def test_chunked_throughput_same_tokens(forced_env: pytest.MonkeyPatch) -> None:
    texts = [
        "The morning train to the coast leaves at seven.",
        "Could you send me the invoice before Friday?",
        "It was cold, so we lit a fire in the kitchen.",
        "Rain.",
        "We walked along the river until the sun went down behind the hills.",
    ]
    loaded = load_model("en", "de")

    whole = measure_throughput(loaded, texts, runs=1)
    chunked = measure_throughput(loaded, texts, runs=1, chunk_size=2)

    assert chunked.target_tokens == whole.target_tokens
    assert chunked.texts == whole.texts == len(texts)
