"""The reply table of docs/replies.md, written out independently of rules/replies.toml.

Tests compare what a client receives with these literals, so a wrong edit of the
shipped table fails a test instead of redefining "correct".
"""

from __future__ import annotations

# id: (code, xcode, en, zh), as docs/replies.md documents them
SPEC: dict[str, tuple[str, str, str, str]] = {
    "queue_unavailable": ("450", "4.3.2", "queue unavailable.", "队列忙"),
    "rbl_deny": ("554", "5.7.1", "rbl deny.", "拒绝 RBL 中的邮件服务器"),
    "openrelay_check": ("554", "5.7.1", "openrelay check.", "拒绝开放中继服务器"),
    "smtpport_check": ("554", "5.7.1", "smtpport check error.", "不是合法的邮件服务器"),
    "helo_first": ("501", "5.5.1", "please say HELO/EHLO first", "请先发送 HELO/EHLO"),
    "helo_error": ("555", "5.7.1", "helohost error.", "helo 主机信息检查失败"),
    "mail_from_invalid": ("552", "5.1.7", "mail from invalid.", "发件人地址不合法"),
    "sender_unvalidated": ("554", "5.1.8", "sender is unvalidated.", "发信人地址不合法"),
    "host_denies_sender": ("553", "5.7.1", "host denies the sender.", "拒绝发件人地址"),
    "black_mail_address": ("554", "5.7.1", "Black mail address.", "黑名单邮件地址"),
    "relay_local_fail": ("553", "5.7.1", "relay check local fail.", "本域用户必须通过验证"),
    "auth_mode_unsupported": ("451", "4.7.0", "auth mode unsupported.", "不支持的认证模式"),
    "domain_auth_error": ("451", "4.7.0", "domain auth support error", "域认证支持错误"),
    "auth_error_perm": ("551", "5.7.8", "auth error.", "认证永久失败"),
    "auth_error_temp": ("451", "4.7.0", "auth error.", "认证临时失败"),
    "sender_mismatch": ("554", "5.7.1", "mail address invalid.", "发件人地址不匹配"),
    "remote_ip_mismatch": (
        "556",
        "5.7.23",
        "remote ip check error.",
        "发信ip与Mail From地址不一致",
    ),
    "host_denies_relay": ("553", "5.7.1", "host denies relay.", "拒绝中继"),
    "relay_domain_fail": ("553", "5.7.1", "relay check domain fail", "中继域检查失败"),
    "rcpt_limit": ("451", "4.5.3", "out of allow RCPT numbers.", "超出 RCPT 允许上限"),
    "mailbox_unavailable": ("550", "5.1.1", "mailbox unavailable.", "邮箱不存在"),
    "mailbox_unavailable_temp": ("450", "4.2.1", "mailbox unavailable.", "邮箱暂时不可用"),
    "user_locked": ("550", "5.2.1", "user is locked.", "邮箱被锁"),
    "private_list_denied": ("553", "5.7.2", "private list access denied.", "列表访问拒绝"),
    "database_temp_error": ("450", "4.3.0", "database temporary error.", "临时数据访问失败"),
    "message_too_long": ("552", "5.3.4", "message is too long.", "邮件大小超过限制"),
    "line_parse_error": ("551", "5.6.0", "line parse error.", "该行违背协议"),
    "looping_message": ("552", "5.4.6", "looping message.", "环回信件"),
    "fake_router": ("553", "5.7.1", "fake router infomation.", "伪造的路由信息"),
    "attachment_too_long": ("554", "5.3.4", "attachment is too long.", "单个附件大小超出限制"),
    "virus_found": ("552", "5.7.1", "Virus found.", "信件包含无法清除的病毒"),
    "antispam_reject": (
        "552",
        "5.7.1",
        "message rejected by anti-spam engine.",
        "邮件被反垃圾引擎拒绝",
    ),
    "same_size_flood": ("552", "5.7.1", "too many same size mails.", "发送过多长度类似信件"),
    "internal_error": ("450", "4.3.0", "out of memory.", "内部错误"),
}


def default_line(reply_id: str) -> str:
    """The text under the default language policy: the seed's one-line bilingual form."""
    _code, _xcode, en, zh = SPEC[reply_id]
    return f"{en} ({zh})"
