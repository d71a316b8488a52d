"""``smtpguard help-site --out DIR``: a static help page for every reply of the table.

Every reply id gets one page, in English and Chinese on the same page (the reply line
carries both languages, so its help URL leads to one page): what happened, why, what
the sender should do and the exact reply line as this configuration sends it. An
``index.html`` lists them all.

Where the pages go follows ``replies.help_url``, so that the URL a bounce carries leads
to its page when DIR is published as the directory that holds ``{id}``:

=============================================  ==============================
``help_url`` ends with                          page of reply ``ID``
=============================================  ==============================
``{id}`` or ``{id}/`` (or no ``help_url``)      ``DIR/ID/index.html``
``{id}.html`` / ``{id}.htm``                    ``DIR/ID.html`` / ``DIR/ID.htm``
``{id}/index.html``                             ``DIR/ID/index.html``
=============================================  ==============================

Text before ``{id}`` in its path segment stays in the file name: with
``https://help.example.com/docs/smtp-{id}.html`` the page is ``DIR/smtp-ID.html``.

``https://help.example.com/smtp/{id}``: publish DIR as ``https://help.example.com/smtp/``;
``https://help.example.com/smtp/rbl_deny`` is then ``DIR/rbl_deny/index.html``, which
every static web server (nginx, Apache, ``python -m http.server``) answers at
``/smtp/rbl_deny/`` and redirects ``/smtp/rbl_deny`` to. A template with ``{id}``
anywhere else (a query string) cannot be a static file: :class:`SiteError`.

The reply line shown is what the milter sends (:func:`reply_forms`): UTF-8 or ASCII as
``replies.utf8`` and the MTA decide, both labelled where either may be sent.

All text is HTML-escaped; links are relative, so the site also reads from disk. The
table writes a ``%`` as ``%%`` (a milter reply is a format string); pages show ``%``.
"""

# The Chinese labels are written with Chinese (full-width) punctuation:
# ruff: noqa: RUF001

from __future__ import annotations

import contextlib
import errno
import html
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from smtpguard.config import Config
from smtpguard.explain import Knowledge
from smtpguard.postfix import POSTFIX_FOOTERS, postfix_says
from smtpguard.replies import MILTER_IDS, MTA_IDS, ReplyTable, Row

#: Suffixes of ``help_url`` after ``{id}`` and the page file each one means.
PAGE_FORMS: dict[str, str] = {
    "": "{id}/index.html",
    "/": "{id}/index.html",
    "/index.html": "{id}/index.html",
    ".html": "{id}.html",
    ".htm": "{id}.htm",
}


#: What may come before ``{id}`` in its path segment: characters that stand for
#: themselves in a URL path and a file name (no percent-encoding to undo).
_PREFIX = re.compile(r"[A-Za-z0-9._~-]*\Z")


class SiteError(Exception):
    """A help_url that no static site can serve."""


@dataclass(frozen=True, slots=True)
class Page:
    reply_id: str
    #: Relative to the site directory, with "/" separators.
    path: str
    content: str


def page_form(help_url: str) -> str:
    """The page path template (``{id}/index.html`` or ``{id}.html``...) for ``help_url``."""
    if not help_url:
        return PAGE_FORMS[""]
    head, _, tail = help_url.rpartition("{id}")
    # "smtp-{id}.html": the link leads to smtp-ID.html, so that is the file's name.
    prefix = head.rpartition("/")[2]
    _, slashes, after = head.partition("//")
    if (
        "{id}" in head
        or "?" in head
        or "#" in head
        # "https://{id}/": the id names a host, not a page of this site.
        or (slashes and "/" not in after)
        or tail not in PAGE_FORMS
        or not _PREFIX.match(prefix)
    ):
        raise SiteError(
            f"replies.help_url {help_url!r}: a static site needs {{id}} in the last path"
            " segment (after nothing but letters, digits, '.', '_', '~' or '-'),"
            " optionally followed by /, .html, .htm or /index.html"
        )
    return prefix + PAGE_FORMS[tail]


