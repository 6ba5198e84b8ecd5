"""kpos command line: run | sim | acquirer | doctor | queue | operator | txn | settle | report |
backup | restore.

`kpos run`       the terminal on its configured devices (the systemd service's command)
`kpos sim`       acquirer simulator on loopback + terminal with simulated peripherals
`kpos acquirer`  the ISO 8583 host simulator alone
`kpos doctor`    check config, files, devices and the acquirer link (firmware.doctor)
`kpos queue`     what waits for the acquirer, and the operator alerts (declined or expired
                 advices and reversals); --ack acknowledges them, --retry queues expired
                 items again (works next to a running terminal: SQLite WAL)
`kpos operator`  add | passwd | list | remove operators (salted scrypt hashes, roles
                 cashier, supervisor, admin; firmware.operators)
`kpos txn`       list | show | export --csv the journal's transactions (masked PANs only)
`kpos settle`    settle the current batch (0500, batch upload when out of balance) and
                 print the report: for a stopped or idle terminal; the menu is the usual way
`kpos report`    print the X report (batch open) or a settled batch's report again
`kpos backup`    checked, rotated copies of the journal and the operator store (SQLite
                 online backup: works next to a running terminal); --list shows them
`kpos restore`   a backup onto this device (stop the terminal first): refused over a
                 journal with unsent items; --force replaces a journal without any
`kpos update`    hold | release | snapshot: the terminal side of a field update (deploy.sh)
`kpos health`    after an update: journal integrity and schema, queue kept, echo test
`kpos selftest`  a new release before the switch: imports, config, one simulated sale
`kpos keys`      load (the TMK from a TR-31 key block) | status | make-test-block (firmware.keyload)
Exit codes: 0 ok, 1 scenario or doctor check failed, 2 bad usage or config, 3 terminal
fault at start.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from firmware import __version__, memtrim

__all__ = ["main"]

log = logging.getLogger("kpos")

SIM_SCREENS = 1000  # `kpos sim` remembers the newest screens only: it may run for days
SIM_RECEIPTS = 1000  # ... and keeps the files of the newest receipts only (~16 KB a sale)


def main(argv: list[str] | None = None) -> int:
    # Before any thread: every thread of the process (the simulator's acquirer and the
    # asyncio executor start before the Terminal) then shares the capped arenas.
    memtrim.configure()
    args = _parser().parse_args(argv)
    if not hasattr(args, "handler"):
        _parser().print_help()
        return 2
    return args.handler(args)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kpos", description="KPOS bank card terminal")
    p.add_argument("--version", action="version", version=f"kpos {__version__}")
    sub = p.add_subparsers()

    run = sub.add_parser("run", help="run the terminal on its configured devices")
    run.add_argument("--config", type=Path, default=Path("/etc/kpos/terminal.toml"))
    run.set_defaults(handler=_cmd_run)

    sim = sub.add_parser("sim", help="run the terminal with simulated peripherals and acquirer")
    sim.add_argument("--config", type=Path, default=Path("config/sim.toml"))
    sim.add_argument("--script", type=Path, help="run a scenario file instead of the console")
    sim.add_argument("--data-dir", type=Path, help="override [terminal] data_dir")
    sim.add_argument("--pcsc", action="store_true",
                     help="read cards through pcscd and vsmartcard's vpcd (pcscd must be running)")
    sim.add_argument("--panel-port", type=int, default=None, metavar="N",
                     help="front panel in the browser on http://127.0.0.1:N/ (default 8470, "
                          "a free one if taken; 0 = any free port)")
    sim.add_argument("--no-panel", action="store_true", help="the console only, no browser panel")
    sim.add_argument("--open", action="store_true", help="open the panel in the web browser")
    sim.set_defaults(handler=_cmd_sim)

    acq = sub.add_parser("acquirer", help="run the ISO 8583 acquirer simulator")
    acq.add_argument("--port", type=int, default=5000)
    acq.add_argument("--host", default="127.0.0.1")
    acq.add_argument("--catalog", type=Path, help="test-card catalog (default: packaged)")
    acq.add_argument("--ledger", type=Path, default=Path("acquirer.db"))
    acq.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    acq.add_argument("--drop", action="store_true", help="never answer (no response)")
    acq.add_argument("--fault", action="append", default=[], metavar="KNOBS",
                     help='fault knobs as in scenario scripts, e.g. "drop times 1 mti 0220" '
                          "(repeatable: the words add up; --delay/--drop add to them)")
    acq.add_argument("--tls-cert", type=Path, help="serve TLS with this certificate (PEM)")
    acq.add_argument("--tls-key", type=Path, help="... and this key (PEM, mode 0600)")
    acq.add_argument("--tls-client-ca", type=Path,
                     help="require client certificates signed by this CA (PEM)")
    acq.add_argument("--make-test-pki", type=Path, metavar="DIR",
                     help="write a TEST CA, server and client certificate and key into DIR, "
                          "print the matching config, and exit")
    acq.set_defaults(handler=_cmd_acquirer)

    doc = sub.add_parser("doctor", help="check config, files, devices and the acquirer link")
    doc.add_argument("--config", type=Path, default=Path("/etc/kpos/terminal.toml"))
    doc.add_argument("--json", action="store_true", help="print a JSON list of {check, status, detail}")
    doc.set_defaults(handler=_cmd_doctor)

    que = sub.add_parser("queue", help="show queued reversals/advices and operator alerts")
    que.add_argument("--config", type=Path, default=Path("/etc/kpos/terminal.toml"))
    que.add_argument("--data-dir", type=Path, help="override [terminal] data_dir")
    que.add_argument("--ack", action="store_true", help="acknowledge every alert shown")
    que.add_argument("--retry", action="store_true",
                     help="put expired advices and reversals back in the queue")
    que.set_defaults(handler=_cmd_queue)

    txn = sub.add_parser("txn", help="list, show or export the journal's transactions (no PAN)")
    txn.set_defaults(handler=_cmd_txn)
    txn_sub = txn.add_subparsers(dest="action", required=True)
    # --config and --data-dir for every command that works on a device's state
    device_opts = argparse.ArgumentParser(add_help=False)
    device_opts.add_argument("--config", type=Path, default=Path("/etc/kpos/terminal.toml"))
    device_opts.add_argument("--data-dir", type=Path, help="override [terminal] data_dir")
    txn_list = txn_sub.add_parser("list", parents=[device_opts],
                                  help="a table, oldest first (default: the current batch)")
    txn_export = txn_sub.add_parser("export", parents=[device_opts], help="every clear column as CSV")
    txn_export.add_argument("--csv", action="store_true", required=True, help="CSV (the only format)")
    txn_export.add_argument("-o", "--output", type=Path, help="write to FILE (default: stdout)")
    for listing in (txn_list, txn_export):
        scope = listing.add_mutually_exclusive_group()
        scope.add_argument("--batch", type=int, help="batch number (default: the current batch)")
        scope.add_argument("--all", action="store_true", help="every batch")
    txn_list.add_argument("--limit", type=int, help="only the newest N")
    txn_show = txn_sub.add_parser("show", parents=[device_opts],
                                  help="one transaction in full, and the ones naming it")
    which = txn_show.add_mutually_exclusive_group(required=True)
    which.add_argument("stan", nargs="?", type=int, help="STAN (in --batch, default the current batch)")
    which.add_argument("--id", type=int, help="journal txn id")
    which.add_argument("--rrn", help="retrieval reference number (field 37)")
    txn_show.add_argument("--batch", type=int, help="the batch of STAN (default: the current batch)")

    opr = sub.add_parser("operator", help="add, change, list or remove operators "
                                          "(works next to a running terminal)")
    opr.set_defaults(handler=_cmd_operator)
    opr_sub = opr.add_subparsers(dest="action", required=True)
    secret_opts = argparse.ArgumentParser(add_help=False)
    secret_opts.add_argument("--password-stdin", action="store_true",
                             help="read the password (4-12 digits) as one line from stdin")
    opr_add = opr_sub.add_parser("add", parents=[device_opts, secret_opts], help="a new operator")
    opr_add.add_argument("number", help="operator number, 2 digits")
    opr_add.add_argument("--role", required=True, help="cashier | supervisor | admin")
    opr_add.add_argument("--name", default="", help="shown on screens and receipts (<= 20 chars)")
    opr_passwd = opr_sub.add_parser("passwd", parents=[device_opts, secret_opts],
                                    help="a new password (also ends a lockout)")
    opr_passwd.add_argument("number")
    opr_sub.add_parser("list", parents=[device_opts], help="number, role, name, state")
    opr_remove = opr_sub.add_parser("remove", parents=[device_opts],
                                    help="remove an operator (never the last admin)")
    opr_remove.add_argument("number")

    stl = sub.add_parser("settle", help="settle the batch with the acquirer, print the report "
                                        "(a stopped terminal; a running one settles from its menu)")
    stl.add_argument("--config", type=Path, default=Path("/etc/kpos/terminal.toml"))
    stl.add_argument("--data-dir", type=Path, help="override [terminal] data_dir")
    stl.add_argument("--operator", help="operator number on the report (default [terminal] operator)")
    stl.set_defaults(handler=_cmd_settle)

    rpt = sub.add_parser("report", help="print the X report of the open batch, or a settlement "
                                        "report again (works next to a running terminal)")
    rpt.add_argument("which", choices=("x", "settlement"))
    rpt.add_argument("--batch", type=int, help="settlement: the batch (default: the last settled)")
    rpt.add_argument("--config", type=Path, default=Path("/etc/kpos/terminal.toml"))
    rpt.add_argument("--data-dir", type=Path, help="override [terminal] data_dir")
    rpt.add_argument("--operator", help="operator number on the report (default [terminal] operator)")
    rpt.set_defaults(handler=_cmd_report)

    bak = sub.add_parser("backup", help="a checked copy of the journal and the operator store "
                                        "(works next to a running terminal), rotated")
    bak.add_argument("--config", type=Path, default=Path("/etc/kpos/terminal.toml"))
    bak.add_argument("--data-dir", type=Path, help="override [terminal] data_dir")
    bak.add_argument("--dir", type=Path, help="destination folder (default [backup] dir)")
    bak.add_argument("--keep", type=int, help="backups kept (default [backup] keep)")
    bak.add_argument("--list", action="store_true", help="list the backups in the destination")
    bak.set_defaults(handler=_cmd_backup)

    rst = sub.add_parser("restore", help="put a backup into the data dir (stop the terminal "
                                         "first; refused over unsent items)")
    rst.add_argument("backup", type=Path, help="a backup folder (kpos backup --list)")
    rst.add_argument("--config", type=Path, default=Path("/etc/kpos/terminal.toml"))
    rst.add_argument("--data-dir", type=Path, help="override [terminal] data_dir")
    rst.add_argument("--force", action="store_true",
                     help="replace an existing journal and operator store (never one with unsent items)")
    rst.set_defaults(handler=_cmd_restore)

    upd = sub.add_parser("update", help="field update: hold the terminal idle, release it, "
                                        "snapshot its queue (firmware.update)")
    upd.set_defaults(handler=_cmd_update)
    upd_sub = upd.add_subparsers(dest="action", required=True)
    upd_hold = upd_sub.add_parser("hold", parents=[device_opts], help="no new transaction; wait until nothing is in flight")
    upd_hold.add_argument("--timeout", type=float, default=300.0, help="s to wait for idle (300)")
    upd_hold.add_argument("--ttl", type=float, default=900.0,
                          help="s after which the terminal ignores the hold (900)")
    upd_sub.add_parser("release", parents=[device_opts], help="lift the hold (idempotent)")
    upd_snap = upd_sub.add_parser("snapshot", parents=[device_opts], help="the unsent reversals and advices as JSON")
    upd_snap.add_argument("--out", type=Path, required=True)

    hlt = sub.add_parser("health", parents=[device_opts],
                         help="after an update: journal, queue, echo test")
    hlt.add_argument("--snapshot", type=Path, help="a `kpos update snapshot` file to compare")
    hlt.add_argument("--timeout", type=float, default=20.0, help="s for the echo test (20)")
    hlt.add_argument("--no-echo", action="store_true", help="skip the echo test")
    hlt.set_defaults(handler=_cmd_health)

    slf = sub.add_parser("selftest", help="imports, config, one simulated sale (a new release)")
    slf.add_argument("--config", type=Path, help="the device config to load with this release")
    slf.add_argument("--sim-config", type=Path, help="default: config/sim.toml of this release")
    slf.set_defaults(handler=_cmd_selftest)

    kys = sub.add_parser("keys", help="terminal master key: load a TR-31 block, status, test block")
    kys.set_defaults(handler=_cmd_keys)
    kys_sub = kys.add_subparsers(dest="action", required=True)
    kys_load = kys_sub.add_parser("load", parents=[device_opts], help="the TMK from a TR-31 key block")
    block = kys_load.add_mutually_exclusive_group(required=True)
    block.add_argument("--block", help="the TR-31 key block text")
    block.add_argument("--block-file", type=Path, help="a file holding the TR-31 key block")
    kbpk = kys_load.add_mutually_exclusive_group(required=True)
    kbpk.add_argument("--kbpk-file", type=Path, help="the key block protection key, hex")
    kbpk.add_argument("--kbpk-components", type=int, metavar="N",
                      help="type N clear KBPK components (not shown), each checked by its KCV")
    kys_sub.add_parser("status", parents=[device_opts], help="keys present, KCVs, when loaded")
    kys_test = kys_sub.add_parser("make-test-block", parents=[device_opts],
                                  help="TEST: the simulator's TMK in a TR-31 block")
    kys_test.add_argument("--out", type=Path, required=True, help="the TR-31 block file")
    kys_test.add_argument("--kbpk-out", type=Path, required=True, help="the KBPK file (hex, 0600)")
    return p


def _setup_logging(level: str = "INFO", file: Path | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if file:
        handlers.append(logging.FileHandler(file, encoding="utf-8"))
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _load(path: Path, overrides: dict | None = None):
    from firmware.config import ConfigError, load_config
    try:
        return load_config(path, overrides=overrides)
    except ConfigError as exc:
        print(f"kpos: {exc}", file=sys.stderr)
        return None


def _data_dir_override(args) -> dict | None:
    """Config overrides for a `--data-dir` option (None when not given)."""
    return {"terminal": {"data_dir": str(args.data_dir.resolve())}} if args.data_dir else None


def _tool_config(args, log_level: str):
    """A tool command's config (--config, --data-dir) with logging at `log_level`; None
    (the error said) when the config is bad."""
    cfg = _load(args.config, _data_dir_override(args))
    if cfg is not None:
        _setup_logging(log_level)
    return cfg


def _install_signals(stop) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)


def _cmd_run(args) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return 2
    _setup_logging(cfg.log.level, cfg.log.file or None)
    from firmware.app import StartupFault, Terminal
    from firmware.hal import build_devices, DeviceError
    try:
        devices = build_devices(cfg)
    except DeviceError as exc:
        log.error("%s", exc)
        return 3

    async def go() -> None:
        terminal = Terminal(cfg, devices)
        _install_signals(terminal.request_stop)
        await terminal.run()

    try:
        asyncio.run(go())
    except StartupFault as exc:
        log.error("terminal fault: %s", exc)
        return 3
    return 0


def _cmd_sim(args) -> int:
    overrides = _data_dir_override(args)
    cfg = _load(args.config, overrides)
    if cfg is None:
        return 2
    _setup_logging("WARNING" if not args.script else "INFO", cfg.log.file or None)
    from firmware.acquirer.tls import TlsError
    from firmware.app import StartupFault
    from firmware.hal.console import ConsoleDisplay, ConsolePanel
    from firmware.sim.panel import DEFAULT_PORT, PanelScreen, serve_panel
    from firmware.sim.runner import sim_session
    from firmware.sim.script import ScriptError, load_script, run_script
    pcsc_error: tuple = ()
    if args.pcsc:
        from firmware.hal.reader_pcsc import PcscReaderError
        pcsc_error = (PcscReaderError,)

    async def go() -> int:
        if args.script:
            steps = load_script(args.script)
            async with sim_session(cfg, forward_display=ConsoleDisplay(), pcsc=args.pcsc,
                                   keep_screens=SIM_SCREENS, keep_receipts=SIM_RECEIPTS) as session:
                await run_script(session, steps)
            print(f"scenario passed: {args.script}")
            return 0
        panel = _LatePanel()
        screen = ConsoleDisplay() if args.no_panel else PanelScreen(ConsoleDisplay())
        async with sim_session(cfg, forward_display=screen, inputs=[panel], pcsc=args.pcsc,
                               keep_screens=SIM_SCREENS, keep_receipts=SIM_RECEIPTS) as session:
            panel.bind(ConsolePanel(session.reader))
            _install_signals(session.terminal.request_stop)
            print(f"KPOS simulator: acquirer on 127.0.0.1:{session.cfg.acquirer.port}, "
                  f"receipts in {session.receipts_dir}")
            if args.no_panel:
                await session.terminal.stopped.wait()
                return 0
            port = DEFAULT_PORT if args.panel_port is None else args.panel_port
            async with serve_panel(session, screen, port, open_browser=args.open) as front:
                print(f"KPOS front panel: {front.url}")
                await session.terminal.stopped.wait()
        return 0

    try:
        return asyncio.run(go())
    except ScriptError as exc:
        print(f"scenario failed: {exc}", file=sys.stderr)
        return 1
    except StartupFault as exc:
        print(f"kpos: terminal fault: {exc}", file=sys.stderr)
        return 3
    except TlsError as exc:  # the simulator's TLS files ([acquirer] tls = true)
        print(f"kpos sim: simulator {exc.reason}", file=sys.stderr)
        return 3
    except pcsc_error as exc:
        print(f"kpos: --pcsc: {exc}. Needs pcscd with the vsmartcard vpcd driver "
              "(apt install pcscd vsmartcard-vpcd; then start `pcscd` as root)", file=sys.stderr)
        return 3


class _LatePanel:
    """Console input whose reader is known only once the session exists."""

    def __init__(self) -> None:
        self._args = None
        self._panel = None

    def attach(self, post, on_quit) -> None:
        self._args = (post, on_quit)
        if self._panel is not None:
            self._panel.attach(post, on_quit)

    def bind(self, panel) -> None:
        self._panel = panel
        if self._args is not None:
            panel.attach(*self._args)


def _cmd_acquirer(args) -> int:
    _setup_logging("INFO")
    from firmware.sim.acquirer import Faults, serve
    words = [word for text in args.fault for word in text.split()]
    try:
        faults = Faults.parse(words) if words else Faults()
    except ValueError as exc:
        print(f"kpos acquirer: --{exc}", file=sys.stderr)
        return 2
    faults.delay = args.delay or faults.delay
    faults.drop = args.drop or faults.drop
    if args.make_test_pki:
        return _make_test_pki(args.make_test_pki)
    from firmware.acquirer.tls import TlsError, server_context
    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_client_ca and not args.tls_cert):
        print("kpos acquirer: --tls-cert and --tls-key go together (and --tls-client-ca "
              "needs them)", file=sys.stderr)
        return 2
    try:
        tls = server_context(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    except TlsError as exc:
        print(f"kpos acquirer: {exc.reason}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(args.catalog, args.ledger, args.host, args.port, faults, tls))
    except KeyboardInterrupt:
        pass
    return 0


def _make_test_pki(directory: Path) -> int:
    """`kpos acquirer --make-test-pki DIR`: the files, then how to use them."""
    from firmware.sim.pki import make_test_pki
    pki = make_test_pki(directory.resolve())
    print(f"TEST PKI written to {directory} (test keys, never for a real acquirer)\n"
          f"simulator: kpos acquirer --tls-cert {pki.server_cert} --tls-key {pki.server_key} "
          f"--tls-client-ca {pki.ca_file}\n"
          f"terminal [acquirer]: tls = true, ca_file = \"{pki.ca_file}\", "
          f"cert_file = \"{pki.client_cert}\", key_file = \"{pki.client_key}\", "
          f"pin_sha256 = \"{pki.server_pin_sha256}\"\n"
          f"(kpos sim with tls = true serves TLS from the same directory)")
    return 0


def _cmd_doctor(args) -> int:
    _setup_logging("ERROR")  # doctor reports what the modules would log as warnings
    from firmware.doctor import main as doctor
    return doctor(args.config, as_json=args.json)


def _cmd_queue(args) -> int:
    cfg = _tool_config(args, "ERROR")
    if cfg is None:
        return 2
    from firmware.journal import JournalError, open_existing
    from firmware.money import currency_alpha, format_amount
    try:
        journal = open_existing(cfg.terminal.data_dir, cfg.security.vault_key_file)
    except FileNotFoundError as exc:
        print(f"kpos queue: {exc}", file=sys.stderr)
        return 2
    except JournalError as exc:
        print(f"kpos queue: {exc}", file=sys.stderr)
        return 3
    try:
        if args.retry:
            print(f"queued again: {journal.requeue_expired()}")
        stats, alerts = journal.queue_stats(), journal.alerts()
        money = lambda minor, cur=cfg.terminal.currency: f"{currency_alpha(cur)} {format_amount(minor, cur)}"  # noqa: E731
        oldest = f", oldest {stats.oldest_advice_at.isoformat()}" if stats.oldest_advice_at else ""
        print(f"queued: {stats.reversals} reversal(s), {stats.advices} advice(s) "
              f"totalling {money(stats.advice_total)}{oldest}")
        print(f"alerts: {len(alerts)}")
        for a in alerts:
            code = f" code {a.response_code}" if a.response_code else ""
            print(f"  {a.what:<17} txn {a.txn_id} STAN {a.stan:06d} "
                  f"{money(a.amount, a.currency)}{code} at {a.at}")
        if args.ack and alerts:
            print(f"acknowledged: {journal.acknowledge_alerts()}")
    finally:
        journal.close()
    return 0


def _cmd_txn(args) -> int:
    cfg = _tool_config(args, "ERROR")
    if cfg is None:
        return 2
    from firmware.txnquery import main as txn
    return txn(cfg, args)


def _cmd_operator(args) -> int:
    cfg = _tool_config(args, "WARNING")
    if cfg is None:
        return 2
    from firmware.operators import OPERATORS_NAME, OperatorError, OperatorStore
    path = cfg.terminal.data_dir / OPERATORS_NAME
    if args.action != "add" and not path.exists():  # only `add` provisions a new store
        print(f"kpos operator: {path} not found", file=sys.stderr)
        return 2
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with OperatorStore(path, max_failures=cfg.operators.max_failures,
                           lockout=cfg.operators.lockout) as store:
            if args.action == "add":
                store.add(args.number, args.role, _read_password(args), args.name)
                print(f"operator {args.number} added ({args.role})")
            elif args.action == "passwd":
                store.passwd(args.number, _read_password(args))
                print(f"operator {args.number}: password changed")
            elif args.action == "remove":
                store.remove(args.number)
                print(f"operator {args.number} removed")
            else:
                _print_operators(store.list())
    except (OperatorError, OSError, EOFError, KeyboardInterrupt) as exc:
        print(f"kpos operator: {str(exc) or 'cancelled'}", file=sys.stderr)
        return 2
    return 0


def _read_password(args) -> str:
    """One line from stdin (--password-stdin), else typed twice without echo."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    from getpass import getpass
    from firmware.operators import OperatorError
    password = getpass("Password (4-12 digits): ")
    if getpass("Password again: ") != password:
        raise OperatorError("the passwords do not match")
    return password


