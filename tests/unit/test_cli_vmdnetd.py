"""The vmdnetd command line: -n delegates to the configuration check (vmd -n), with
-D macros and -f; errors are file:line with exit status 1."""

from __future__ import annotations

from pathlib import Path

from vmdnet.config import default_config_text
from vmdnet.daemon.main import main


def test_check_the_example(tmp_path: Path, capsys) -> None:
    conf = tmp_path / "vmdnet.conf"
    conf.write_text(default_config_text())
    assert main(["-n", "-f", str(conf), "-D", "kernel=/srv/vm/bzImage"]) == 0
    out, err = capsys.readouterr()
    assert 'boot "/srv/vm/bzImage"' in out and 'switch "lan"' in out
    assert "configuration OK" in err


def test_check_reports_file_and_line(tmp_path: Path, capsys) -> None:
    conf = tmp_path / "broken.conf"
    conf.write_text('switch "lan" {\n\tinterface "vnbr0"\n}\nvm "x" {\n\tmemory 1\n}\n')
    assert main(["-n", "-f", str(conf)]) == 1
    _, err = capsys.readouterr()
    assert f"{conf}:5: memory size too small" in err


def test_daemon_refuses_a_broken_file_before_doing_anything(tmp_path: Path, capsys) -> None:
    conf = tmp_path / "broken.conf"
    conf.write_text("frobnicate\n")
    sock = tmp_path / "ctl.sock"
    assert main(["-d", "-f", str(conf), "-s", str(sock), "-r", str(tmp_path / "run")]) == 1
    _, err = capsys.readouterr()
    assert f"{conf}:1:" in err
    assert not sock.exists() and not (tmp_path / "run").exists()
