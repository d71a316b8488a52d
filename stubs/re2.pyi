# The parts of google-re2 (import re2) that smtpguard uses; the wheel ships no types.
from collections.abc import Iterator

class error(Exception): ...

class Options:
    max_mem: int
    posix_syntax: bool
    longest_match: bool
    log_errors: bool
    literal: bool
    never_nl: bool
    dot_nl: bool
    never_capture: bool
    case_sensitive: bool
    perl_classes: bool
    word_boundary: bool
    one_line: bool
    def __init__(self) -> None: ...

class _Match:
    def start(self, group: int = 0) -> int: ...
    def end(self, group: int = 0) -> int: ...

class _Regexp:
    @property
    def pattern(self) -> str | bytes: ...
    def search(
        self, text: str | bytes, pos: int | None = None, endpos: int | None = None
    ) -> _Match | None: ...
    def match(
        self, text: str | bytes, pos: int | None = None, endpos: int | None = None
    ) -> _Match | None: ...
    def fullmatch(
        self, text: str | bytes, pos: int | None = None, endpos: int | None = None
    ) -> _Match | None: ...
    def finditer(
        self, text: str | bytes, pos: int | None = None, endpos: int | None = None
    ) -> Iterator[_Match]: ...

def compile(pattern: str | bytes, options: Options | None = None) -> _Regexp: ...
def search(
    pattern: str | bytes, text: str | bytes, options: Options | None = None
) -> _Match | None: ...

class Filter:
    def __init__(self) -> None: ...
    def Add(self, pattern: str | bytes, options: Options | None = None) -> int: ...
    def Compile(self) -> None: ...
    def Match(self, text: str | bytes, potential: bool = False) -> list[int] | None: ...