_CSS = """
body { font-family: system-ui, "Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC",
  "PingFang SC", "Microsoft YaHei", sans-serif; max-width: 46em; margin: 2em auto;
  padding: 0 1em; line-height: 1.5; color: #1a1a1a; background: #fff; }
code, pre { font-family: ui-monospace, "Noto Sans Mono CJK SC", monospace; }
pre { background: #f3f3f3; padding: .6em .8em; overflow-x: auto; white-space: pre-wrap; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; width: 100%; }
td, th { border-bottom: 1px solid #ddd; padding: .3em .5em; text-align: left;
  vertical-align: top; }
.kind { color: #555; }
td code, td a { white-space: nowrap; }
.wide { overflow-x: auto; }
.wide table { min-width: 40em; }
"""

_LABELS: dict[str, dict[str, str]] = {
    "en": {
        "lang_name": "English",
        "happened": "What happened",
        "why": "Why",
        "todo": "What the sender should do",
        "line": "The exact reply line",
        "temporary": "This is a temporary refusal (4xx): your mail server keeps the"
        " message and tries again by itself.",
        "permanent": "This is a permanent refusal (5xx): the message was not delivered"
        " and is not retried; change what the reply describes and send it again.",
        "either": "A temporary (4xx) or permanent (5xx) refusal, as the lines below show"
        " for each kind of receiving server: after a 4xx your mail server tries again by"
        " itself; after a 5xx change what the reply describes and send the message again.",
        "utf8_note": "A sending server that does not use SMTPUTF8 may show the Chinese text"
        " of this line as question marks in the bounce it writes: the English text and"
        " the codes are the same.",
        "by_mta": "This reply is given by the receiving mail server (the MTA) itself,"
        " before smtpguard is asked.",
        "category": "Category: ",
        "index": "All replies",
        "title": "SMTP replies of this server",
        "intro": "Every reply this mail server may give when it refuses a message,"
        " with what it means and what to do.",
        "id": "Reply id",
        "code": "Code",
        "text": "Text",
        "form_smtputf8": "When the sending server used SMTPUTF8:",
        "form_otherwise": "Otherwise:",
        "form_otherwise_sendmail": "Otherwise, and always where this server's MTA is"
        " Sendmail (it cannot carry UTF-8 in a reply):",
        "form_sendmail": "Where this server's MTA is Sendmail (it cannot carry UTF-8 in a reply):",
        "form_postfix": "Postfix answers in its own words (with this server's translation"
        " after them):",
        "form_table": "The reply table's line for it (Sendmail's words differ too):",
    },
    "zh": {
        "lang_name": "中文",
        "happened": "发生了什么",
        "why": "原因",
        "todo": "发件人应当怎么做",
        "line": "完整的回复行",
        "temporary": "这是临时拒绝（4xx）：您的邮件服务器会保留这封邮件并自动重发。",
        "permanent": "这是永久拒绝（5xx）：邮件没有送达，也不会自动重发；"
        "请按回复所说的问题修改后重新发送。",
        "either": "临时拒绝（4xx）或永久拒绝（5xx），视接收方服务器而定，见下面的回复行："
        "4xx 时您的邮件服务器会自动重发；5xx 时请按回复所说的问题修改后重新发送。",
        "utf8_note": "不使用 SMTPUTF8 的发件服务器在它生成的退信中，"
        "可能把这一行的中文显示为问号；英文内容和代码相同。",
        "by_mta": "这条回复由接收方邮件服务器（MTA）自身给出，此时尚未询问 smtpguard。",
        "category": "类别：",
        "index": "全部回复",
        "title": "本服务器的 SMTP 回复",
        "intro": "本邮件服务器拒收邮件时可能给出的每一条回复，及其含义和处理办法。",
        "id": "回复 id",
        "code": "代码",
        "text": "内容",
        "form_smtputf8": "发件服务器使用了 SMTPUTF8 时：",
        "form_otherwise": "其他情况：",
        "form_otherwise_sendmail": "其他情况，以及本服务器的 MTA 为 Sendmail 时"
        "（Sendmail 的回复无法携带 UTF-8）：",
        "form_sendmail": "本服务器的 MTA 为 Sendmail 时（Sendmail 的回复无法携带 UTF-8）：",
        "form_postfix": "Postfix 用它自己的措辞回复（其后附本服务器的译文）：",
        "form_table": "回复表中对应的行（Sendmail 的措辞也不同）：",
    },
}
_HTML_LANG = {"en": "en", "zh": "zh-Hans"}
LANGS: tuple[str, ...] = ("en", "zh")


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _shown(text: str) -> str:
    """A text of the table as the client reads it: its ``%%`` is one ``%``."""
    return text.replace("%%", "%")