def _print_operators(operators) -> None:
    from datetime import datetime
    now = datetime.now()
    print(f"{'NO':<3} {'ROLE':<10} {'NAME':<20} {'STATE':<14} LAST LOGIN")
    for op in operators:
        print(f"{op.number:<3} {op.role:<10} {op.name:<20} {op.state(now):<14} "
              f"{op.last_login_at or '-'}")


def _cmd_settle(args) -> int:
    cfg = _tool_config(args, "WARNING")
    if cfg is None:
        return 2
    from firmware.settlement import settle_command
    return asyncio.run(settle_command(cfg, operator=args.operator or cfg.terminal.operator))


def _cmd_report(args) -> int:
    cfg = _tool_config(args, "ERROR")
    if cfg is None:
        return 2
    from firmware.settlement import report_command
    return report_command(cfg, which=args.which, batch=args.batch,
                          operator=args.operator or cfg.terminal.operator)


def _cmd_backup(args) -> int:
    cfg = _tool_config(args, "WARNING")
    if cfg is None:
        return 2
    dest = args.dir or cfg.backup.dir
    keep = cfg.backup.keep if args.keep is None else args.keep
    if dest is None or keep < 1:
        print("kpos backup: " + ("--keep must be at least 1" if dest else
                                 "no destination: set [backup] dir or pass --dir"), file=sys.stderr)
        return 2
    from firmware.backup import BackupError, backup
    try:
        if args.list:
            _print_backups(dest)
            return 0
        result = backup(cfg.terminal.data_dir, dest, keep=keep)
    except BackupError as exc:
        print(f"kpos backup: {exc}", file=sys.stderr)
        return 1
    removed = f"; {len(result.removed)} old backup(s) removed" if result.removed else ""
    print(f"backup {result.path}: {', '.join(result.files)}, {result.bytes} bytes, "
          f"integrity_check ok{removed}")
    return 0


