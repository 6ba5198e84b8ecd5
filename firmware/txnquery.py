"""`kpos txn`: the journal's transactions as a table, one of them in full, or CSV.

Blocking, on the calling thread (the CLI's): `open_journal()` opens the journal on this
thread (a Journal is used and closed on the thread that made it; SQLite WAL lets it sit
next to a running terminal) with the vault key of cfg.security.vault_key_file, and never
creates either file. Read-mostly: opening an older journal migrates its schema, nothing
else is written. Amounts are int minor units; "amount" as shown is "CNY 123.45", unsigned
(the kind says which way the money went). Only the journal's clear columns are shown, and
they hold the masked PAN only: never a PAN, track data or a PIN.
`main()` exit codes: 0 ok, 1 transaction not found, 2 usage or config error (journal or
key file missing, bad --limit), 3 the journal does not open (corrupt, unreadable key).
"""
from __future__ import annotations

import csv
import dataclasses
import sys
from typing import Callable, TextIO

from firmware.journal import Journal, JournalError, TxnRecord, open_existing
from firmware.money import currency_alpha, format_amount

__all__ = ["TxnQueryError", "open_journal", "select", "money", "clear_columns", "table", "details",
           "write_csv", "CSV_COLUMNS", "main"]

_Column = tuple[str, Callable[[TxnRecord], str], bool]  # header, cell, right-aligned


class TxnQueryError(Exception):
    """The journal cannot be read: the message names the file and why."""


def open_journal(cfg) -> Journal:
    """The terminal's journal, opened on this thread (close it on this thread too).
    FileNotFoundError when the journal or the vault key is missing; TxnQueryError when
    either does not open."""
    try:
        return open_existing(cfg.terminal.data_dir, cfg.security.vault_key_file)
    except JournalError as exc:  # its message names the file
        raise TxnQueryError(str(exc)) from exc


def select(journal: Journal, *, batch: int | None = None, everything: bool = False,
           limit: int | None = None) -> list[TxnRecord]:
    """Oldest first: the transactions of `batch` (default the current one), or of every
    batch; with `limit` (>= 0), only the newest `limit` of them."""
    if everything:
        return journal.page(0, journal.count() if limit is None else limit)[::-1]
    records = journal.batch_records(batch)
    return records if limit is None else records[max(0, len(records) - limit):]


def money(record: TxnRecord) -> str:
    """The amount as people read it: "CNY 123.45"."""
    return f"{currency_alpha(record.currency)} {format_amount(record.amount, record.currency)}"


# every clear column of the journal, in its order, and "amount_formatted" after "amount"
CSV_COLUMNS = tuple(name for f in dataclasses.fields(TxnRecord)
                    for name in ((f.name, "amount_formatted") if f.name == "amount" else (f.name,)))


def clear_columns(record: TxnRecord) -> dict[str, object]:
    """CSV_COLUMNS -> the record's values ("amount" in minor units, None when empty)."""
    values = {**dataclasses.asdict(record), "amount_formatted": money(record)}
    return {name: values[name] for name in CSV_COLUMNS}


TABLE_COLUMNS: tuple[_Column, ...] = (
    ("ID", lambda r: str(r.id), True),
    ("TIME", lambda r: r.created_at.replace("T", " "), False),
    ("KIND", lambda r: r.kind, False),
    ("STAN", lambda r: f"{r.stan:06d}", False),
    ("BATCH", lambda r: f"{r.batch:06d}", False),
    ("AMOUNT", money, True),
    ("STATUS", lambda r: r.status, False),
    ("CARD", lambda r: r.masked_pan or "", False),
    ("RRN", lambda r: r.rrn or "", False),
    ("AUTH", lambda r: r.auth_code or "", False),
    ("OP", lambda r: r.operator, False),
    ("WALLET", lambda r: r.wallet or "", False),
    ("OFFLINE", lambda r: r.offline_code or "", False),
)


def table(records: list[TxnRecord]) -> str:
    """One header line and one line per record, columns padded to their widest cell."""
    rows = [[header for header, _cell, _right in TABLE_COLUMNS]]
    rows += [[cell(r) for _header, cell, _right in TABLE_COLUMNS] for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
    return "".join("  ".join(text.rjust(w) if column[2] else text.ljust(w)
                             for text, w, column in zip(row, widths, TABLE_COLUMNS)).rstrip() + "\n"
                   for row in rows)


def details(journal: Journal, record: TxnRecord) -> str:
    """Every clear column of `record` (its reversal and advice state among them), the
    original it names and the transactions that name it (voids, refunds, completions)."""
    lines = [f"{name}: {'-' if value is None else value}"
             for name, value in clear_columns(record).items()]
    if record.original_id is not None:
        original = journal.get(record.original_id)
        lines.append(f"original: txn {original.id} {original.kind} STAN {original.stan:06d} "
                     f"batch {original.batch:06d} {original.status}")
    dependents = journal.dependents(record.id)
    lines.append(f"named by: {len(dependents)} transaction(s)")
    text = "".join(line + "\n" for line in lines)
    return text + (table(dependents) if dependents else "")


def write_csv(records: list[TxnRecord], out: TextIO) -> None:
    """A header row (CSV_COLUMNS), then one row per record; None as an empty cell."""
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(["" if v is None else v for v in clear_columns(r).values()] for r in records)


def main(cfg, args, out: TextIO | None = None) -> int:
    """Run `kpos txn list|show|export` (argparse namespace from firmware/cli.py)."""
    out = out or sys.stdout
    if getattr(args, "limit", None) is not None and args.limit < 1:
        print("kpos txn: --limit must be 1 or more", file=sys.stderr)
        return 2
    try:
        journal = open_journal(cfg)
    except FileNotFoundError as exc:
        print(f"kpos txn: {exc}", file=sys.stderr)
        return 2
    except TxnQueryError as exc:
        print(f"kpos txn: {exc}", file=sys.stderr)
        return 3
    try:
        return _ACTIONS[args.action](journal, args, out)
    finally:
        journal.close()


def _list(journal: Journal, args, out: TextIO) -> int:
    records = select(journal, batch=args.batch, everything=args.all, limit=args.limit)
    out.write(table(records))
    out.write(f"{len(records)} transaction(s)\n")
    return 0


def _show(journal: Journal, args, out: TextIO) -> int:
    if args.id is not None:
        record, what = _get(journal, args.id), f"txn id {args.id}"
    elif args.rrn is not None:
        record, what = journal.find_rrn(args.rrn), f"RRN {args.rrn}"
    else:
        batch = journal.batch_no() if args.batch is None else args.batch
        record, what = journal.find_stan(args.stan, batch), f"STAN {args.stan:06d} in batch {batch:06d}"
    if record is None:
        print(f"kpos txn: {what} not in the journal", file=sys.stderr)
        return 1
    out.write(details(journal, record))
    return 0


def _get(journal: Journal, txn_id: int) -> TxnRecord | None:
    try:
        return journal.get(txn_id)
    except JournalError:
        return None


def _export(journal: Journal, args, out: TextIO) -> int:
    records = select(journal, batch=args.batch, everything=args.all)
    if args.output is None:
        write_csv(records, out)
        return 0
    try:
        with open(args.output, "w", newline="", encoding="utf-8") as file:
            write_csv(records, file)
    except OSError as exc:
        print(f"kpos txn: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"{len(records)} transaction(s) written to {args.output}", file=sys.stderr)
    return 0


_ACTIONS = {"list": _list, "show": _show, "export": _export}
