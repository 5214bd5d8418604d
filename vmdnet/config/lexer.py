"""vm.conf-style lexer: characters from a stack of files and macro expansions → tokens.

Theory of operation: characters come from a stack of sources. A source is a
file (pushed by "include") or the value of a macro being expanded ("$name").
Reading past the end of a file yields one newline (so a last line without
one still ends a statement) and then continues in the including file; an
expansion ends silently, so its characters run on into the text after it
(as in vmd, "$dir/x" expands inside one word). Characters read from an
expansion are flagged, and "$" among them is an ordinary character: macros
expand once, never recursively.

Outside quotes, backslash-newline joins lines (also in comments) and a
backslash before another character stands for that character. Inside
quotes, backslash-newline joins lines; backslash before the quote
character, a space, a tab or a backslash stands for that character; any
other backslash is kept. A raw newline inside quotes is an error.

Words: a bare word starts with a letter, digit, "_", ":" or "/" and runs on
over letters, digits and punctuation other than ( ) { } ! = # ,. A word that
is all digits (optionally after "-") and ends at a blank or one of
) , / } = # is a NUMBER. Bare words that are keywords become KEYWORD tokens;
a quoted keyword is a plain STRING.

No I/O besides reading included files; errors go to the shared diagnostic
list and the offending line becomes one ERROR token followed by its newline.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
import string
from dataclasses import dataclass, field

from vmdnet.config.errors import ConfigError, Diagnostic
from vmdnet.config.limits import (
    MAX_FILE_BYTES,
    MAX_INCLUDE_DEPTH,
    MAX_INCLUDED_FILES,
    MAX_TOKEN_LEN,
)

KEYWORDS = frozenset(
    {
        "boot", "cmdline", "disable", "disk", "down", "enable", "format", "group",
        "include", "inet6", "initrd", "interface", "interfaces", "interval", "lladdr",
        "local", "locked", "memory", "no", "offload", "owner", "prefix", "rsc",
        "socket", "switch", "up", "vhost-user", "vm", "vmm",
    }
)  # fmt: skip

_ALNUM = frozenset(string.ascii_letters + string.digits)
_DIGITS = frozenset(string.digits)
_WORD_START = _ALNUM | frozenset(":_/")
_WORD_CHARS = _ALNUM | (frozenset(string.punctuation) - frozenset("(){}!=#,"))
_NUMBER_END = frozenset(" \t\r\n),/}=#")
_BLANKS = frozenset(" \t\r")
_MACRO_CHARS = _ALNUM | frozenset("_")
_QUOTE_ESCAPES = frozenset(" \t\\")


class Kind(enum.Enum):
    """Token kinds."""

    STRING = "string"
    NUMBER = "number"
    KEYWORD = "keyword"
    PUNCT = "punct"  # one character: { } , = and anything else unexpected
    NEWLINE = "newline"
    EOF = "eof"
    ERROR = "error"  # the lexer already reported this line; text: what it skipped


@dataclass(frozen=True)
class Token:
    """A token and where it starts."""

    kind: Kind
    text: str
    file: str
    line: int
    quoted: bool = False

    def describe(self) -> str:
        """How messages name this token."""
        if self.kind is Kind.NEWLINE:
            return "end of line"
        if self.kind is Kind.EOF:
            return "end of file"
        if self.kind is Kind.STRING and self.quoted:
            return f'"{self.text}"'
        return f"'{self.text}'"


@dataclass
class _Source:
    text: str
    name: str  # file name as shown in messages
    directory: str  # where relative includes are looked up
    realpath: str | None  # identity for cycle detection; None for text and expansions
    expansion: bool = False
    pos: int = 0
    line: int = 1
    eof_sent: bool = False
    unget: list[tuple[str, bool]] = field(default_factory=list)


@dataclass
class _Macro:
    value: str
    file: str  # where the definition is, for the "not used" warning
    line: int
    persistent: bool
    used: bool = False


class LexError(Exception):
    """A lexical or include error: the message, and whether to skip the rest of the line.

    Used within the package only: the parser turns it into a Diagnostic.
    """

    def __init__(self, message: str, skip_line: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.skip_line = skip_line


_Char = tuple[str, bool]  # a character and whether it came from a macro expansion


class Lexer:
    """Turns the source stack into tokens; owns macros and includes."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self._diags = diagnostics
        self._stack: list[_Source] = []
        self._macros: dict[str, _Macro] = {}
        self._included = 0

    # -- sources -------------------------------------------------------------

    def push_text(self, text: str, name: str, directory: str, realpath: str | None = None) -> None:
        """Start reading text (a whole file's contents) named name."""
        self._stack.append(_Source(text=text, name=name, directory=directory, realpath=realpath))

    def push_include(self, target: str) -> None:
        """Continue with the file target (relative to the current file's directory).

        Raises LexError (message only) when the file cannot be included; a
        file that is read but not valid UTF-8 raises ConfigError at its line.
        """
        files = [s for s in self._stack if not s.expansion]
        current = files[-1]
        path = target if os.path.isabs(target) else os.path.join(current.directory, target)
        if len(files) >= MAX_INCLUDE_DEPTH:
            raise LexError(f"includes nested too deeply (at most {MAX_INCLUDE_DEPTH})")
        if self._included >= MAX_INCLUDED_FILES:
            raise LexError(f"too many included files (at most {MAX_INCLUDED_FILES})")
        real = os.path.realpath(path)
        if any(s.realpath == real for s in files):
            chain = " -> ".join([s.name for s in files] + [path])
            raise LexError(f"include cycle: {chain}")
        try:
            text = read_config_file(path)
        except ConfigError as exc:
            if exc.line > 0:
                raise
            raise LexError(f"failed to include file {target}: {exc.message}") from None
        self._included += 1
        self.push_text(text, path, os.path.dirname(path), real)

    def _file(self) -> _Source:
        return next(s for s in reversed(self._stack) if not s.expansion)

    def where(self) -> tuple[str, int]:
        """Current file name and line (at the end: the file's last line)."""
        src = self._file()
        if src.eof_sent:
            return src.name, max(1, src.text.count("\n") + (not src.text.endswith("\n")))
        return src.name, src.line

    def _newline_seen(self) -> None:
        self._file().line += 1

    # -- characters ----------------------------------------------------------

    def _raw(self, in_quotes: bool = False) -> _Char | None:
        """Next character from the source stack, or None at the end of input.

        At the end of a file: one newline, then the including file. In
        quotes, the end of a file is the end (None) and nothing is popped.
        """
        while self._stack:
            src = self._stack[-1]
            if src.unget:
                return src.unget.pop()
            if src.pos < len(src.text):
                ch = src.text[src.pos]
                src.pos += 1
                return ch, src.expansion
            if src.expansion:
                self._stack.pop()
                continue
            if in_quotes:
                return None
            if not src.eof_sent:
                src.eof_sent = True
                return "\n", False
            if len(self._stack) == 1:
                return None
            self._stack.pop()
        return None

    def _unget(self, char: _Char | None) -> None:
        if char is not None:
            self._stack[-1].unget.append(char)

    def _getc(self) -> _Char | None:
        """Next character outside quotes, with backslash handling."""
        while True:
            char = self._raw()
            if char is None or char[0] != "\\":
                return char
            nxt = self._raw()
            if nxt is None:
                return char
            if nxt[0] == "\n":
                self._newline_seen()
                continue
            return nxt

    # -- macros --------------------------------------------------------------

    def define(self, name: str, value: str, file: str, line: int, persistent: bool = False) -> None:
        """Define macro name; a persistent one (from the command line) wins over the file."""
        old = self._macros.get(name)
        if old is not None and old.persistent:
            return
        self._macros[name] = _Macro(value, file, line, persistent)

    def unused_macros(self) -> list[Diagnostic]:
        """A warning for each macro never expanded (vmd warns too)."""
        return [
            Diagnostic(m.file, m.line, f"warning: macro '{name}' not used")
            for name, m in self._macros.items()
            if not m.used
        ]

    def _expand(self) -> None:
        name: list[str] = []
        self._unget(self._take(name, _MACRO_CHARS))
        if not name:
            raise LexError("macro name expected after '$'")
        macro = self._macros.get("".join(name))
        if macro is None:
            raise LexError(f"macro '{''.join(name)}' not defined")
        macro.used = True
        src = self._file()
        self._stack.append(
            _Source(text=macro.value, name=src.name, directory=src.directory,
                    realpath=None, expansion=True)
        )  # fmt: skip

    # -- tokens --------------------------------------------------------------

    def next_token(self) -> Token:
        """The next token; ERROR after a reported error (its newline follows)."""
        while True:
            char = self._getc()
            while char is not None and char[0] in _BLANKS:
                char = self._getc()
            file, line = self.where()
            try:
                token = self._token(char, file, line)
            except LexError as exc:
                self._diags.append(Diagnostic(file, line, exc.message))
                skipped = self._skip_line() if exc.skip_line else ""
                return Token(Kind.ERROR, skipped, file, line)
            if token is not None:
                return token

    def _token(self, char: _Char | None, file: str, line: int) -> Token | None:
        """One token starting with char; None after a macro expansion (start over)."""
        if char is not None and char[0] == "#":
            while char is not None and char[0] != "\n":
                char = self._getc()
        if char is None:
            return Token(Kind.EOF, "", file, line)
        ch, expanded = char
        if ch == "$" and not expanded:
            self._expand()
            return None
        if ch in "\"'":
            return self._quoted(ch, file, line)
        if ch == "-" or ch in _DIGITS:
            return self._number(ch, file, line)
        if ch in _WORD_START:
            return self._word([ch], file, line)
        if ch == "\n":
            self._newline_seen()
            return Token(Kind.NEWLINE, "\n", file, line)
        return Token(Kind.PUNCT, ch, file, line)

    def _skip_line(self) -> str:
        """Drop characters up to (not including) the next newline; return them.

        The parser looks for braces in them to stay in step with blocks.
        """
        skipped = []
        while True:
            char = self._getc()
            if char is None or char[0] == "\n":
                self._unget(char)
                return "".join(skipped)
            skipped.append(char[0])

    def _quoted(self, quote: str, file: str, line: int) -> Token:
        buf: list[str] = []
        while True:
            char = self._raw(in_quotes=True)
            if char is None:
                raise LexError("reached end of file while parsing quoted string", False)
            ch = char[0]
            if ch == "\n":
                self._unget(char)
                raise LexError("unterminated quoted string", False)
            if ch == quote:
                return Token(Kind.STRING, "".join(buf), file, line, quoted=True)
            if ch == "\0":
                raise LexError("NUL character in quoted string")
            if ch == "\\":
                nxt = self._raw(in_quotes=True)
                if nxt is None:
                    raise LexError("reached end of file while parsing quoted string", False)
                if nxt[0] == "\n":
                    self._newline_seen()
                    continue
                if nxt[0] == quote or nxt[0] in _QUOTE_ESCAPES:
                    ch = nxt[0]
                else:
                    self._unget(nxt)
            buf.append(ch)
            if len(buf) > MAX_TOKEN_LEN:
                raise LexError("string too long")

    def _take(self, buf: list[str], allowed: frozenset[str]) -> _Char | None:
        """Append characters in allowed to buf; return the first other one (None at the end)."""
        while True:
            char = self._getc()
            if char is None or char[0] not in allowed:
                return char
            buf.append(char[0])
            if len(buf) > MAX_TOKEN_LEN:
                raise LexError("string too long")

    def _number(self, first: str, file: str, line: int) -> Token:
        buf = [first]
        char = self._take(buf, _DIGITS)
        if buf == ["-"]:
            self._unget(char)
            return Token(Kind.PUNCT, "-", file, line)
        if char is None or char[0] in _NUMBER_END:
            self._unget(char)
            return Token(Kind.NUMBER, "".join(buf), file, line)
        if buf[0] == "-":
            # "-" followed by digits and more: "-" alone, the rest re-read.
            self._unget(char)
            for digit in reversed(buf[1:]):
                self._unget((digit, False))
            return Token(Kind.PUNCT, "-", file, line)
        self._unget(char)
        return self._word(buf, file, line)

    def _word(self, buf: list[str], file: str, line: int) -> Token:
        self._unget(self._take(buf, _WORD_CHARS))
        text = "".join(buf)
        kind = Kind.KEYWORD if text in KEYWORDS else Kind.STRING
        return Token(kind, text, file, line)


def read_config_file(path: str) -> str:
    """The text of a configuration file; ConfigError if it cannot be used.

    Only regular files are read (a FIFO or device would block or never
    end), at most MAX_FILE_BYTES, and they must be UTF-8. The error's line
    is 0 except for a decoding error, which names the line.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError([Diagnostic(path, 0, os.strerror(exc.errno or errno.EIO))]) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError([Diagnostic(path, 0, "not a regular file")])
        data = _read_bounded(fd, path)
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError([Diagnostic(path, line, "invalid UTF-8")]) from None


def _read_bounded(fd: int, path: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
        except OSError as exc:
            raise ConfigError([Diagnostic(path, 0, os.strerror(exc.errno or errno.EIO))]) from None
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_FILE_BYTES:
            raise ConfigError(
                [Diagnostic(path, 0, f"file too large (at most {MAX_FILE_BYTES} bytes)")]
            )