def _document(title: str, body: Iterable[str], css_href: str) -> str:
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title>",
            f'<link rel="stylesheet" href="{_e(css_href)}">',
            "</head>",
            "<body>",
            *body,
            "</body>",
            "</html>",
            "",
        ]
    )


#: The MTA's name on a page when neither --mta-hostname nor postconf gives one.
EXAMPLE_HOST = "mail.example.com"


def reply_forms(
    table: ReplyTable, row: Row, mta: str = "auto", host: str = EXAMPLE_HOST
) -> list[tuple[str, list[str]]]:
    """The reply as the client sees it, each form with the key of its label ("" when it
    is the only one): rendered by this configuration for the milter's replies, UTF-8 or
    ASCII as the milter chooses (``Pipeline.utf8_allowed``: ``replies.utf8``, and never
    UTF-8 to Sendmail); code, enhanced code and English text for the MTA's own
    (``host``: the name Postfix puts in some of its own replies)."""
    if row.reply_id not in MILTER_IDS:
        line = f"{row.code} {row.xcode} {_shown(row.text['en'])}"
        postfix = _postfix_lines(table, row, host) if mta in ("postfix", "auto") else []
        if not postfix:
            return [("", [line])]
        return [("form_postfix", postfix), ("form_table", [line])]
    utf8 = table.render(row.reply_id, utf8=True).wire_lines()
    ascii_ = table.render(row.reply_id, utf8=False).wire_lines()
    policy = table.policy.utf8
    if mta == "sendmail" or policy == "never" or utf8 == ascii_:
        return [("", ascii_)]
    # "auto": the MTA says which one it is on each connection; Sendmail gets ASCII.
    sendmail_too = mta == "auto"
    if policy == "always":
        return [("", utf8), *([("form_sendmail", ascii_)] if sendmail_too else [])]
    otherwise = "form_otherwise_sendmail" if sendmail_too else "form_otherwise"
    return [("form_smtputf8", utf8), (otherwise, ascii_)]


def _postfix_lines(table: ReplyTable, row: Row, host: str) -> list[str]:
    """What Postfix itself answers for an MTA row, with the text ``postfix-config
    --footers`` has it append (postfix.POSTFIX_FOOTERS: the pattern when it is one
    literal line, else what Postfix was measured to answer, POSTFIX_EXAMPLES): a
    bounce shows these words, not the table's (review rev98 F11, rev100 F9)."""
    utf8 = table.policy.utf8 == "always"
    out: list[str] = []
    for pattern, reply_id, with_english in POSTFIX_FOOTERS:
        if reply_id != row.reply_id:
            continue
        said = postfix_says(pattern, host)
        texts = [
            _shown(row.text[lang])
            for lang in table.policy.languages
            if lang in row.text
            and (with_english or lang != "en")
            and (utf8 or row.text[lang].isascii())
        ]
        joined = (" " if with_english else "; ").join(texts).replace("%%", "%")
        if not joined:
            out += said
            continue
        # With the help link on a line of its own, as the footer has Postfix send it.
        link = table.policy.help_url.format(id=reply_id) if table.policy.help_url else ""
        for line in said:
            if not link:
                out.append(f"{line} ({joined})")
                continue
            code, xcode, rest = line.split(" ", 2)
            out.append(f"{code}-{xcode} {rest} ({joined})\n{code} {xcode} {link}")
    return out


#: A sentence per language on what this configuration allows, by reply id.
Facts = Mapping[str, tuple[str, str]]


def _size(octets: int, lang: str = "en") -> str:
    """A size as a reader takes it in: MiB for a binary round value (the sample's
    52428800), MB for a decimal one, octets otherwise (review rev232 L3)."""
    unit = "字节" if lang == "zh" else "octets"
    if octets % (1 << 20) == 0:
        return f"{octets >> 20} MiB"
    if octets % 1_000_000 == 0:
        return f"{octets // 1_000_000} MB"
    return f"{octets:,} {unit}"