def _print_backups(dest: Path) -> None:
    from firmware.backup import BackupError, backups, read_manifest
    from firmware.journal import JOURNAL_NAME
    for path in backups(dest):
        try:
            m = read_manifest(path)
        except BackupError as exc:
            print(f"{path}  {exc}")
            continue
        journal = m["files"][JOURNAL_NAME]
        size = sum(f["bytes"] for f in m["files"].values())
        print(f"{path}  {m['created_at']}  {journal['txns']} txn(s)  "
              f"{journal['unsent']} unsent  {size} bytes")


def _cmd_restore(args) -> int:
    cfg = _tool_config(args, "WARNING")
    if cfg is None:
        return 2
    from firmware.backup import BackupError, restore
    try:
        result = restore(args.backup, cfg.terminal.data_dir, force=args.force)
    except BackupError as exc:
        print(f"kpos restore: {exc}", file=sys.stderr)
        return 1
    print(f"restored {', '.join(result.files)} into {cfg.terminal.data_dir}")
    if result.unsent:
        print(f"kpos restore: {result.unsent} unsent item(s) in this backup: their card data "
              f"opens only with the old device's vault key; copy it to "
              f"{cfg.security.vault_key_file} (0600) before the terminal starts", file=sys.stderr)
    return 0


def _cmd_update(args) -> int:
    cfg = _tool_config(args, "ERROR")
    if cfg is None:
        return 2
    from firmware import update
    if args.action == "hold":
        return update.hold_command(cfg, timeout=args.timeout, ttl=args.ttl)
    if args.action == "release":
        return update.release_command(cfg)
    return update.snapshot_command(cfg, args.out)


