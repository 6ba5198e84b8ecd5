"""`kpos txn list|show|export` over a real journal file filled through Journal methods."""
from __future__ import annotations

import csv
import io
import re
from datetime import datetime, timedelta

import pytest

from firmware.emv.card import ENTRY_CHIP, CardData
from firmware.journal import JOURNAL_NAME, Journal, TxnExtra
from firmware.txnquery import CSV_COLUMNS, select, table
from firmware.vault import Vault
from tests.test_cli import kpos
from tests.test_journal import ARQC, ICC_DATA, PAN, TRACK2, sale_request
from tests.test_journal_saf import advice_for

QR_CODE = "134567890123456789"


class Clock:
    def __init__(self):
        self.t = datetime(2026, 3, 1, 9, 30, 0)

    def __call__(self):
        self.t += timedelta(seconds=1)
        return self.t


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Batch 1: sale 100.00 (STAN 1), its void, a refund keyed by RRN, a WeChat QR sale, an
    offline sale, a sale without answer; batch 2: a declined sale. The CLI only reads it."""
    path = tmp_path_factory.mktemp("txn")
    journal = Journal(path / JOURNAL_NAME, Vault.open(path / "keys" / "vault.key"), now=Clock())
    card = CardData(pan=PAN, expiry="3012", pan_seq="01", track2=TRACK2, aid="A000000333010101",
                    app_label="UnionPay Debit", icc_data=ICC_DATA, entry_mode=ENTRY_CHIP, cryptogram=ARQC)
    try:
        def online(kind, amount, *, card=card, extra=None, rrn=None, auth=None, code="00"):
            stan = journal.next_stan()
            txn_id = journal.record_request(kind=kind, stan=stan, batch=journal.batch_no(), amount=amount,
                                            currency=156, card=card, request=sale_request(stan, amount),
                                            reversible=kind != "refund", extra=extra)
            if code is not None:
                journal.record_response(txn_id, response_code=code, approved=code == "00", rrn=rrn,
                                        auth_code=auth)
            return txn_id

        sale = online("sale", 10000, rrn="000000000101", auth="111111")
        online("void", 10000, extra=TxnExtra(original_id=sale), rrn="000000000102", auth="222222")
        online("refund", 2500, extra=TxnExtra(original_rrn="000000009999", original_date="0228"),
               rrn="000000000103", auth="333333")
        online("qr_sale", 4200, card=None, extra=TxnExtra(wallet="wechat"), rrn="000000000104")
        stan = journal.next_stan()
        journal.record_offline_approval(kind="sale", stan=stan, batch=1, amount=700, currency=156,
                                        card=card, advice=advice_for(stan, 700), code="Y1")
        unknown = online("sale", 555, code=None)
        journal.record_no_response(unknown, reason_code="98", detail="timeout")
        journal.close_batch()
        online("sale", 999, rrn="000000000201", code="51")
    finally:
        journal.close()
    return path


def txn(data_dir, *args):
    proc = kpos("txn", *args, "--config", "config/sim.toml", "--data-dir", str(data_dir))
    assert PAN not in proc.stdout + proc.stderr  # the journal has no clear PAN to show
    assert TRACK2 not in proc.stdout + proc.stderr and QR_CODE not in proc.stdout
    return proc


def rows(stdout: str) -> list[list[str]]:
    """The table's lines split into cells, without the time (checked here) and the footer."""
    lines = stdout.splitlines()
    assert lines[0].split() == ["ID", "TIME", "KIND", "STAN", "BATCH", "AMOUNT", "STATUS", "CARD",
                                "RRN", "AUTH", "OP", "WALLET", "OFFLINE"]
    cells = [line.split() for line in lines[1:-1]]
    assert all(c[1] == "2026-03-01" and re.fullmatch(r"09:3\d:\d\d", c[2]) for c in cells), cells
    return [c[:1] + c[3:] for c in cells]


def test_list_defaults_to_the_current_batch(data_dir):
    proc = txn(data_dir, "list")
    assert proc.returncode == 0, proc.stderr
    assert rows(proc.stdout) == [["7", "sale", "000007", "000002", "CNY", "9.99", "DECLINED",
                                  "622609******0014", "000000000201", "01"]]
    assert proc.stdout.endswith("1 transaction(s)\n")


def test_list_a_batch_oldest_first(data_dir):
    proc = txn(data_dir, "list", "--batch", "1")
    assert proc.returncode == 0, proc.stderr
    got = rows(proc.stdout)
    assert [r[0] for r in got] == ["1", "2", "3", "4", "5", "6"]
    assert got[0][1:] == ["sale", "000001", "000001", "CNY", "100.00", "APPROVED", "622609******0014",
                          "000000000101", "111111", "01"]
    assert got[3][1:] == ["qr_sale", "000004", "000001", "CNY", "42.00", "APPROVED", "000000000104",
                          "01", "wechat"]
    assert got[4][-2:] == ["01", "Y1"]  # offline approval by the card
    assert got[5][6] == "UNKNOWN"
    assert proc.stdout.endswith("6 transaction(s)\n")


def test_list_all_and_limit(data_dir):
    everything = txn(data_dir, "list", "--all")
    assert [r[0] for r in rows(everything.stdout)] == ["1", "2", "3", "4", "5", "6", "7"]
    newest = txn(data_dir, "list", "--all", "--limit", "2")
    assert [r[0] for r in rows(newest.stdout)] == ["6", "7"]
    in_batch = txn(data_dir, "list", "--batch", "1", "--limit", "3")
    assert [r[0] for r in rows(in_batch.stdout)] == ["4", "5", "6"]
    empty = txn(data_dir, "list", "--batch", "9")
    assert empty.returncode == 0 and empty.stdout.endswith("0 transaction(s)\n")


