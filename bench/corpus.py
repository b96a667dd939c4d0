"""English benchmark sentences taken from the docstrings of Python's stdlib.

The docstrings ship with every Python installation, so the corpus needs no
download: real English prose of varied length, split into sentences with
sentencex (the splitter the workers use), filtered and deduplicated. The order
is fixed: modules in the order of ``MODULES``, then members by name. Another
Python version has other docstrings, so the report records the corpus digest.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
import re
from collections.abc import Iterator, Sequence
from types import ModuleType

logger = logging.getLogger(__name__)

MODULES = (
    "argparse",
    "ast",
    "asyncio",
    "asyncio.base_events",
    "asyncio.events",
    "asyncio.locks",
    "asyncio.queues",
    "asyncio.streams",
    "asyncio.tasks",
    "base64",
    "bisect",
    "bz2",
    "calendar",
    "cmd",
    "code",
    "codecs",
    "codeop",
    "collections",
    "collections.abc",
    "compileall",
    "concurrent.futures",
    "configparser",
    "contextlib",
    "contextvars",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "dis",
    "doctest",
    "email.headerregistry",
    "email.message",
    "email.policy",
    "email.utils",
    "enum",
    "filecmp",
    "fileinput",
    "fnmatch",
    "fractions",
    "ftplib",
    "functools",
    "getopt",
    "gettext",
    "glob",
    "graphlib",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html.parser",
    "http.client",
    "http.cookiejar",
    "http.cookies",
    "http.server",
    "imaplib",
    "importlib.abc",
    "importlib.resources",
    "inspect",
    "io",
    "ipaddress",
    "json",
    "linecache",
    "locale",
    "logging",
    "logging.handlers",
    "lzma",
    "mailbox",
    "mimetypes",
    "modulefinder",
    "multiprocessing.pool",
    "netrc",
    "numbers",
    "operator",
    "optparse",
    "os",
    "pathlib",
    "pdb",
    "pickle",
    "pickletools",
    "pkgutil",
    "platform",
    "plistlib",
    "poplib",
    "pprint",
    "py_compile",
    "pyclbr",
    "pydoc",
    "queue",
    "random",
    "re",
    "reprlib",
    "runpy",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "smtplib",
    "socket",
    "socketserver",
    "sqlite3",
    "ssl",
    "statistics",
    "string",
    "subprocess",
    "sysconfig",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "trace",
    "traceback",
    "tracemalloc",
    "types",
    "typing",
    "unittest.case",
    "unittest.mock",
    "urllib.parse",
    "urllib.request",
    "urllib.robotparser",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "webbrowser",
    "wsgiref.handlers",
    "wsgiref.simple_server",
    "xml.dom.minidom",
    "xml.etree.ElementTree",
    "xml.sax.handler",
    "xml.sax.saxutils",
    "xmlrpc.client",
    "xmlrpc.server",
    "zipapp",
    "zipfile",
    "zoneinfo",
)

MIN_CHARS = 25
MAX_CHARS = 400
MIN_WORDS = 5
# A sentence is prose when letters and spaces make up this share of it.
MIN_LETTER_SHARE = 0.8

_CODE_MARKS = re.compile(r">>>|\.\.\.\s|::|\w\(|\)\.|[=_{}\[\]<>|\\`#@$*]")
_WORD = re.compile(r"[A-Za-z]+")


def build_corpus(min_sentences: int) -> list[str]:
    """Return at least ``min_sentences`` English sentences in a fixed order.

    Raises ValueError when the docstrings of this Python hold fewer.
    """
    sentences: dict[str, None] = {}
    for text in _docstrings():
        for sentence in split_sentences(text):
            if is_prose(sentence):
                sentences.setdefault(sentence, None)
    corpus = list(sentences)
    if len(corpus) < min_sentences:
        raise ValueError(
            f"The stdlib docstrings of this Python give {len(corpus)} sentences, "
            f"fewer than the {min_sentences} requested. Request fewer sentences "
            "or add modules to bench.corpus.MODULES."
        )
    logger.info("Built a corpus of %d sentences", len(corpus))
    return corpus


def corpus_digest(sentences: Sequence[str]) -> str:
    """Return the first 16 hex digits of the SHA-256 of the sentences."""
    hasher = hashlib.sha256()
    for sentence in sentences:
        hasher.update(sentence.encode())
        hasher.update(b"\n")
    return hasher.hexdigest()[:16]


def split_sentences(docstring: str) -> list[str]:
    """Split a docstring into sentences of its prose paragraphs.

    Paragraphs are separated by blank lines. A paragraph that is indented or
    contains a doctest is code, and is skipped. The lines of a paragraph are
    joined with single spaces before sentencex splits them.
    """
    from sentencex import segment

    sentences = []
    for paragraph in re.split(r"\n\s*\n", docstring):
        lines = paragraph.splitlines()
        if not lines or any(line.startswith((" ", "\t")) for line in lines):
            continue
        if any(line.lstrip().startswith(">>>") for line in lines):
            continue
        joined = " ".join(line.strip() for line in lines)
        sentences += [part.strip() for part in segment("en", joined) if part.strip()]
    return sentences


def is_prose(sentence: str) -> bool:
    """Return True for a sentence that reads as English prose.

    It starts with a capital letter, ends with a full stop, has a sane length
    and word count, and contains no code marks.
    """
    if not MIN_CHARS <= len(sentence) <= MAX_CHARS:
        return False
    if not (sentence[0].isupper() and sentence.endswith(".")):
        return False
    if len(_WORD.findall(sentence)) < MIN_WORDS or _CODE_MARKS.search(sentence):
        return False
    letters = sum(char.isalpha() or char == " " for char in sentence)
    return letters / len(sentence) >= MIN_LETTER_SHARE


def _docstrings() -> Iterator[str]:
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            logger.info("Skipping module %s, which this Python cannot import", name)
            continue
        yield from _module_docstrings(module)


def _module_docstrings(module: ModuleType) -> Iterator[str]:
    doc = inspect.getdoc(module)
    if doc:
        yield doc
    for name, member in sorted(vars(module).items()):
        if name.startswith("_") or getattr(member, "__module__", None) != (
            module.__name__
        ):
            continue
        if not (inspect.isclass(member) or inspect.isfunction(member)):
            continue
        doc = inspect.getdoc(member)
        if doc:
            yield doc
        if inspect.isclass(member):
            for attribute, value in sorted(vars(member).items()):
                if attribute.startswith("_") or not inspect.isfunction(value):
                    continue
                doc = inspect.getdoc(value)
                if doc:
                    yield doc