def _duration(seconds: int, lang: str) -> str:
    for size, en, zh in ((86400, "day", "天"), (3600, "hour", "小时"), (60, "minute", "分钟")):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {zh}" if lang == "zh" else f"{count} {en}{'s' if count > 1 else ''}"
    if lang == "zh":
        return f"{seconds} 秒"
    return "1 second" if seconds == 1 else f"{seconds} seconds"


#: What the same-size counter's key parts are to a reader, in English and Chinese.
_KEY_WORDS = {
    "sender": ("sender address", "发件人地址"),
    "mail_from": ("sender address", "发件人地址"),
    "sender_domain": ("sender domain", "发件域名"),
    "client_ip": ("sending server", "发信服务器"),
    "login": ("login", "登录账号"),
}


def limit_facts(config: Config, mta_size_limit: int | None = None) -> dict[str, tuple[str, str]]:
    """The limits behind the replies that refuse for a number, as this configuration
    sets them, with the per-domain ones (review rev229 L3: the pages said "larger than
    this server accepts" and no number). ``mta_size_limit``: the MTA's own limit
    (Postfix's message_size_limit), which refuses first when it is lower (review rev232
    M2: the page promised 52 MB where Postfix took 10)."""
    limits, bulk = config.limits, config.bulk

    def capped(value: int) -> int:
        return min(value, mta_size_limit) if mta_size_limit else value

    def per_domain(name: str, show: Callable[[int, str], str]) -> tuple[str, str]:
        given = sorted(
            (domain, getattr(table, name))
            for domain, table in config.domains.items()
            if getattr(table, name) != getattr(limits, name)
        )
        if not given:
            return "", ""
        en = ", ".join(f"{domain}: {show(value, 'en')}" for domain, value in given)
        zh = "、".join(f"{domain}：{show(value, 'zh')}" for domain, value in given)
        return f" Mail to some domains has its own: {en}.", f"部分域名另有限制：{zh}。"

    def size(value: int, lang: str) -> str:
        return _size(capped(value), lang)

    size_en, size_zh = per_domain("max_message_size", size)
    part_en, part_zh = per_domain("max_attachment_size", _size)
    rcpt_en, rcpt_zh = per_domain("max_rcpt", lambda n, _lang: str(n))
    facts = {
        "message_too_long": (
            "This server accepts messages of up to"
            f" {size(limits.max_message_size, 'en')}.{size_en}",
            f"本服务器接受的邮件最大为 {size(limits.max_message_size, 'zh')}。{size_zh}",
        ),
        "attachment_too_long": (
            f"Each attachment may be up to {_size(limits.max_attachment_size)}, decoded.{part_en}",
            f"每个附件（解码后）最大为 {_size(limits.max_attachment_size, 'zh')}。{part_zh}",
        ),
        "rcpt_limit": (
            f"One message may go to up to {limits.max_rcpt} recipients here; your server"
            f" sends the rest in another message by itself.{rcpt_en}",
            f"每封邮件最多 {limits.max_rcpt} 个收件人；其余的由您的服务器另行发送。{rcpt_zh}",
        ),
    }
    if config.check("bulk").mode == "enforce":
        # Said only where it refuses (review rev232 L2), of what the key counts.
        parts = list(dict.fromkeys(_KEY_WORDS[part] for part in bulk.key))
        what_en = " and ".join(en for en, _ in parts)
        what_zh = "和".join(zh for _, zh in parts)
        facts["same_size_flood"] = (
            f"More than {bulk.threshold} messages of about the same size from the same"
            f" {what_en} within {_duration(bulk.window, 'en')} are refused.",
            f"同一{what_zh}在 {_duration(bulk.window, 'zh')}内发送超过 {bulk.threshold}"
            " 封大小相近的邮件将被拒收。",
        )
    return facts


