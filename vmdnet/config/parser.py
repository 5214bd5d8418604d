"""vm.conf-style parser: tokens → the typed Config, with file:line diagnostics.

A recursive-descent parser over the Lexer's tokens, one token of lookahead
(two where a statement starts with a word followed by "="). Rule: the lexer
must not read past a newline before the statement that ends there has taken
effect, because a macro definition or an include changes what comes next;
so the parser consumes a statement's newline and then acts, never peeks.

Errors: a value that fails a validator is reported at its token and parsing
goes on; a syntax error drops the rest of the line (and a block opened on
it) and parsing resumes at the next statement. Cross-checks that need the
whole file (names defined twice, a switch that does not exist) run only when
no other error was found, so one mistake does not cascade. Every error is
collected; parse_* raise one ConfigError carrying all of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

from vmdnet.config.errors import ConfigError, Diagnostic, InvalidValue
from vmdnet.config.lexer import Kind, Lexer, LexError, Token, read_config_file
from vmdnet.config.limits import MAX_NICS_PER_VM, RSC_INTERVAL_DEFAULT_US, MiB
from vmdnet.config.model import (
    OFFLOAD_TSO4,
    OFFLOAD_TSO6,
    Config,
    Disk,
    Globals,
    Interface,
    Location,
    Owner,
    Switch,
    Vm,
    Vmm,
)
from vmdnet.config.validate import (
    format_lladdr,
    parse_size,
    resolve_owner,
    valid_cmdline,
    valid_disk_format,
    valid_ifgroup,
    valid_ifname,
    valid_lladdr,
    valid_local_prefix,
    valid_local_prefix6,
    valid_memory,
    valid_ndisks,
    valid_nifs,
    valid_offloads,
    valid_path,
    valid_rsc_interval,
    valid_socket_path,
    valid_switch_name,
    valid_vm_name,
    valid_vmm_args,
)

# vm.conf(5) words vmdnet knows but does not implement on Linux, so the
# message can say so instead of "unknown keyword".
_VMD_ONLY = frozenset(
    {"agentx", "allow", "cdrom", "instance", "rdomain", "staggered", "add", "size"}
)


# Top-level statements: keyword -> _Parser method.
_TOP_LEVEL = {
    "include": "_include",
    "local": "_local",
    "socket": "_socket",
    "vmm": "_vmm",
    "switch": "_switch",
    "vm": "_vm",
}


# Two-state keywords: keyword -> (model field, value).
_FLAGS = {
    "up": ("up", True),
    "down": ("up", False),
    "enable": ("enabled", True),
    "disable": ("enabled", False),
}


class _Syntax(Exception):
    """Abandon the current statement; the diagnostic is already recorded."""


@dataclass
class _Block:
    """Fields of a block being parsed, and which single-valued ones were given."""

    fields: dict[str, Any] = field(default_factory=dict)
    seen: dict[str, str] = field(default_factory=dict)  # key -> spelling that set it


class _Parser:
    def __init__(self, lexer: Lexer, diags: list[Diagnostic], warnings: list[Diagnostic]):
        self._lex = lexer
        self._diags = diags
        self._warnings = warnings
        self._ahead: list[Token] = []
        self._last: Token | None = None  # the token _next returned last
        self._eof_in_block = False  # reported once, not for every open block
        self._globals: dict[str, Any] = {}
        self._switches: list[Switch] = []
        self._vms: list[Vm] = []

    # -- token plumbing ------------------------------------------------------

    def _peek(self, n: int = 0) -> Token:
        while len(self._ahead) <= n:
            self._ahead.append(self._lex.next_token())
        return self._ahead[n]

    def _next(self) -> Token:
        tok = self._peek()
        self._ahead.pop(0)
        self._last = tok
        return tok

    def _is(self, tok: Token, kind: Kind, text: str | None = None) -> bool:
        return tok.kind is kind and (text is None or tok.text == text)

    def _error(self, where: Token | Location, message: str) -> None:
        self._diags.append(Diagnostic(where.file, where.line, message))

    def _warn(self, where: Token, message: str) -> None:
        self._warnings.append(Diagnostic(where.file, where.line, f"warning: {message}"))

    def _fail(self, tok: Token, expected: str) -> _Syntax:
        """Record a syntax error at tok; the caller raises the result."""
        if tok.kind is not Kind.ERROR:
            self._error(tok, f"syntax error: expected {expected}, got {tok.describe()}")
        if tok is self._last and (
            tok.kind in (Kind.NEWLINE, Kind.EOF, Kind.ERROR)
            or (tok.kind is Kind.PUNCT and tok.text in "{}")
        ):
            # Give back a token that delimits statements or blocks, so
            # recovery sees where the bad statement ends.
            self._ahead.insert(0, tok)
            self._last = None
        return _Syntax()

    def _expect_keyword(self, word: str) -> Token:
        tok = self._next()
        if not self._is(tok, Kind.KEYWORD, word):
            raise self._fail(tok, f"'{word}'")
        return tok

    def _expect_punct(self, char: str) -> Token:
        tok = self._next()
        if not self._is(tok, Kind.PUNCT, char):
            raise self._fail(tok, f"'{char}'")
        return tok

    def _word(self, what: str) -> Token:
        """One STRING or NUMBER token, taken as text."""
        tok = self._next()
        if tok.kind not in (Kind.STRING, Kind.NUMBER):
            raise self._fail(tok, what)
        return tok

    def _string(self, what: str) -> tuple[Token, str]:
        """A string argument: one NUMBER, or STRINGs run together (vmd's "string" rule)."""
        first = self._word(what)
        if first.kind is Kind.NUMBER:
            return first, first.text
        parts = [first.text]
        while self._peek().kind is Kind.STRING:
            parts.append(self._next().text)
        return first, "".join(parts)

    def _number(self, what: str) -> tuple[Token, int]:
        tok = self._next()
        if tok.kind is not Kind.NUMBER:
            raise self._fail(tok, what)
        return tok, int(tok.text)

    def _end_of_statement(self) -> None:
        """A top-level statement ends at a newline or the end of input."""
        tok = self._peek()
        if tok.kind is Kind.EOF:
            return
        if tok.kind is not Kind.NEWLINE:
            raise self._fail(tok, "end of line")
        self._next()

    def _check(self, tok: Token, validator: Callable[..., Any], *args: Any) -> Any:
        """validator(*args), or None after reporting its complaint at tok."""
        try:
            return validator(*args)
        except InvalidValue as exc:
            self._error(tok, str(exc))
            return None

    def _once(self, block: _Block, key: str, tok: Token, spelling: str | None = None) -> bool:
        """Note that key was given at tok; report and return False if it already was."""
        spelling = spelling or tok.text
        previous = block.seen.get(key)
        if previous is None:
            block.seen[key] = spelling
            return True
        if previous != spelling:
            self._error(tok, f"{previous} and {spelling} conflict")
        else:
            self._error(tok, f"{spelling} specified more than once")
        return False

    def _recover(self, in_block: bool) -> bool:
        """Skip the rest of a bad line, and any block it opened.

        In a block, a "}" token closing that block is left for the block to
        see; True means the close was inside text the lexer skipped, so the
        block has ended.
        """
        depth = 0
        while True:
            tok = self._peek()
            if tok.kind is Kind.EOF:
                return False
            if tok.kind is Kind.NEWLINE and depth == 0:
                self._next()
                return False
            if self._is(tok, Kind.PUNCT, "}"):
                if depth == 0 and in_block:
                    return False
                depth = max(0, depth - 1)
            elif self._is(tok, Kind.PUNCT, "{"):
                depth += 1
            elif tok.kind is Kind.ERROR:
                depth += tok.text.count("{")
                closes = tok.text.count("}")
                if in_block and closes > depth:
                    self._next()
                    return True
                depth = max(0, depth - closes)
            self._next()

    # -- top level -----------------------------------------------------------

    def parse(self) -> Config:
        while True:
            tok = self._peek()
            if tok.kind is Kind.EOF:
                break
            if tok.kind is Kind.NEWLINE:
                self._next()
                continue
            try:
                self._statement(tok)
            except _Syntax:
                self._recover(in_block=False)
        self._warnings.extend(self._lex.unused_macros())
        return Config(
            globals=Globals(**self._globals),
            switches=tuple(self._switches),
            vms=tuple(self._vms),
        )

    def _statement(self, tok: Token) -> None:
        if tok.kind is Kind.STRING and self._is(self._peek(1), Kind.PUNCT, "="):
            self._macro()
            return
        if tok.kind is Kind.KEYWORD and self._is(self._peek(1), Kind.PUNCT, "="):
            self._error(tok, f"macro name cannot be a reserved word: {tok.text}")
            raise _Syntax()
        if tok.kind is not Kind.KEYWORD or tok.text not in _TOP_LEVEL:
            self._unknown(tok, "at top level")
        getattr(self, _TOP_LEVEL[tok.text])()

    def _unknown(self, tok: Token, context: str) -> NoReturn:
        if tok.kind is Kind.STRING and not tok.quoted and tok.text in _VMD_ONLY:
            self._error(tok, f"{tok.text}: vmd option not supported by vmdnet")
        elif tok.kind is Kind.STRING and not tok.quoted:
            self._error(tok, f"unknown keyword: {tok.text}")
        elif tok.kind is Kind.KEYWORD:
            self._error(tok, f"{tok.text}: not valid {context}")
        else:
            raise self._fail(tok, "a keyword")
        raise _Syntax()

    def _macro(self) -> None:
        name = self._next()
        self._next()  # "="
        value = self._word("macro value")
        self._end_of_statement()
        if not all(c.isascii() and (c.isalnum() or c == "_") for c in name.text):
            self._error(name, f"invalid macro name: {name.text}")
            return
        self._lex.define(name.text, value.text, name.file, name.line)

    def _include(self) -> None:
        start = self._next()
        tok, target = self._string("file name")
        self._end_of_statement()
        try:
            self._lex.push_include(target)
        except LexError as exc:
            self._error(start, exc.message)
        except ConfigError as exc:
            self._diags.extend(exc.errors)

    def _local(self) -> None:
        self._next()
        tok = self._next()
        if self._is(tok, Kind.KEYWORD, "prefix"):
            ptok, text = self._string("an IPv4 prefix")
            self._end_of_statement()
            prefix = self._check(ptok, valid_local_prefix, text)
            if prefix is not None:
                self._globals["local_prefix"] = prefix
        elif self._is(tok, Kind.KEYWORD, "inet6"):
            prefix6 = None
            if self._is(self._peek(), Kind.KEYWORD, "prefix"):
                self._next()
                ptok, text = self._string("an IPv6 prefix")
                prefix6 = self._check(ptok, valid_local_prefix6, text)
            self._end_of_statement()
            self._globals["local_inet6"] = True
            self._globals["local_prefix6"] = prefix6
        else:
            raise self._fail(tok, "'prefix' or 'inet6'")

    def _socket(self) -> None:
        self._next()
        self._expect_keyword("owner")
        owner = self._owner()
        self._end_of_statement()
        if owner is not None:
            self._globals["socket_owner"] = owner

    def _owner(self) -> Owner | None:
        tok, spec = self._string("USER[:GROUP]")
        return self._check(tok, resolve_owner, spec)

    def _vmm(self) -> None:
        self._next()
        ptok = self._word("the VMM path")
        path = ptok.text
        args: list[str] = []
        while self._peek().kind in (Kind.STRING, Kind.NUMBER):
            args.append(self._next().text)
        self._end_of_statement()
        path = self._check(ptok, valid_path, path, "vmm path")
        vargs = self._check(ptok, valid_vmm_args, args)
        if path is not None and vargs is not None:
            self._globals["vmm"] = Vmm(path=path, args=vargs)

    # -- blocks --------------------------------------------------------------

    def _block(self, start: Token, option: Callable[[Token], None]) -> None:
        """'{' options separated by newlines '}'; option(tok) parses one."""
        self._expect_punct("{")
        while True:
            tok = self._peek()
            if tok.kind is Kind.NEWLINE:
                self._next()
                continue
            if self._is(tok, Kind.PUNCT, "}"):
                self._next()
                return
            if tok.kind is Kind.EOF:
                if not self._eof_in_block:
                    self._error(tok, f"unexpected end of file in block opened at line {start.line}")
                self._eof_in_block = True
                return
            try:
                option(tok)
                end = self._peek()
                if end.kind not in (Kind.NEWLINE, Kind.EOF) and not self._is(end, Kind.PUNCT, "}"):
                    raise self._fail(end, "end of line")
            except _Syntax:
                if self._recover(in_block=True):
                    return

    def _switch(self) -> None:
        start = self._next()
        ntok, name = self._string("switch name")
        block = _Block()
        self._block(start, lambda tok: self._switch_option(tok, block))
        self._end_of_statement()
        if "ifname" not in block.seen:
            self._error(start, f'switch "{name}" is missing interface name')
            return
        name = self._check(ntok, valid_switch_name, name)
        if name is not None:
            where = Location(start.file, start.line)
            self._switches.append(Switch(name=name, where=where, **block.fields))

    def _switch_option(self, tok: Token, block: _Block) -> None:
        word = tok.text if tok.kind is Kind.KEYWORD else None
        if word == "interface":
            self._next()
            self._valued(tok, block, "ifname", "bridge interface name", valid_ifname)
        elif word == "group":
            self._group(block)
        elif word == "locked":
            self._next()
            self._expect_keyword("lladdr")
            block.fields["locked"] = True
        elif word in _FLAGS:
            self._flag(block, word)
        else:
            self._unknown(tok, "in a switch block")

    def _flag(self, block: _Block, word: str) -> None:
        """up/down, enable/disable: the last one given wins (as in vmd)."""
        self._next()
        key, value = _FLAGS[word]
        block.fields[key] = value

    def _valued(
        self, tok: Token, block: _Block, key: str, what: str, check: Callable[..., Any], *args: Any
    ) -> Token:
        """The string after keyword tok, validated by check into block.fields[key], once."""
        vtok, text = self._string(what)
        if self._once(block, key, tok, tok.text):
            block.fields[key] = self._check(vtok, check, text, *args)
        return vtok

    def _group(self, block: _Block) -> None:
        self._valued(self._next(), block, "group", "group name", valid_ifgroup)

    def _vm(self) -> None:
        start = self._next()
        ntok, name = self._string("vm name")
        state = _VmState(block=_Block())
        self._block(start, lambda tok: self._vm_option(tok, state))
        self._end_of_statement()
        name = self._check(ntok, valid_vm_name, name)
        fields = state.block.fields
        for key in ("initrd", "cmdline"):
            if key in fields and "boot" not in fields:
                self._error(state.where[key], f"{key} requires boot")
        if name is None:
            return
        count = max(fields.pop("nifs", 0), len(state.interfaces))
        where = Location(start.file, start.line)
        ifaces = state.interfaces + [
            Interface(index=i, where=where) for i in range(len(state.interfaces), count)
        ]
        self._vms.append(
            Vm(name=name, where=where, disks=tuple(state.disks), interfaces=tuple(ifaces),
               **fields)
        )  # fmt: skip

    def _vm_option(self, tok: Token, state: _VmState) -> None:
        word = tok.text if tok.kind is Kind.KEYWORD else None
        block = state.block
        if word == "memory":
            self._memory(block)
        elif word == "boot" and self._vmd_boot_device():
            self._error(tok, "boot device: vmd option not supported by vmdnet")
            raise _Syntax()
        elif word in ("boot", "initrd"):
            self._next()
            self._valued(tok, block, word, f"{word} path", valid_path, f"{word} path")
            state.where[word] = tok
        elif word == "cmdline":
            self._next()
            self._valued(tok, block, word, "kernel command line", valid_cmdline)
            state.where[word] = tok
        elif word == "disk":
            self._disk(state)
        elif word == "interfaces":
            self._next()
            ntok, count = self._number("number of interfaces")
            if self._once(block, "nifs", tok):
                block.fields["nifs"] = self._check(ntok, valid_nifs, count) or 0
        elif word == "local":
            self._next()
            self._interface(self._expect_keyword("interface"), True, state)
        elif word == "interface":
            self._interface(self._next(), False, state)
        elif word == "owner":
            self._next()
            owner = self._owner()
            if self._once(block, "owner", tok) and owner is not None:
                block.fields["owner"] = owner
        elif word in ("enable", "disable"):
            self._flag(block, word)
        else:
            self._unknown(tok, "in a vm block")

    def _vmd_boot_device(self) -> bool:
        """Whether "boot" is followed by vmd's unquoted "device" (boot device cdrom)."""
        nxt = self._peek(1)
        return self._is(nxt, Kind.STRING, "device") and not nxt.quoted

    def _memory(self, block: _Block) -> None:
        tok = self._next()
        vtok = self._next()
        if vtok.kind is Kind.NUMBER:
            size = int(vtok.text)
        elif vtok.kind is Kind.STRING:
            size = self._check(vtok, parse_size, vtok.text)
        else:
            raise self._fail(vtok, "memory size")
        if not self._once(block, "memory", tok) or size is None:
            return
        if size >= MiB and size % MiB:
            size -= size % MiB
            self._warn(vtok, f"size rounded to {size // MiB} megabytes")
        memory = self._check(vtok, valid_memory, size)
        if memory is not None:
            block.fields["memory"] = memory

    def _disk(self, state: _VmState) -> None:
        tok = self._next()
        ptok, text = self._string("disk path")
        fmt = None
        if self._is(self._peek(), Kind.KEYWORD, "format"):
            self._next()
            ftok, ftext = self._string("disk format")
            fmt = self._check(ftok, valid_disk_format, ftext)
        path = self._check(ptok, valid_path, text, "disk path")
        if self._check(tok, valid_ndisks, len(state.disks) + 1) is None:
            return
        if path is not None:
            state.disks.append(Disk(path=path, format=fmt))

    # -- interfaces ----------------------------------------------------------

    def _interface(self, start: Token, local: bool, state: _VmState) -> None:
        block = _Block()
        block.fields["local"] = local
        index = len(state.interfaces)
        if self._peek().kind is Kind.STRING:
            ntok = self._next()
            block.fields["name"] = self._check(ntok, valid_ifname, ntok.text)
        opt = lambda tok: self._iface_option(tok, block)  # noqa: E731
        nxt = self._peek()
        if self._is(nxt, Kind.PUNCT, "{"):
            self._block(start, opt)
        else:
            self._inline_options(opt)
        if index >= MAX_NICS_PER_VM:
            self._error(start, f"too many interfaces: {index + 1} (at most {MAX_NICS_PER_VM})")
            return
        self._iface_conflicts(block)
        fields = {k: v for k, v in block.fields.items() if not k.startswith("_")}
        state.interfaces.append(
            Interface(index=index, where=Location(start.file, start.line), **fields)
        )

    def _inline_options(self, option: Callable[[Token], None]) -> None:
        """Options on the interface line itself, optionally separated by commas."""
        while True:
            tok = self._peek()
            if tok.kind in (Kind.NEWLINE, Kind.EOF) or self._is(tok, Kind.PUNCT, "}"):
                return
            option(tok)
            if self._is(self._peek(), Kind.PUNCT, ","):
                self._next()

    def _iface_conflicts(self, block: _Block) -> None:
        fields = block.fields
        if fields["local"] and fields.get("switch") is not None:
            self._error(block.fields["_switch_tok"], "a local interface cannot be on a switch")
        rsc = fields.get("rsc_interval_us")
        offloads = fields.get("offloads")
        if rsc is not None and offloads is not None and not offloads & {OFFLOAD_TSO4, OFFLOAD_TSO6}:
            self._error(fields["_rsc_tok"], "rsc requires offload tso4 or tso6")

    def _iface_option(self, tok: Token, block: _Block) -> None:
        word = tok.text if tok.kind is Kind.KEYWORD else None
        if word == "switch":
            self._next()
            block.fields["_switch_tok"] = self._valued(
                tok, block, "switch", "switch name", valid_switch_name
            )
        elif word in ("locked", "lladdr"):
            self._lladdr(block)
        elif word == "group":
            self._group(block)
        elif word in ("up", "down"):
            self._flag(block, word)
        elif word == "offload":
            self._offload(block)
        elif word == "rsc":
            self._rsc(block)
        elif word == "no":
            self._no(block)
        elif word == "vhost-user":
            self._next()
            self._expect_keyword("socket")
            self._valued(tok, block, "vhost_user_socket", "socket path", valid_socket_path)
        else:
            self._unknown(tok, "in an interface block")

    def _lladdr(self, block: _Block) -> None:
        """[locked] lladdr [locked] [ADDRESS]: both orders of "locked" are taken."""
        first = self._next()
        locked = first.text == "locked"
        if locked:
            self._expect_keyword("lladdr")
        elif self._is(self._peek(), Kind.KEYWORD, "locked"):
            self._next()
            locked = True
        addr = None
        if self._peek().kind is Kind.STRING:
            atok = self._next()
            addr = self._check(atok, valid_lladdr, atok.text)
        if self._once(block, "lladdr", first, "lladdr"):
            block.fields["locked"] = locked
            block.fields["lladdr"] = addr

    def _offload(self, block: _Block) -> None:
        tok = self._next()
        names: list[str] = []
        if self._is(self._peek(), Kind.PUNCT, "{"):
            self._next()
            while not self._is(self._peek(), Kind.PUNCT, "}"):
                item = self._next()
                if item.kind is Kind.STRING:
                    names.append(item.text)
                elif item.kind is not Kind.NEWLINE and not self._is(item, Kind.PUNCT, ","):
                    raise self._fail(item, "offload name or '}'")
            self._next()
            if not names:
                self._error(tok, "empty offload list (say 'no offload')")
                return
        else:
            while self._peek().kind is Kind.STRING:
                names.append(self._next().text)
            if not names:
                raise self._fail(self._peek(), "offload name or '{'")
        if self._once(block, "offload", tok, "offload"):
            block.fields["offloads"] = self._check(tok, valid_offloads, names)

    def _rsc(self, block: _Block) -> None:
        tok = self._next()
        interval: int | None = RSC_INTERVAL_DEFAULT_US
        if self._is(self._peek(), Kind.KEYWORD, "interval"):
            self._next()
            ntok, value = self._number("interval in microseconds")
            interval = self._check(ntok, valid_rsc_interval, value)
        if self._once(block, "rsc", tok, "rsc") and interval is not None:
            block.fields["rsc_interval_us"] = interval
            block.fields["_rsc_tok"] = tok

    def _no(self, block: _Block) -> None:
        tok = self._next()
        what = self._next()
        if self._is(what, Kind.KEYWORD, "offload"):
            if self._once(block, "offload", tok, "no offload"):
                block.fields["offloads"] = frozenset()
        elif self._is(what, Kind.KEYWORD, "rsc"):
            if self._once(block, "rsc", tok, "no rsc"):
                block.fields["rsc_interval_us"] = None
        else:
            raise self._fail(what, "'offload' or 'rsc'")


@dataclass
class _VmState:
    """A vm block being parsed: plain fields plus its lists."""

    block: _Block
    disks: list[Disk] = field(default_factory=list)
    interfaces: list[Interface] = field(default_factory=list)
    where: dict[str, Token] = field(default_factory=dict)


# -- whole-configuration checks -------------------------------------------------


def _cross_check(config: Config) -> list[Diagnostic]:
    """Checks that need the whole configuration: unique names, defined switches."""
    errors: list[Diagnostic] = []

    def err(where: Location, message: str) -> None:
        errors.append(Diagnostic(where.file, where.line, message))

    seen: dict[tuple[str, Any], Location] = {}

    def unique(kind: str, key: Any, where: Location, what: str) -> None:
        first = seen.get((kind, key))
        if first is None:
            seen[(kind, key)] = where
        else:
            err(where, f"{what} already defined at {first}")

    for sw in config.switches:
        unique("switch", sw.name, sw.where, f'switch "{sw.name}"')
        unique("ifname", sw.ifname, sw.where, f'interface "{sw.ifname}"')
    switch_names = {sw.name for sw in config.switches}
    for vm in config.vms:
        unique("vm", vm.name, vm.where, f'vm "{vm.name}"')
        for iface in vm.interfaces:
            _check_iface(iface, switch_names, unique, err)
    return errors


def _check_iface(
    iface: Interface,
    switch_names: set[str],
    unique: Callable[[str, Any, Location, str], None],
    err: Callable[[Location, str], None],
) -> None:
    if iface.switch is not None and iface.switch not in switch_names:
        err(iface.where, f'switch "{iface.switch}" is not defined')
    if iface.name is not None:
        unique("ifname", iface.name, iface.where, f'interface "{iface.name}"')
    if iface.lladdr is not None:
        text = format_lladdr(iface.lladdr)
        unique("lladdr", iface.lladdr, iface.where, f"lladdr {text}")
    if iface.vhost_user_socket is not None:
        unique("socket", iface.vhost_user_socket, iface.where,
               f'vhost-user socket "{iface.vhost_user_socket}"')  # fmt: skip


# -- entry points -------------------------------------------------------------------


def _run(lexer: Lexer, diags: list[Diagnostic]) -> Config:
    warnings: list[Diagnostic] = []
    config = _Parser(lexer, diags, warnings).parse()
    if not diags:
        diags.extend(_cross_check(config))
    if diags:
        raise ConfigError(diags)
    return replace(config, warnings=tuple(warnings))


def _lexer(macros: Mapping[str, str] | None, diags: list[Diagnostic]) -> Lexer:
    lexer = Lexer(diags)
    for name, value in (macros or {}).items():
        lexer.define(name, value, "<command line>", 0, persistent=True)
    return lexer


def parse_text(
    text: str | bytes,
    filename: str = "<string>",
    base_dir: str | None = None,
    macros: Mapping[str, str] | None = None,
) -> Config:
    """Parse configuration text; ConfigError lists every problem.

    filename names the text in messages; relative includes are looked up in
    base_dir (default: filename's directory). macros are command-line
    definitions (vmdnetd -D name=value): they win over the file's own.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = text.count(b"\n", 0, exc.start) + 1
            raise ConfigError([Diagnostic(filename, line, "invalid UTF-8")]) from None
    diags: list[Diagnostic] = []
    lexer = _lexer(macros, diags)
    directory = base_dir if base_dir is not None else os.path.dirname(filename)
    lexer.push_text(text, filename, directory)
    return _run(lexer, diags)


def parse_file(path: str, macros: Mapping[str, str] | None = None) -> Config:
    """Parse the configuration file at path (and what it includes)."""
    text = read_config_file(path)
    diags: list[Diagnostic] = []
    lexer = _lexer(macros, diags)
    lexer.push_text(text, path, os.path.dirname(path), os.path.realpath(path))
    return _run(lexer, diags)
