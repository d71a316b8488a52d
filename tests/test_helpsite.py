"""``smtpguard help-site``: every reply's help URL leads to its page on a real web
server, every link of the site resolves, text is escaped, and the Chinese text is really
drawn by a browser (headless Chromium, Debian's package, with the CJK font the test
command installs)."""

from __future__ import annotations

import functools
import html
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest

from smtpguard.config import load_config
from smtpguard.explain import knowledge
from smtpguard.helpsite import SiteError, build_site, limit_facts, page_form
from smtpguard.replies import MILTER_IDS, MTA_IDS, load_replies
from support.png import read_png
from support.postfix import client, start_postfix, write_settled
from support.service import ROOT, RULES, make_site, run_cli

HELP_URL = "https://help.example.com/smtp/{id}"


def errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr without help-site's notes on what it could not ask Postfix here."""
    return [line for line in result.stderr.splitlines() if "help-site: note:" not in line]


CHROMIUM = "/usr/bin/chromium"
CJK = re.compile(r"[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site of a config with a help URL, hints and an override with HTML in it,
    written where the URL's directory is served from (``www/smtp``)."""
    tmp = tmp_path_factory.mktemp("helpsite")
    config = make_site(
        tmp,
        {
            "replies": {
                "help_url": HELP_URL,
                "hint": True,
                "form": "per_language",
                "override": {"rbl_deny": {"text": {"en": 'rbl <deny> & "more"'}}},
            }
        },
        directory=False,
    ).config
    out = tmp / "www" / "smtp"
    result = run_cli("-c", str(config), "help-site", "--out", str(out))
    assert result.returncode == 0, result.stderr
    files = len(MILTER_IDS) + len(MTA_IDS) + 2
    assert result.stdout == f"{out}: {files} files; the page of reply ID is ID/index.html\n"
    (tmp / "config").symlink_to(config)
    return out


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server(site: Path) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` serving the site's parent, on loopback."""
    handler = functools.partial(_Quiet, directory=str(site.parent))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def fetch(url: str) -> tuple[str, str]:
    """The final URL (after redirects) and the body of a 200 answer."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.geturl(), response.read().decode("utf-8")


def test_every_help_url_leads_to_its_page(site: Path, server: str) -> None:
    config = load_config(site.parent.parent / "config")
    table = load_replies(config.replies, config.file)
    for reply_id in MILTER_IDS:
        lines = table.render(reply_id, utf8=True).wire_lines()
        url = lines[-1].split(" ", 2)[2]
        assert url == HELP_URL.format(id=reply_id)
        # The published site: https://help.example.com/smtp/ is served from www/smtp.
        final, page = fetch(server + urlsplit(url).path)
        assert final.endswith(f"/smtp/{reply_id}/")
        row = table.rows[reply_id]
        assert f"<code>{row.code} {row.xcode}</code> {reply_id}</h1>" in page
        # The exact reply line, every line of it, and the sender's advice in both languages.
        assert f"<pre>{_escape_all(chr(10).join(lines))}</pre>" in page
        for lang in ("en", "zh"):
            assert _escape_all(row.hint[lang]) in page
            assert _escape_all(row.text[lang]) in page
    for reply_id in MTA_IDS:
        assert (site / reply_id / "index.html").is_file()


def _escape_all(text: str) -> str:
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#x27;")
    )


def test_text_is_escaped(site: Path) -> None:
    page = (site / "rbl_deny" / "index.html").read_text(encoding="utf-8")
    assert "rbl &lt;deny&gt; &amp; &quot;more&quot;" in page
    assert "<deny>" not in page
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "<td>rbl &lt;deny&gt; &amp; &quot;more&quot;</td>" in index


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value is not None:
                self.links.append(value)
            if name == "id" and value is not None:
                self.ids.add(value)


def _parse(text: str) -> _Links:
    parser = _Links()
    parser.feed(text)
    return parser


def test_every_link_resolves(site: Path, server: str) -> None:
    pages = sorted(site.rglob("*.html"))
    assert len(pages) == len(MILTER_IDS) + len(MTA_IDS) + 1
    checked = 0
    for page in pages:
        base = f"{server}/smtp/{page.relative_to(site).as_posix()}"
        links = _parse(page.read_text(encoding="utf-8")).links
        assert links, page
        for link in links:
            assert not urlsplit(link).scheme, f"{page}: external link {link}"
            target = urljoin(base, link)
            path, _, fragment = target.partition("#")
            _, body = fetch(path)
            if fragment:
                assert fragment in _parse(body).ids, f"{page}: {link}"
            checked += 1
    # The index links every page; every page links the index, the style sheet and
    # its two language sections.
    assert checked == len(pages) - 1 + 4 * (len(pages) - 1) + 1


def test_page_forms() -> None:
    assert page_form("") == "{id}/index.html"
    assert page_form("https://help.example.com/smtp/{id}") == "{id}/index.html"
    assert page_form("https://help.example.com/smtp/{id}/") == "{id}/index.html"
    assert page_form("https://help.example.com/{id}.html") == "{id}.html"
    for template in (
        "https://help.example.com/?id={id}",
        "https://h.example/{id}/x",
        "https://{id}/",  # the id would name a host
        "https://{id}.help.example/",
    ):
        with pytest.raises(SiteError, match="last path segment"):
            page_form(template)


def test_html_pages_for_an_html_template(tmp_path: Path) -> None:
    config = make_site(
        tmp_path, {"replies": {"help_url": "https://h.example/r/{id}.html"}}, directory=False
    ).config
    out = tmp_path / "out"
    assert run_cli("-c", str(config), "help-site", "--out", str(out)).returncode == 0
    assert (out / "rbl_deny.html").is_file()
    assert 'href="rbl_deny.html"' in (out / "index.html").read_text(encoding="utf-8")
    assert 'href="index.html"' in (out / "rbl_deny.html").read_text(encoding="utf-8")


def test_a_table_in_english_only(tmp_path: Path) -> None:
    table = tmp_path / "replies.toml"
    shipped = (RULES / "replies.toml").read_text(encoding="utf-8").splitlines()
    table.write_text(
        "\n".join(line for line in shipped if not line.startswith(("text.zh", "hint.zh"))),
        encoding="utf-8",
    )
    config = make_site(
        tmp_path, {"replies": {"table": str(table), "languages": ["en"]}}, directory=False
    ).config
    out = tmp_path / "out"
    result = run_cli("-c", str(config), "help-site", "--out", str(out))
    assert result.returncode == 0, result.stderr
    page = (out / "rbl_deny" / "index.html").read_text(encoding="utf-8")
    assert '<section id="en" lang="en">' in page
    assert 'id="zh"' not in page
    assert 'href="#zh"' not in page


def test_a_query_template_is_refused(tmp_path: Path) -> None:
    config = make_site(
        tmp_path, {"replies": {"help_url": "https://h.example/help?id={id}"}}, directory=False
    ).config
    result = run_cli("-c", str(config), "help-site", "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "last path segment" in result.stderr
    assert not (tmp_path / "out").exists()


def screenshot(url: str, out: Path, profile: Path) -> int:
    """Dark pixels of ``url`` rendered by headless Chromium at 800x1400."""
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--user-data-dir={profile}",
            f"--screenshot={out}",
            "--window-size=800,1400",
            url,
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    return read_png(out.read_bytes()).dark_pixels()


@pytest.mark.integration
@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="needs Debian's chromium package")
def test_chromium_draws_the_chinese_text(site: Path, server: str, tmp_path: Path) -> None:
    """The page as written against the same page with every CJK character replaced by
    the one-stroke 一. CJK glyphs are all one width, so the layout is the same and the
    difference in ink is the strokes of the real characters. A missing font draws every
    character as the same box: the two would be alike."""
    page = (site / "rbl_deny" / "index.html").read_text(encoding="utf-8")
    chars = len(CJK.findall(page))
    assert chars > 60
    (site / "rbl_deny" / "one_stroke.html").write_text(CJK.sub("一", page), encoding="utf-8")
    try:
        real, one = (
            screenshot(f"{server}/smtp/rbl_deny/{file}", tmp_path / f"{n}.png", tmp_path / "p")
            for n, file in enumerate(("index.html", "one_stroke.html"))
        )
    finally:
        (site / "rbl_deny" / "one_stroke.html").unlink()
    # About 60 more dark pixels per character at 16 px with Noto Sans CJK.
    assert real - one > 20 * chars, (real, one, chars)


def _rbl_page(tmp_path: Path, replies: dict[str, Any], mta: str = "auto") -> str:
    """The rbl_deny page of a config with ``replies`` and ``milter.mta``."""
    config = load_config(
        make_site(tmp_path, {"replies": replies, "milter": {"mta": mta}}, directory=False).config
    )
    table = load_replies(config.replies, config.file)
    pages = build_site(table, knowledge(), mta=config.milter.mta)
    return next(p.content for p in pages if p.reply_id == "rbl_deny")


UTF8_LINE = "<pre>554 5.7.1 rbl deny. (拒绝 RBL 中的邮件服务器)</pre>"
ASCII_LINE = "<pre>554 5.7.1 rbl deny.</pre>"


@pytest.mark.parametrize(
    ("utf8", "mta", "forms"),
    [
        ("always", "postfix", [UTF8_LINE]),
        ("always", "auto", [UTF8_LINE, "MTA is Sendmail", ASCII_LINE]),
        ("always", "sendmail", [ASCII_LINE]),
        ("never", "postfix", [ASCII_LINE]),
        ("never", "auto", [ASCII_LINE]),
        ("smtputf8", "postfix", ["used SMTPUTF8:", UTF8_LINE, "Otherwise:", ASCII_LINE]),
        ("smtputf8", "auto", ["used SMTPUTF8:", UTF8_LINE, "Otherwise, and always", ASCII_LINE]),
        ("smtputf8", "sendmail", [ASCII_LINE]),
    ],
)
def test_the_reply_line_is_the_one_the_milter_sends(
    tmp_path: Path, utf8: str, mta: str, forms: list[str]
) -> None:
    """UTF-8 only where ``Pipeline.utf8_allowed`` sends it; both forms, labelled, where
    either may be sent."""
    page = _rbl_page(tmp_path, {"utf8": utf8}, mta)
    english = page[page.index('<section id="en"') : page.index('<section id="zh"')]
    shown = english[english.index("The exact reply line") :]
    at = 0
    for form in forms:
        at = shown.index(form, at) + len(form)
    assert shown.count("<pre>") == sum(f.startswith("<pre>") for f in forms)


def test_a_percent_is_shown_once(tmp_path: Path) -> None:
    """The table writes '%' as '%%'; the client reads one, and so does the page."""
    text = {"en": "rbl deny 100%% sure", "zh": "拒绝 100%% 确定"}
    hint = {"en": "ask 100%% nicely", "zh": "请 100%% 礼貌"}
    page = _rbl_page(tmp_path, {"override": {"rbl_deny": {"text": text, "hint": hint}}})
    assert "%%" not in page
    for shown in (
        "<h2>rbl deny 100% sure</h2>",
        "<p>ask 100% nicely</p>",
        "<h2>拒绝 100% 确定</h2>",
    ):
        assert shown in page
    assert "<title>554 5.7.1 rbl_deny: rbl deny 100% sure</title>" in page


def test_text_before_the_id_stays_in_the_file_name(tmp_path: Path) -> None:
    """``.../smtp-{id}.html`` links to smtp-ID.html: that is where the page goes."""
    assert page_form("https://h.example/docs/smtp-{id}.html") == "smtp-{id}.html"
    assert page_form("https://h.example/docs/smtp-{id}") == "smtp-{id}/index.html"
    for template in ("https://h.example/docs/a%20b{id}", "https://h.example/x{y}{id}"):
        with pytest.raises(SiteError, match="last path segment"):
            page_form(template)
    config = make_site(
        tmp_path,
        {"replies": {"help_url": "https://h.example/docs/smtp-{id}.html"}},
        directory=False,
    ).config
    out = tmp_path / "out"
    result = run_cli("-c", str(config), "help-site", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("the page of reply ID is smtp-ID.html\n")
    assert (out / "smtp-rbl_deny.html").is_file()
    assert not (out / "rbl_deny.html").exists()
    index = (out / "index.html").read_text(encoding="utf-8")
    assert 'href="smtp-rbl_deny.html"' in index
    # Every link of the index leads to a file that was written.
    for link in _parse(index).links:
        assert (out / link).is_file(), link


def test_writing_again_removes_the_pages_of_the_previous_form(tmp_path: Path) -> None:
    """A help_url changed from {id}/ pages to {id}.html: the old pages go, files the
    site never wrote stay, and `--out ""` (an unset variable) writes nowhere."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "robots.txt").write_text("User-agent: *\n", encoding="utf-8")
    for name, url in (
        ("dirs", "https://h.example/r/{id}/"),
        ("html", "https://h.example/r/{id}.html"),
    ):
        config = make_site(tmp_path / name, {"replies": {"help_url": url}}, directory=False).config
        assert run_cli("-c", str(config), "help-site", "--out", str(out)).returncode == 0
    assert (out / "rbl_deny.html").is_file()
    assert not (out / "rbl_deny").exists()
    assert (out / "robots.txt").is_file()
    assert not list(out.rglob(".*.tmp"))
    result = run_cli("-c", str(config), "help-site", "--out", "")
    assert result.returncode == 2
    assert "--out must name a directory" in result.stderr


def test_writing_again_never_deletes_through_a_link(tmp_path: Path) -> None:
    """An operator replaced a page's folder by a link to a folder of theirs: the next
    write (another help_url form) leaves the file there alone."""
    out, theirs = tmp_path / "out", tmp_path / "theirs"
    config = make_site(
        tmp_path / "a", {"replies": {"help_url": "https://h.example/r/{id}/"}}, directory=False
    ).config
    assert run_cli("-c", str(config), "help-site", "--out", str(out)).returncode == 0
    theirs.mkdir()
    (theirs / "index.html").write_text("their page", encoding="utf-8")
    shutil.rmtree(out / "rbl_deny")
    (out / "rbl_deny").symlink_to(theirs)
    config = make_site(
        tmp_path / "b", {"replies": {"help_url": "https://h.example/r/{id}.html"}}, directory=False
    ).config
    assert run_cli("-c", str(config), "help-site", "--out", str(out)).returncode == 0
    assert (theirs / "index.html").read_text(encoding="utf-8") == "their page"
    assert not (out / "queue_unavailable").exists()


def test_links_planted_in_the_folder_are_never_written_through(tmp_path: Path) -> None:
    """Whoever may write the web root plants links at the names the site writes (the old
    fixed temporary name, a page, the manifest) or at a page's folder: the files they
    point to stay as they were, the pages are plain files readable by the web server."""
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("precious\n", encoding="utf-8")
    for name in (".index.html.tmp", "index.html", ".smtpguard-help-site"):
        (out / name).symlink_to(victim)
    config = make_site(tmp_path / "a", {}, directory=False).config
    result = run_cli("-c", str(config), "help-site", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert victim.read_text(encoding="utf-8") == "precious\n"
    assert not (out / "index.html").is_symlink()
    assert (out / "index.html").stat().st_mode & 0o044 == 0o044
    assert not (out / ".smtpguard-help-site").is_symlink()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()]


def test_a_page_folder_replaced_by_a_link_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = make_site(
        tmp_path / "a", {"replies": {"help_url": "https://h.example/r/{id}/"}}, directory=False
    ).config
    out = tmp_path / "out"
    out.mkdir()
    (out / "rbl_deny").symlink_to(elsewhere)
    result = run_cli("-c", str(config), "help-site", "--out", str(out))
    assert result.returncode == 2
    assert "rbl_deny: is a link, not a folder of the site" in result.stderr
    assert not list(elsewhere.iterdir())
    # Review rev100 F11: refused before any page is written, not half way through.
    assert [p.name for p in out.iterdir()] == ["rbl_deny"]


def test_a_file_where_a_page_folder_goes_is_refused_before_writing(tmp_path: Path) -> None:
    """Review rev101 F10: "File exists" after some pages were rewritten."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "rbl_deny").write_text("an operator's file", encoding="utf-8")
    config = make_site(
        tmp_path / "a", {"replies": {"help_url": "https://h.example/r/{id}/"}}, directory=False
    ).config
    # The host named: no note about this machine's postconf in the way.
    result = run_cli(
        "-c", str(config), "help-site", "--out", str(out), "--mta-hostname", "mx.example.com"
    )
    assert result.returncode == 2
    assert errors(result) == [f"smtpguard: {out / 'rbl_deny'}: is a file, not a folder of the site"]
    assert [p.name for p in out.iterdir()] == ["rbl_deny"]


def test_the_mta_host_name_is_postfix_s_own(tmp_path: Path) -> None:
    """Review rev101 F8: the first of site.our_hostnames is not Postfix's myhostname;
    rev102 F5: expanded ($mydomain), a fallback said, a name that is none refused.
    postconf reads the Postfix of MAIL_CONFIG."""
    config = make_site(
        tmp_path / "a",
        {"site": {"our_hostnames": ["backup.example.net", "mx1.example.com"]}},
        directory=False,
    ).config
    postfix = tmp_path / "postfix"
    postfix.mkdir()
    write_settled(postfix / "main.cf", "mydomain = example.org\nmyhostname = mx1.$mydomain\n")
    shown, said = {}, {}
    for name, extra, mail_config in (
        ("given", ["--mta-hostname", "mx2.example.com"], postfix),
        ("postconf", [], postfix),
        ("none", [], tmp_path / "no-postfix"),
    ):
        out = tmp_path / name
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "smtpguard",
                "-c",
                str(config),
                "help-site",
                "--out",
                str(out),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "MAIL_CONFIG": str(mail_config)},
        )
        assert done.returncode == 0, done.stderr
        shown[name] = (out / "stray_newline" / "index.html").read_text("utf-8")
        said[name] = done.stderr
    bare = "Error: bare &lt;LF&gt; received"
    assert f"mx2.example.com {bare}" in shown["given"]
    assert f"mx1.example.org {bare}" in shown["postconf"]
    assert (said["given"], said["postconf"]) == ("", "")
    assert f"mail.example.com {bare}" in shown["none"]
    assert "give --mta-hostname" in said["none"]
    bad = run_cli(
        "-c", str(config), "help-site", "--out", str(tmp_path / "x"), "--mta-hostname", "a b<"
    )
    assert bad.returncode == 2
    assert "--mta-hostname: not a host name: 'a b<'" in bad.stderr


def test_a_page_that_cannot_be_written_is_named(tmp_path: Path) -> None:
    """Review rev100 F11: the error named the folder (by a temporary file's name)."""
    out = tmp_path / "out"
    (out / "index.html" / "x").mkdir(parents=True)
    config = make_site(tmp_path / "a", {}, directory=False).config
    result = run_cli(
        "-c", str(config), "help-site", "--out", str(out), "--mta-hostname", "mx.example.com"
    )
    assert result.returncode == 2
    assert errors(result) == [f"smtpguard: {out / 'index.html'}: Is a directory"]
    assert not list(out.rglob(".*.tmp"))


def _postfix_forms(out: Path, reply_id: str) -> list[str]:
    """The lines an MTA row's English section shows, unescaped."""
    page = next(p for p in out.rglob("*.html") if f"/{reply_id}" in str(p)).read_text("utf-8")
    english = page[page.index('<section id="en"') : page.index('<section id="zh"')]
    assert "Postfix answers in its own words" in english
    return [html.unescape(s) for s in re.findall(r"<pre>(.*?)</pre>", english, re.S)]


@pytest.mark.integration
@pytest.mark.parametrize("help_url", ["", HELP_URL])
def test_an_mta_rows_page_shows_what_postfix_really_sends(tmp_path: Path, help_url: str) -> None:
    """Review rev98 F11: the page for RCPT before MAIL showed the table's "502 5.5.1
    please say MAIL first"; a client of Postfix with postfix-config's footers gets
    Postfix's own words with the translation after them, as a real Postfix 3.7 shows.
    Review rev100 F9: so do the rows whose footer pattern is no literal line (an
    unknown command, a syntax error, a bare LF refused), with this host's name.
    Review rev229 L2: with a help URL the footer adds it on a line of its own, as the
    milter's replies carry it, and the page shows both lines."""
    extra = {"replies": {"help_url": help_url}} if help_url else {}
    site = make_site(tmp_path / "site", extra, directory=False)
    footers = run_cli("-c", str(site.config), "postfix-config", "--footers")
    assert footers.returncode == 0, footers.stderr
    footer_map = tmp_path / "footers.regexp"
    footer_map.write_text(footers.stdout, encoding="utf-8")
    out = tmp_path / "out"
    # The test Postfix's myhostname (the host's own Postfix may answer postconf).
    written = run_cli(
        "-c", str(site.config), "help-site", "--out", str(out), "--mta-hostname", "mx.example.com"
    )
    assert written.returncode == 0, written.stderr
    postfix = start_postfix(
        ROOT / "conf" / "smtpguard.toml",
        f"\nsmtpd_reject_footer_maps = regexp:{footer_map}\n"
        "smtpd_forbid_bare_newline = reject\nsmtpd_forbid_bare_newline_exclusions =\n",
        attach=False,
        networks="127.0.0.0/8",
    )
    try:
        smtp = client(postfix)
        rcpt_first = smtp.cmd("RCPT TO:<bob@example.com>")
        unknown = smtp.cmd("FOO")
        smtp.ehlo()
        syntax = smtp.cmd("MAIL FROM:")
        smtp.cmd("MAIL FROM:<a@example.com>")
        rcpt_syntax = smtp.cmd("RCPT TO:")
        smtp.send_raw(b"NOOP\n")
        bare = smtp.read()
        smtp.quit()
    finally:
        postfix.stop()
    said = {
        reply_id: _postfix_forms(out, reply_id)
        for reply_id in ("mail_first", "syntax_error", "stray_newline")
    }
    assert said["mail_first"][0] == "\n".join(rcpt_first.lines)
    assert said["syntax_error"][0].splitlines() == [
        *unknown.lines,
        *syntax.lines,
        *rcpt_syntax.lines,
    ]
    assert said["stray_newline"][0] == "\n".join(bare.lines)
    assert "mx.example.com Error: bare <LF> received (" in said["stray_newline"][0]
    assert rcpt_first.lines[-1].endswith("/smtp/mail_first") is bool(help_url)
    # Review rev229 L1: the page called it a temporary refusal (the table's 451) above
    # Postfix's 550: each form's own code decides, and two kinds say both.
    page = (out / "stray_newline" / "index.html").read_text(encoding="utf-8")
    assert "A temporary (4xx) or permanent (5xx) refusal, as the lines below show" in page
    assert "This is a temporary refusal" not in page
    assert "This is a permanent refusal" in (out / "mail_first" / "index.html").read_text()


@pytest.mark.parametrize(("utf8", "noted"), [("always", True), ("smtputf8", False)])
def test_a_sender_without_smtputf8_is_told_of_question_marks(
    tmp_path: Path, utf8: str, noted: bool
) -> None:
    """Review rev229 M1: with "always", a sending Postfix without SMTPUTF8 wrote every
    Chinese character of the reply as "?" in its bounce; the page said nothing of it."""
    page = _rbl_page(tmp_path, {"utf8": utf8}, "postfix")
    assert ("may show the Chinese text of this line as question marks" in page) is noted
    assert ("可能把这一行的中文显示为问号" in page) is noted


@pytest.mark.integration
@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="needs Debian's chromium package")
def test_the_index_fits_a_phone_screen(site: Path, tmp_path: Path) -> None:
    """Review rev229 L4: at a phone's width the index's table made the whole page 572 px
    wide in a 500 px viewport (the narrowest headless Chromium lays out), cutting the
    text columns; the table scrolls on its own now. Measured by Chromium's layout."""
    index = (site / "index.html").read_text(encoding="utf-8")
    script = (
        '<script>document.body.setAttribute("data-width",'
        " document.documentElement.scrollWidth)</script></body>"
    )
    measured = site / "measure.html"
    measured.write_text(index.replace("</body>", script), encoding="utf-8")
    try:
        dom = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--hide-scrollbars",
                "--force-device-scale-factor=1",
                f"--user-data-dir={tmp_path / 'p'}",
                "--window-size=390,844",
                "--dump-dom",
                measured.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    finally:
        measured.unlink()
    width = re.search(r'data-width="(\d+)"', dom)
    assert width is not None, dom[-500:]
    assert int(width.group(1)) <= 500


def test_pages_quote_this_configurations_limits(tmp_path: Path) -> None:
    """Review rev229 L3: "larger than this server accepts" and no number, while the
    EHLO SIZE a sender sees may be the MTA's own; the pages of the replies that refuse
    for a number now give it, and a domain's own. Review rev232 L2, L3: sizes as a
    reader takes them in, Chinese without English units, the same-size sentence from
    the key and only where it refuses."""
    site = make_site(
        tmp_path,
        {
            "limits": {"max_message_size": 20_000_000, "max_rcpt": 50},
            "bulk": {"threshold": 5, "window": 7200},
            "domain": {"example.com": {"max_message_size": 5 * 1024 * 1024}},
        },
        directory=False,
    )
    out = tmp_path / "out"
    result = run_cli("-c", str(site.config), "help-site", "--out", str(out))
    assert result.returncode == 0, result.stderr
    page = html.unescape((out / "rcpt_limit" / "index.html").read_text(encoding="utf-8"))
    assert "One message may go to up to 50 recipients here" in page
    assert "每封邮件最多 50 个收件人" in page

    facts = limit_facts(load_config(site.config))
    assert facts["message_too_long"] == (
        "This server accepts messages of up to 20 MB. Mail to some domains has its own:"
        " example.com: 5 MiB.",
        "本服务器接受的邮件最大为 20 MB。部分域名另有限制：example.com：5 MiB。",  # noqa: RUF001
    )
    assert facts["same_size_flood"] == (
        "More than 5 messages of about the same size from the same sender address and"
        " sending server within 2 hours are refused.",
        "同一发件人地址和发信服务器在 2 小时内发送超过 5 封大小相近的邮件将被拒收。",
    )
    # Postfix's lower message_size_limit refuses first (review rev232 M2).
    capped = limit_facts(load_config(site.config), 10_240_000)
    assert capped["message_too_long"][0].startswith(
        "This server accepts messages of up to 10,240,000 octets. Mail to some domains has"
        " its own: example.com: 5 MiB."
    )
    assert "10,240,000 字节" in capped["message_too_long"][1]
    # Not said where the check does not refuse.
    quiet = make_site(tmp_path / "quiet", {"checks": {"bulk": {"mode": "report"}}}, directory=False)
    assert "same_size_flood" not in limit_facts(load_config(quiet.config))