def _page(
    table: ReplyTable,
    knowledge: Knowledge,
    row: Row,
    path: str,
    *,
    mta: str,
    host: str,
    facts: Facts,
) -> Page:
    up = "../" * path.count("/")
    ours = knowledge.ours.get(row.reply_id)
    category = knowledge.categories[ours.category] if ours is not None else None
    forms = reply_forms(table, row, mta, host)
    # A site's own table needs only the languages it sends (always en).
    langs = [lang for lang in LANGS if row.text.get(lang) and row.hint.get(lang)]
    body = [
        "<nav>",
        f'<a href="{up}index.html">{_e(_LABELS["en"]["index"])} / {_e(_LABELS["zh"]["index"])}</a>',
        *(f'<a href="#{lang}">{_e(_LABELS[lang]["lang_name"])}</a>' for lang in langs),
        "</nav>",
        f"<h1><code>{_e(row.code)} {_e(row.xcode)}</code> {_e(row.reply_id)}</h1>",
    ]
    # Temporary or permanent as the lines shown say (review rev229 L1: the table's 451
    # for stray_newline above Postfix's own 550).
    classes = {lines[0][:1] for _, lines in forms if lines}
    key = {"4": "temporary", "5": "permanent"}.get(classes.pop(), "") if len(classes) == 1 else ""
    # What a sender without SMTPUTF8 may read (review rev229 M1): "always" sends UTF-8
    # to every client, and that client's MTA may turn it into "?" in its bounce.
    mangled = table.policy.utf8 == "always" and not all(
        line.isascii() for _, lines in forms for line in lines
    )
    for lang in langs:
        words = _LABELS[lang]
        kind = words[key or "either"]
        section = [
            f'<section id="{lang}" lang="{_HTML_LANG[lang]}">',
            f"<h2>{_e(_shown(row.text[lang]))}</h2>",
            f"<h3>{_e(words['happened'])}</h3>",
        ]
        happened = f"<p>{_e(kind)}"
        if category is not None:
            title = category.title.zh if lang == "zh" else category.title.en
            happened += f' <span class="kind">{_e(words["category"])}{_e(title)}</span>'
        section.append(happened + "</p>")
        if row.reply_id in MTA_IDS:
            section.append(f"<p>{_e(words['by_mta'])}</p>")
        if ours is not None:
            cause = ours.cause.zh if lang == "zh" else ours.cause.en
            section += [f"<h3>{_e(words['why'])}</h3>", f"<p>{_e(cause)}</p>"]
        fact = facts.get(row.reply_id)
        if fact is not None:
            section.append(f"<p>{_e(fact[1] if lang == 'zh' else fact[0])}</p>")
        section += [
            f"<h3>{_e(words['todo'])}</h3>",
            f"<p>{_e(_shown(row.hint[lang]))}</p>",
            f"<h3>{_e(words['line'])}</h3>",
        ]
        for label, lines in forms:
            if label:
                section.append(f"<p>{_e(words[label])}</p>")
            section.append(f"<pre>{_e(chr(10).join(lines))}</pre>")
        if mangled:
            section.append(f"<p>{_e(words['utf8_note'])}</p>")
        section.append("</section>")
        body += section
    title = f"{row.code} {row.xcode} {row.reply_id}: {_shown(row.text['en'])}"
    return Page(row.reply_id, path, _document(title, body, f"{up}style.css"))


def _index(table: ReplyTable, pages: list[Page]) -> str:
    en, zh = _LABELS["en"], _LABELS["zh"]
    body = [
        f'<h1>{_e(en["title"])} / <span lang="zh-Hans">{_e(zh["title"])}</span></h1>',
        f"<p>{_e(en['intro'])}</p>",
        f'<p lang="zh-Hans">{_e(zh["intro"])}</p>',
        # Scrolls on its own on a phone, not the page (review rev229 L4).
        '<div class="wide"><table>',
        f"<tr><th>{_e(en['code'])}</th><th>{_e(en['id'])} / {_e(zh['id'])}</th>"
        f"<th>{_e(en['text'])}</th><th>{_e(zh['text'])}</th></tr>",
    ]
    for page in pages:
        row = table.rows[page.reply_id]
        body.append(
            f"<tr><td><code>{_e(row.code)} {_e(row.xcode)}</code></td>"
            f'<td><a href="{_e(page.path)}">{_e(row.reply_id)}</a></td>'
            f"<td>{_e(_shown(row.text['en']))}</td>"
            f'<td lang="zh-Hans">{_e(_shown(row.text.get("zh", "")))}</td></tr>'
        )
    body.append("</table></div>")
    return _document(f"{en['title']} / {zh['title']}", body, "style.css")