def _cmd_health(args) -> int:
    cfg = _tool_config(args, "ERROR")
    if cfg is None:
        return 2
    from firmware.update import health_command
    return health_command(cfg, snapshot=args.snapshot, timeout=args.timeout, echo=not args.no_echo)


def _cmd_selftest(args) -> int:
    _setup_logging("ERROR")
    from firmware.selftest import selftest
    return selftest(args.config, args.sim_config)


def _cmd_keys(args) -> int:
    cfg = _tool_config(args, "ERROR")
    if cfg is None:
        return 2
    from firmware import keyload
    if args.action == "status":
        return keyload.status_command(cfg)
    if args.action == "make-test-block":
        return keyload.make_test_block_command(cfg, args.out, args.kbpk_out)
    import getpass
    from datetime import datetime
    try:
        block = args.block or args.block_file.read_text("ascii")
        algorithm = keyload.tmk_algorithm(cfg)
        kbpk = (keyload.read_hex_key(args.kbpk_file, "key block protection key")
                if args.kbpk_file else
                keyload.ask_components(args.kbpk_components, algorithm, secret=getpass.getpass,
                                       ask=input, say=print))
    except (OSError, UnicodeDecodeError, keyload.KeyLoadError) as exc:
        print(f"refused: {getattr(exc, 'reason', None) or exc}; nothing stored")
        return 1
    return keyload.load_command(cfg, block, kbpk, now=datetime.now())
