"""smtpguard: a policy milter that answers with a published, localized reply table."""

__version__ = "0.1.0"
