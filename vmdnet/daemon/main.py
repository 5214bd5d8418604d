"""vmdnetd [-dnv] [-D macro=value] [-f file] [-r rundir] [-s socket]

-n checks the configuration and prints it normalized (vmdnet.config.check_main);
otherwise the daemon runs as root: in the foreground with -d (logging to
stderr), else detached with its log going to syslog.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import sys
from collections.abc import Sequence

from vmdnet.config import ConfigError, check_main, parse_file
from vmdnet.config.limits import DEFAULT_CONFIG_PATH
from vmdnet.privsep.control import DEFAULT_SOCKET

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
DEFAULT_RUNDIR = "/run/vmdnet"
SYSLOG_SOCKET = "/dev/log"

log = logging.getLogger("vmdnetd")


def _arguments() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vmdnetd", description="the vmdnet daemon")
    ap.add_argument("-d", action="store_true", help="stay in the foreground, log to stderr")
    ap.add_argument("-n", action="store_true", help="check the configuration and exit")
    ap.add_argument("-v", action="count", default=0, help="verbose logging")
    ap.add_argument("-D", dest="macros", action="append", default=[], metavar="macro=value")
    ap.add_argument("-f", dest="file", default=DEFAULT_CONFIG_PATH, help="configuration file")
    ap.add_argument("-r", dest="rundir", default=DEFAULT_RUNDIR,
                    help="directory for VM sockets and logs")
    ap.add_argument("-s", dest="socket", default=DEFAULT_SOCKET, help="control socket")
    return ap


def _check_argv(args: argparse.Namespace) -> list[str]:
    """The arguments for check_main (-n, -D, -f) from ours."""
    out = ["-n", "-f", args.file]
    for m in args.macros:
        out += ["-D", m]
    return out


def _logging(foreground: bool, verbose: int) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    # pyroute2 logs every netlink message at DEBUG: not what "verbose" is for.
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    if foreground or not os.path.exists(SYSLOG_SOCKET):
        logging.basicConfig(level=level, format="vmdnetd[%(process)d] %(levelname)s %(message)s")
        return
    handler = logging.handlers.SysLogHandler(address=SYSLOG_SOCKET,
                                             facility=logging.handlers.SysLogHandler.LOG_DAEMON)
    handler.setFormatter(logging.Formatter("vmdnetd[%(process)d]: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


def _daemonize() -> None:
    """Detach: fork, new session, stdio to /dev/null (as daemon(3))."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = _arguments().parse_args(args_list)
    if args.n:
        return check_main(_check_argv(args))
    macros = dict(m.partition("=")[::2] for m in args.macros)
    try:
        config = parse_file(args.file, macros)
    except ConfigError as exc:
        for diag in exc.errors:
            sys.stderr.write(f"{diag}\n")
        return EXIT_FAILURE
    if os.geteuid() != 0:
        sys.stderr.write("vmdnetd: need root privileges\n")
        return EXIT_FAILURE
    # Imported here: -n must work without pyroute2 or the C helper.
    from vmdnet.daemon.parent import Options, Parent

    opts = Options(config_path=args.file, control_socket=args.socket, rundir=args.rundir,
                   verbose=bool(args.v), macros=macros)
    if not args.d:
        _daemonize()
    _logging(args.d, args.v)
    parent = Parent(config, opts)
    try:
        parent.start()
        log.info("started: %d vm(s), control socket %s", len(config.vms), args.socket)
        return parent.run()
    finally:
        parent.shutdown()
        log.info("exiting")