def build_site(
    table: ReplyTable,
    knowledge: Knowledge,
    *,
    mta: str = "auto",
    host: str = EXAMPLE_HOST,
    facts: Facts | None = None,
) -> list[Page]:
    """Every page of the site: one per reply id (the milter's, then the MTA's), the
    index and the style sheet. ``mta``: ``milter.mta`` (which reply forms are sent);
    ``host``: the MTA's name, which Postfix puts in some of its own replies; ``facts``:
    :func:`limit_facts` of the configuration."""
    form = page_form(table.policy.help_url)
    pages = [
        _page(
            table,
            knowledge,
            table.rows[reply_id],
            form.format(id=reply_id),
            mta=mta,
            host=host,
            facts=facts or {},
        )
        for reply_id in (*MILTER_IDS, *MTA_IDS)
    ]
    return [
        *pages,
        Page("", "index.html", _index(table, pages)),
        Page("", "style.css", _CSS.lstrip()),
    ]


#: The files the last write put in the output directory, one path per line: the next
#: write removes those it does not write again (a help_url changed from ``{id}/`` to
#: ``{id}.html`` left a second set of pages), and nothing it did not write.
MANIFEST = ".smtpguard-help-site"


def write_site(out: Path, pages: Iterable[Page]) -> int:
    """Write ``pages`` under ``out`` (created if missing) and remove the files of the
    previous write that are no longer part of the site; the number of files written."""
    written: list[str] = []
    mode = _file_mode()
    pages = list(pages)
    # A folder of the site replaced by a link would take the pages elsewhere, and a file
    # where one goes ({id}/ after {id}.html pages) fails: refused before any page is
    # written, so the site is not left half rewritten (rev100 F11, rev101 F10).
    folders = dict.fromkeys(f for page in pages for f in _folders(out, page.path.split("/")))
    for folder in folders:
        if folder.is_symlink():
            raise OSError(errno.ELOOP, "is a link, not a folder of the site", str(folder))
        if folder.exists() and not folder.is_dir():
            raise OSError(errno.ENOTDIR, "is a file, not a folder of the site", str(folder))
    for page in pages:
        target = out.joinpath(*page.path.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_whole(target, page.content, mode)
        written.append(page.path)
    _prune(out, set(written))
    _write_whole(out / MANIFEST, "".join(f"{path}\n" for path in written), mode)
    return len(written)


def _file_mode() -> int:
    """The mode a plain ``open`` would give a new file (0666 less the umask): pages are
    read by the web server's user."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _write_whole(target: Path, content: str, mode: int) -> None:
    """Write ``target`` whole, then rename it into place: a web server never serves half
    a page. The temporary file has a name nobody can guess and is created, never opened
    through a link someone planted in the folder (O_EXCL); a link at ``target`` itself is
    replaced, not written through."""
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        # Named by the page, not by a temporary name nobody asked for (rev100 F11).
        raise OSError(exc.errno, exc.strerror, str(target)) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), mode)
            f.write(content)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, exc.strerror, str(target)) from None
        raise


def _folders(out: Path, parts: list[str]) -> Iterator[Path]:
    """The folders on the way from ``out`` to ``out/PARTS``."""
    return (out.joinpath(*parts[:i]) for i in range(1, len(parts)))


def _prune(out: Path, kept: set[str]) -> None:
    # A link planted at the manifest's name is no list of the site's files.
    if (out / MANIFEST).is_symlink():
        return
    try:
        before = (out / MANIFEST).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return
    for path in before:
        parts = path.split("/")
        if path in kept or not path or any(p in ("", ".", "..") for p in parts):
            continue
        stale = out.joinpath(*parts)
        # Only a file the site put there: not through a folder the operator replaced
        # by a link to elsewhere, and not a folder or link of the operator's.
        if any(folder.is_symlink() for folder in _folders(out, parts)):
            continue
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
            if stale.is_symlink():
                continue
            stale.unlink()
        # Its folder too ({id}/index.html), when nothing else is in it.
        if len(parts) > 1:
            with contextlib.suppress(OSError):
                stale.parent.rmdir()
