"""Acquirer simulator: wallet QR payments: pay, query, cancel, refund (the wallet's behaviour by code).

Handlers run on the simulator's ledger thread (AcquirerSimulator.route). The simulated
wallet keeps its orders and refunds in its own ledger tables (`wallet_orders`,
`wallet_refunds`) and records every final decision with Ledger.record(kind "qr_sale" /
"qr_refund", pan = the payment code, money "none": a wallet account is not a card
account), so settlement counts QR payments by kind and, through `wallet_orders`, by
wallet. Logs carry masked codes only. The wallet issued the codes, so it keeps them (the
terminal never does). TEST HOST.

What the wallet does is chosen by the code's last digit (docs/qr.md):
0, 7, 8, 9 paid at once; 1 "user paying" (09), paid at the PAID_AFTER-th query;
2 declined 51 (insufficient funds); 3 never answers the payment (09 to queries, a cancel
closes it); 4 user paying forever (the terminal cancels at its timeout); 5 user paying,
and the customer confirms just as the cancel arrives (the cancel is answered Q2 "already
paid": the terminal refunds); 6 code invalid (Q1).
Messages (protocol doc §12): 0200 60.1 60 pay, 0200 60.1 61 query, 0400/0401 60.1 60
cancel (the reversal of the pay), 0220/0221 60.1 63 refund (a repeat is answered from the
recorded refund, never refunded twice).
"""
from __future__ import annotations

import logging
from datetime import datetime

from firmware.qrpay import CODE_FIELD, MSG_PAY, MSG_QUERY, MSG_REFUND
from firmware.sim import acquirer as host  # it imports this module: use it at call time only
from firmware.wallet import (
    ALREADY_PAID, CODE_INVALID, ORDER_CLOSED, PAID, USER_PAYING, identify, mask_code,
)

__all__ = ["install", "SCHEMA", "PAID_AFTER", "BEHAVIOUR"]

log = logging.getLogger("kpos.sim.wallet")

PAID_AFTER = 2  # queries before a "1" code is paid
BEHAVIOUR = {"0": "paid", "1": "paid_later", "2": "declined", "3": "silent", "4": "paying",
             "5": "paid_at_cancel", "6": "invalid", "7": "paid", "8": "paid", "9": "paid"}
RC_NOT_FOUND, RC_NOTHING_TO_REFUND, RC_OVER_AMOUNT, RC_LOW_FUNDS = "25", "12", "61", "51"
_ECHO = ("3", "4", "11", "12", "13", "41", "42", "49")

SCHEMA = """
CREATE TABLE IF NOT EXISTS wallet_orders (
    id INTEGER PRIMARY KEY, tid TEXT NOT NULL, batch TEXT NOT NULL, stan TEXT NOT NULL,
    date TEXT NOT NULL, wallet TEXT NOT NULL, code TEXT NOT NULL, code_masked TEXT NOT NULL,
    amount INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('PAYING', 'PAID', 'DECLINED', 'CLOSED')),
    rc TEXT, rrn TEXT, auth_code TEXT, polls INTEGER NOT NULL DEFAULT 0,
    cancels INTEGER NOT NULL DEFAULT 0, refunded INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, UNIQUE (tid, batch, stan));
CREATE TABLE IF NOT EXISTS wallet_refunds (
    id INTEGER PRIMARY KEY, tid TEXT NOT NULL, stan TEXT NOT NULL, date TEXT NOT NULL,
    batch TEXT NOT NULL, order_id INTEGER, amount INTEGER NOT NULL, rc TEXT NOT NULL,
    rrn TEXT, auth_code TEXT, repeats INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL,
    UNIQUE (tid, stan, date));
"""


def install(sim) -> None:
    """Register the handlers on `sim` (firmware.sim.acquirer.AcquirerSimulator)."""
    wallet = _Wallet(sim)
    sim.route("0200", MSG_PAY, wallet.pay)
    sim.route("0200", MSG_QUERY, wallet.query)
    for mti in ("0400", "0401"):
        sim.route(mti, MSG_PAY, wallet.cancel)
    for mti in ("0220", "0221"):
        sim.route(mti, MSG_REFUND, wallet.refund)


