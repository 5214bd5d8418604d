"""Configuration: the regress pairs in tests/config and lexer/parser edge cases.

Each tests/config/NN-pass-x.conf must be accepted and "vmdnetd -n" must
print exactly NN-pass-x.ok; each NN-fail-x.conf must be refused with exactly
the error lines in NN-fail-x.ok (file names relative to tests/config, as in
OpenBSD's regress/usr.sbin/vmd/config).
"""

from __future__ import annotations

import io
import ipaddress
import os
import re
from pathlib import Path

import pytest

from vmdnet.config import (
    ALL_OFFLOADS,
    Config,
    ConfigError,
    check_main,
    default_config_text,
    normalize,
    parse_file,
    parse_text,
)
from vmdnet.config.limits import MAX_INCLUDE_DEPTH, MAX_INCLUDED_FILES, MAX_TOKEN_LEN

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
PAIRS = sorted(p.name for p in CONFIG_DIR.glob("[0-9][0-9]-*.conf"))


def run_check(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = check_main(argv, stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def errors_of(text: str, **kw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_text(text, filename="t.conf", **kw)
    return [str(d) for d in info.value.errors]


def test_pairs_present() -> None:
    # The brief asks for at least ~25 pairs; each .conf needs its .ok.
    assert len(PAIRS) >= 25
    for name in PAIRS:
        assert (CONFIG_DIR / name).with_suffix(".ok").is_file(), name
        assert "-pass-" in name or "-fail-" in name, name


@pytest.mark.parametrize("name", PAIRS)
def test_regress_pair(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CONFIG_DIR)
    expected = (CONFIG_DIR / name).with_suffix(".ok").read_text()
    rc, out, err = run_check(["-n", "-f", name])
    if "-pass-" in name:
        assert rc == 0, err
        assert out == expected
        assert err.endswith("configuration OK\n")
        # The canonical form reads back to the same model and the same text.
        again = parse_text(out, filename="normalized")
        assert again == parse_file(name)
        assert normalize(again) == out
    else:
        assert rc == 1
        assert out == ""
        assert err == expected


# -- the example configuration --------------------------------------------------


def test_example_config() -> None:
    config = parse_text(default_config_text(), filename="example.conf")
    assert [s.name for s in config.switches] == ["lan"]
    assert [v.name for v in config.vms] == ["alpha", "beta"]
    assert config.globals.local_prefix == ipaddress.IPv4Network("198.18.0.0/15")
    beta = config.vm("beta")
    assert beta is not None
    assert [i.local for i in beta.interfaces] == [False, True]
    assert beta.interfaces[0].offloads == frozenset()
    assert config.locked(beta.interfaces[0])  # the switch is locked
    assert not config.locked(beta.interfaces[1])
    assert config.warnings == ()


def test_example_config_macros_from_command_line(tmp_path: Path) -> None:
    path = tmp_path / "vmdnet.conf"
    path.write_text(default_config_text())
    rc, out, err = run_check(["-n", "-D", "kernel=/srv/k", "-f", str(path)])
    assert rc == 0, err
    assert out.count('boot "/srv/k"') == 2


def man_examples() -> list[str]:
    """The configuration examples (literal displays) of man/vmdnet.conf.5's EXAMPLES."""
    page = (CONFIG_DIR.parent.parent / "man" / "vmdnet.conf.5").read_text()
    section = page.split("\n.Sh EXAMPLES\n", 1)[1].split("\n.Sh ", 1)[0]
    blocks = re.findall(r"^\.Bd -literal -offset indent\n(.*?)^\.Ed$", section, re.M | re.S)
    return [b for b in blocks if not b.startswith("# ")]  # shell commands are not configs


def test_man_page_examples_parse() -> None:
    examples = man_examples()
    assert len(examples) == 2
    first = parse_text(examples[0], macros={"kernel": "/srv/vm/bzImage"})
    assert [v.name for v in first.vms] == ["alpha", "beta"]
    assert first.vms[1].interfaces[0].offloads == frozenset()
    # The page's example owner is a user that need not exist here.
    second = parse_text(examples[1].replace("owner alice", "owner root"))
    assert len(second.vms[0].interfaces) == 2


# -- lexer ----------------------------------------------------------------------


def test_quotes_and_escapes() -> None:
    text = r"""vm "a" {
	boot "/b\"q\ \\x\n"
	cmdline 'it''s'
}
"""
    vm = parse_text(text).vms[0]
    # \" \space \\ are escapes; \n is not, so the backslash stays.
    assert vm.boot == '/b"q \\x\\n'
    # Adjacent strings join (vm.conf's "string" rule).
    assert vm.cmdline == "its"


def test_quoted_keyword_is_a_string() -> None:
    config = parse_text('vm "vm" {\n}\nswitch "switch" {\n\tinterface "up"\n}\n')
    assert config.vms[0].name == "vm"
    assert config.switches[0].ifname == "up"


def test_continuation_everywhere() -> None:
    text = 'vm \\\n"a" {\n\tboot "/x\\\ny"\n\t# comment \\\n\tmemory 1\n\tmemory 64M\n\tcpus\n}\n'
    # The comment swallows "memory 1"; "cpus" is on line 8 of the file.
    assert errors_of(text) == ["t.conf:8: unknown keyword: cpus"]
    text = text.replace("\tcpus\n", "")
    vm = parse_text(text).vms[0]
    assert (vm.name, vm.boot, vm.memory) == ("a", "/xy", 64 << 20)


def test_crlf_line_endings() -> None:
    config = parse_text('vm "a" {\r\n\tmemory 1G\r\n}\r\n')
    assert config.vms[0].memory == 1 << 30


def test_macro_defined_after_use() -> None:
    text = 'vm "a" {\n\tboot $k\n}\nk = "/k"\n'
    assert errors_of(text) == ["t.conf:2: macro 'k' not defined"]


def test_macro_expansion_is_not_recursive() -> None:
    text = 'a = "$b"\nb = "/x"\nvm "v" {\n\tboot $a\n}\n'
    # $a expands to the text "$b", whose "$" is then an ordinary character.
    assert errors_of(text) == ["t.conf:4: syntax error: expected boot path, got '$'"]
    text = 'a = "/x/$b"\nb = "/x"\nvm "v" {\n\tboot $a\n}\n'
    # Inside a word "$" never expands, from a macro or not.
    assert parse_text(text, macros={"b": "/y"}).vms[0].boot == "/x/$b"


def test_macro_runs_into_following_text() -> None:
    config = parse_text('d = "/srv"\nvm "v" {\n\tboot $d/bzImage\n}\n')
    assert config.vms[0].boot == "/srv/bzImage"


def test_macro_redefinition_and_command_line() -> None:
    text = 'm = "1G"\nm = "2G"\nvm "v" {\n\tmemory $m\n}\n'
    assert parse_text(text).vms[0].memory == 2 << 30
    assert parse_text(text, macros={"m": "3G"}).vms[0].memory == 3 << 30


def test_unused_macro_warning() -> None:
    config = parse_text('x = "1"\ny = "64M"\nvm "v" {\n\tmemory $y\n}\n', filename="t.conf")
    assert [str(w) for w in config.warnings] == ["t.conf:1: warning: macro 'x' not used"]


def test_memory_rounding_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CONFIG_DIR)
    rc, _, err = run_check(["-n", "-f", "13-pass-memory.conf"])
    assert rc == 0
    assert err == (
        "13-pass-memory.conf:11: warning: size rounded to 100 megabytes\nconfiguration OK\n"
    )


def test_number_lexing() -> None:
    # "-1" is a number; "-x" is a stray "-".
    assert errors_of('vm "a" {\n\tinterfaces -1\n}\n') == [
        "t.conf:2: too many interfaces: -1 (at most 8)"
    ]
    assert errors_of('vm "a" {\n\tinterfaces -x\n}\n') == [
        "t.conf:2: syntax error: expected number of interfaces, got '-'"
    ]
    # A word starting with digits is a string: "512M", "00:11:...".
    config = parse_text('vm "1" {\n\tmemory 512M\n\tinterface { lladdr 02:11:22:33:44:55 }\n}\n')
    assert config.vms[0].name == "1"
    assert config.vms[0].interfaces[0].lladdr == bytes.fromhex("021122334455")


def test_unterminated_quote_at_end_of_file() -> None:
    assert errors_of('vm "a') == ["t.conf:1: reached end of file while parsing quoted string"]


def test_nul_in_quoted_string() -> None:
    assert errors_of('vm "a\0b" {\n}\n') == ["t.conf:1: NUL character in quoted string"]


def test_token_too_long() -> None:
    long_word = "a" * (MAX_TOKEN_LEN + 1)
    assert errors_of(f"vm {long_word} {{\n}}\n") == ["t.conf:1: string too long"]
    assert errors_of(f'vm "{long_word}" {{\n}}\n') == ["t.conf:1: string too long"]


def test_invalid_utf8() -> None:
    with pytest.raises(ConfigError) as info:
        parse_text(b'vm "a" {\n\tboot "/\xff"\n}\n', filename="t.conf")
    assert str(info.value) == "t.conf:2: invalid UTF-8"


def test_error_line_numbers_in_includes(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inc.conf").write_text('\n\nvm "a" {\n\tcpus 1\n}\n')
    main = tmp_path / "main.conf"
    main.write_text('include "sub/inc.conf"\nvm "b" {\n\tgpus 1\n}\n')
    with pytest.raises(ConfigError) as info:
        parse_file(str(main))
    assert [str(d) for d in info.value.errors] == [
        f"{tmp_path}/sub/inc.conf:4: unknown keyword: cpus",
        f"{main}:3: unknown keyword: gpus",
    ]


def test_include_self_cycle(tmp_path: Path) -> None:
    path = tmp_path / "self.conf"
    path.write_text('include "self.conf"\n')
    with pytest.raises(ConfigError) as info:
        parse_file(str(path))
    assert info.value.message == f"include cycle: {path} -> {tmp_path}/self.conf"


def test_include_depth_limit(tmp_path: Path) -> None:
    for i in range(MAX_INCLUDE_DEPTH + 1):
        (tmp_path / f"{i}.conf").write_text(f'include "{i + 1}.conf"\n')
    (tmp_path / f"{MAX_INCLUDE_DEPTH + 1}.conf").write_text("")
    with pytest.raises(ConfigError) as info:
        parse_file(str(tmp_path / "0.conf"))
    assert info.value.message == f"includes nested too deeply (at most {MAX_INCLUDE_DEPTH})"
    assert info.value.file == str(tmp_path / f"{MAX_INCLUDE_DEPTH - 1}.conf")
    # A chain of exactly MAX_INCLUDE_DEPTH files is fine.
    parse_file(str(tmp_path / "2.conf"))


def test_include_count_limit(tmp_path: Path) -> None:
    (tmp_path / "leaf.conf").write_text("# nothing\n")
    (tmp_path / "main.conf").write_text('include "leaf.conf"\n' * (MAX_INCLUDED_FILES + 1))
    with pytest.raises(ConfigError) as info:
        parse_file(str(tmp_path / "main.conf"))
    assert [d.line for d in info.value.errors] == [MAX_INCLUDED_FILES + 1]


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    rc, _, err = run_check(["-n", "-f", str(fifo)])
    assert (rc, err) == (1, f"{fifo}: not a regular file\n")


# -- parser ---------------------------------------------------------------------


def test_defaults() -> None:
    config = parse_text('vm "a" {\n\tinterface\n}\n')
    assert config.globals.local_prefix == ipaddress.IPv4Network("100.64.0.0/10")
    assert not config.globals.local_inet6
    iface = config.vms[0].interfaces[0]
    assert iface.offloads == ALL_OFFLOADS
    assert (iface.up, iface.locked, iface.lladdr) == (True, False, None)
    assert iface.rsc_interval_us is None


def test_blocks_may_open_and_close_on_one_line() -> None:
    config = parse_text('switch "s" { interface vnbr0 }\nvm "a" { memory 1G }\n')
    assert config.switches[0].ifname == "vnbr0"
    assert config.vms[0].memory == 1 << 30


def test_locations_do_not_affect_equality() -> None:
    a = parse_text('vm "a" {\n}\n', filename="one")
    b = parse_text('\n\n\nvm "a" {\n}\n', filename="two")
    assert a == b
    assert a.vms[0].where.line == 1 and b.vms[0].where.line == 4


def test_config_error_carries_first_location() -> None:
    with pytest.raises(ConfigError) as info:
        parse_text('vm "a" {\n\tcpus 1\n\tgpus 2\n}\n', filename="f.conf")
    exc = info.value
    assert (exc.file, exc.line, exc.message) == ("f.conf", 2, "unknown keyword: cpus")
    assert str(exc) == "f.conf:2: unknown keyword: cpus (and 1 more)"


def test_cross_checks_wait_for_clean_parse() -> None:
    # The switch line is broken, so "switch lan is not defined" would only
    # repeat the same mistake: it is not reported.
    text = 'switch "lan" {\n\tinterface vnbr0\n\tbogus\n}\nvm "a" {\n\tinterface switch lan\n}\n'
    assert errors_of(text) == ["t.conf:3: unknown keyword: bogus"]


# -- check_main -----------------------------------------------------------------


def test_check_main_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "none.conf"
    assert run_check(["-n", "-f", str(missing)]) == (
        1, "", f"{missing}: No such file or directory\n"
    )  # fmt: skip


def test_check_main_usage() -> None:
    rc, out, err = run_check(["-x"])
    assert (rc, out) == (2, "")
    assert err.startswith("vmdnetd: ")
    rc, _, err = run_check(["-n", "-D", "novalue", "-f", "/dev/null"])
    assert rc == 2 and "invalid macro definition: novalue" in err


def test_check_main_default_output_is_parseable(tmp_path: Path) -> None:
    path = tmp_path / "empty.conf"
    path.write_text("")
    rc, out, err = run_check(["-n", "-f", str(path)])
    assert rc == 0 and err == "configuration OK\n"
    assert parse_text(out) == Config()