def test_table_columns_line_up(data_dir):
    journal = Journal(data_dir / JOURNAL_NAME, Vault.open(data_dir / "keys" / "vault.key"))
    try:
        lines = table(select(journal, everything=True)).splitlines()
        assert select(journal, everything=True, limit=0) == []
        assert [r.id for r in select(journal, batch=1, limit=10)] == [1, 2, 3, 4, 5, 6]
    finally:
        journal.close()
    status = lines[0].index("STATUS")
    assert [line[status:status + 8] for line in lines[1:]] == [
        "APPROVED", "APPROVED", "APPROVED", "APPROVED", "APPROVED", "UNKNOWN ", "DECLINED"]
    amount_end = lines[0].index("AMOUNT") + len("AMOUNT")
    assert all(line[:amount_end].endswith(("100.00", "25.00", "42.00", "7.00", "5.55", "9.99"))
               for line in lines[1:])


def test_show_by_stan_lists_what_names_it(data_dir):
    proc = txn(data_dir, "show", "1", "--batch", "1")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for line in ("id: 1", "kind: sale", "stan: 1", "amount: 10000", "amount_formatted: CNY 100.00",
                 "status: APPROVED", "masked_pan: 622609******0014", "rrn: 000000000101",
                 "auth_code: 111111", "arqc: " + ARQC, "reversal_status: CANCELLED",
                 "advice_status: -", "original_id: -", "named by: 1 transaction(s)"):
        assert line + "\n" in out, line
    dependents = out.split("named by: 1 transaction(s)\n")[1].splitlines()
    assert [row[:5] for row in rows("\n".join(dependents + ["footer"]))] == [
        ["2", "void", "000002", "000001", "CNY"]]


def test_show_by_id_and_rrn(data_dir):
    void = txn(data_dir, "show", "--id", "2")
    assert void.returncode == 0, void.stderr
    assert "original_id: 1\n" in void.stdout
    assert "original: txn 1 sale STAN 000001 batch 000001 APPROVED\n" in void.stdout
    assert "named by: 0 transaction(s)\n" in void.stdout
    refund = txn(data_dir, "show", "--rrn", "000000000103")
    assert "kind: refund\n" in refund.stdout and "original_rrn: 000000009999\n" in refund.stdout
    assert "original_date: 0228\n" in refund.stdout and "reversal_status: -\n" in refund.stdout
    offline = txn(data_dir, "show", "5", "--batch", "1")
    assert "offline_code: Y1\n" in offline.stdout and "advice_status: PENDING\n" in offline.stdout
    unknown = txn(data_dir, "show", "--id", "6")
    assert "status: UNKNOWN\n" in unknown.stdout and "reversal_status: PENDING\n" in unknown.stdout
    current = txn(data_dir, "show", "2")  # STAN 2 of the current batch (2): none; batch 1's is STAN 2
    assert current.returncode == 1 and "STAN 000002 in batch 000002 not in the journal" in current.stderr


@pytest.mark.parametrize("args", [("--id", "99"), ("--rrn", "999999999999"), ("3", "--batch", "2")])
def test_show_not_found_exits_1(data_dir, args):
    proc = txn(data_dir, "show", *args)
    assert proc.returncode == 1 and "not in the journal" in proc.stderr and proc.stdout == ""


def test_export_csv_parses_back(data_dir, tmp_path):
    proc = txn(data_dir, "export", "--csv", "--all")
    assert proc.returncode == 0, proc.stderr
    got = list(csv.DictReader(io.StringIO(proc.stdout, newline="")))
    assert list(csv.reader(io.StringIO(proc.stdout, newline="")))[0] == list(CSV_COLUMNS)
    assert [int(r["id"]) for r in got] == [1, 2, 3, 4, 5, 6, 7]
    assert [int(r["amount"]) for r in got] == [10000, 10000, 2500, 4200, 700, 555, 999]
    assert [r["amount_formatted"] for r in got] == ["CNY 100.00", "CNY 100.00", "CNY 25.00", "CNY 42.00",
                                                    "CNY 7.00", "CNY 5.55", "CNY 9.99"]
    assert got[1]["original_id"] == "1" and got[0]["original_id"] == ""
    assert got[3]["wallet"] == "wechat" and got[3]["masked_pan"] == ""
    assert got[4]["offline_code"] == "Y1" and got[6]["batch"] == "2"
    out = tmp_path / "batch1.csv"
    written = txn(data_dir, "export", "--csv", "--batch", "1", "-o", str(out))
    assert written.returncode == 0 and written.stdout == ""
    assert "6 transaction(s) written to" in written.stderr
    text = out.read_text(encoding="utf-8")
    assert PAN not in text and TRACK2 not in text
    stans = [r["stan"] for r in csv.DictReader(io.StringIO(text, newline=""))]
    assert stans == ["1", "2", "3", "4", "5", "6"]


@pytest.mark.parametrize("args", [("show",), ("show", "1", "--id", "1"), ("list", "--batch", "1", "--all"),
                                  ("export",), ("list", "--limit", "0"), ("bogus",)])
def test_usage_errors_exit_2(data_dir, args):
    assert txn(data_dir, *args).returncode == 2


def test_missing_journal_is_a_config_error_and_not_created(tmp_path):
    proc = txn(tmp_path, "list")
    assert proc.returncode == 2 and "journal.db not found" in proc.stderr
    assert not (tmp_path / JOURNAL_NAME).exists() and not (tmp_path / "keys").exists()


def test_corrupt_journal_exits_3(tmp_path):
    Vault.open(tmp_path / "keys" / "vault.key")
    (tmp_path / JOURNAL_NAME).write_bytes(b"not a database, just bytes" * 100)
    proc = txn(tmp_path, "list")
    assert proc.returncode == 3 and "integrity" in proc.stderr