class _Wallet:
    """The simulated wallet (ledger thread only)."""

    def __init__(self, sim):
        self._sim = sim
        self._ready = False

    @property
    def _ledger(self):
        if not self._ready:  # the ledger opens at sim.start(), after install()
            self._sim.ledger.ensure(SCHEMA)
            self._ready = True
        return self._sim.ledger

    def pay(self, req: dict, now: datetime) -> dict | None:
        resp, tid = host.echo(req, _ECHO), req["41"]
        if tid not in self._sim.catalog.terminal_keys:
            return {**resp, "39": host.RC_BAD_TERMINAL}
        if self._order(tid, host.batch_of(req), req["11"]) is not None:
            return {**resp, "39": host.RC_DUPLICATE}
        code = req.get(CODE_FIELD, "")
        wallet = identify(code)
        behaviour = BEHAVIOUR[code[-1]] if wallet else "invalid"
        order = self._new_order(req, now, wallet.name if wallet else "", "PAYING")
        log.info("wallet: pay STAN %s code %s amount %s: %s", req["11"], mask_code(code),
                 req["4"], behaviour)
        if behaviour == "paid":
            return {**resp, **self._paid(order)}
        if behaviour in ("declined", "invalid"):
            rc = RC_LOW_FUNDS if behaviour == "declined" else CODE_INVALID
            return {**resp, **self._decided(order, rc, "DECLINED", behaviour)}
        if behaviour == "silent":
            return None
        return {**resp, "39": USER_PAYING}

    def query(self, req: dict, now: datetime) -> dict:
        resp, f61 = host.echo(req, _ECHO), req.get("61", "")
        order = self._order(req["41"], f61[:6], f61[6:12])
        if order is None:
            return {**resp, "39": RC_NOT_FOUND}
        if order["status"] == "PAYING":
            polls = order["polls"] + 1
            self._update(order["id"], polls=polls)
            if BEHAVIOUR[order["code"][-1]] == "paid_later" and polls >= PAID_AFTER:
                return {**resp, **self._paid(order)}
        return {**resp, **self._answer(self._order_by_id(order["id"]))}

    def cancel(self, req: dict, now: datetime) -> dict:
        resp = host.echo(req, ("3", "4", "11", "41", "42"))
        order = self._order(req["41"], host.batch_of(req), req["11"])
        if order is None:  # the payment never arrived: close it, so a late one is refused
            order = self._new_order(req, now, "", "CLOSED")
        self._update(order["id"], cancels=order["cancels"] + 1)
        log.info("wallet: cancel %s of STAN %s (%s)", req["t"], req["11"], order["status"])
        if order["status"] == "PAYING" and BEHAVIOUR[order["code"][-1]] == "paid_at_cancel":
            self._paid(order)
            order = self._order_by_id(order["id"])
        if order["status"] == "PAID":
            return {**resp, "39": ALREADY_PAID, "37": order["rrn"], "38": order["auth_code"]}
        if order["status"] == "PAYING":
            self._update(order["id"], status="CLOSED")
        return {**resp, "39": PAID}

    def refund(self, req: dict, now: datetime) -> dict:
        resp, tid = host.echo(req, ("3", "4", "11", "41", "42", "49")), req["41"]
        date, f61 = req.get("13") or host.mmdd(now), req.get("61", "")
        recorded = self._ledger.db.execute(
            "SELECT id, rc, rrn, auth_code FROM wallet_refunds WHERE tid = ? AND stan = ? AND date = ?",
            (tid, req["11"], date)).fetchone()
        if recorded is not None:
            with self._ledger.tx() as db:
                db.execute("UPDATE wallet_refunds SET repeats = repeats + 1 WHERE id = ?", (recorded[0],))
            return {**resp, **_fields(*recorded[1:])}
        order = self._order(tid, f61[:6], f61[6:12])
        amount = int(req["4"])
        rc = (RC_NOT_FOUND if order is None else RC_NOTHING_TO_REFUND if order["status"] != "PAID"
              else RC_OVER_AMOUNT if order["refunded"] + amount > order["amount"] else PAID)
        auth = self._ledger.record("qr_refund", tid=tid, stan=req["11"], date=date,
                                   batch=host.batch_of(req), pan=order["code"] if order else "",
                                   amount=amount, rc=rc, reason=f"wallet refund: {rc}",
                                   money="none")
        with self._ledger.tx() as db:
            db.execute("INSERT INTO wallet_refunds (tid, stan, date, batch, order_id, amount, rc, "
                       "rrn, auth_code, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (tid, req["11"], date, host.batch_of(req), order and order["id"], amount, rc,
                        auth.rrn, auth.auth_code, now.isoformat(timespec="seconds")))
            if rc == PAID:
                db.execute("UPDATE wallet_orders SET refunded = refunded + ? WHERE id = ?",
                           (amount, order["id"]))
        log.info("wallet: refund STAN %s of order STAN %s amount %d: %s", req["11"], f61[6:12],
                 amount, rc)
        return {**resp, **_fields(rc, auth.rrn, auth.auth_code)}

    # ---- orders ----

    def _new_order(self, req: dict, now: datetime, wallet: str, status: str) -> dict:
        code, stamp = req.get(CODE_FIELD, ""), now.isoformat(timespec="seconds")
        with self._ledger.tx() as db:
            order_id = db.execute(
                "INSERT INTO wallet_orders (tid, batch, stan, date, wallet, code, code_masked, "
                "amount, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (req["41"], host.batch_of(req), req["11"], req.get("13") or host.mmdd(now), wallet, code,
                 mask_code(code), int(req["4"]), status, stamp, stamp)).lastrowid
        return self._order_by_id(order_id)

    def _paid(self, order: dict) -> dict:
        return self._decided(order, PAID, "PAID", "paid")

    def _decided(self, order: dict, rc: str, status: str, reason: str) -> dict:
        """Record the order's final decision in the ledger and the order; its answer fields."""
        auth = self._ledger.record("qr_sale", tid=order["tid"], stan=order["stan"],
                                   date=order["date"], batch=order["batch"], pan=order["code"],
                                   amount=order["amount"], rc=rc, reason=f"wallet: {reason}",
                                   money="none")
        self._update(order["id"], status=status, rc=rc, rrn=auth.rrn, auth_code=auth.auth_code)
        return _fields(rc, auth.rrn, auth.auth_code)

    def _answer(self, order: dict) -> dict:
        if order["status"] == "PAYING":
            return {"39": USER_PAYING}
        if order["status"] == "CLOSED":
            return {"39": ORDER_CLOSED}
        return _fields(order["rc"], order["rrn"], order["auth_code"])

    def _order(self, tid: str, batch: str, stan: str) -> dict | None:
        return self._one("tid = ? AND batch = ? AND stan = ?", (tid, batch, stan))

    def _order_by_id(self, order_id: int) -> dict:
        return self._one("id = ?", (order_id,))

    def _one(self, where: str, args: tuple) -> dict | None:
        db = self._ledger.db
        cur = db.execute(f"SELECT * FROM wallet_orders WHERE {where}", args)
        row = cur.fetchone()
        return dict(zip([c[0] for c in cur.description], row)) if row else None

    def _update(self, order_id: int, **columns) -> None:
        sets = ", ".join(f"{name} = ?" for name in columns)  # names from this module only
        with self._ledger.tx() as db:
            db.execute(f"UPDATE wallet_orders SET {sets}, updated_at = datetime('now', 'localtime') "
                       "WHERE id = ?", (*columns.values(), order_id))


def _fields(rc: str, rrn: str | None, auth_code: str | None) -> dict:
    """39, and 37 / 38 when there are."""
    return {"39": rc, **({"37": rrn} if rrn else {}), **({"38": auth_code} if auth_code else {})}
