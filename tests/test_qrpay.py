"""Wallet QR payments end to end over real TCP: QrPayment with a real journal on its worker,
the terminal's AcquirerLink and StoreAndForward, and the simulator's wallet (host_wallet).

Each wallet outcome (by the code's last digit, docs/qr.md) is checked in the journal and in
the simulator's ledger and wallet tables. The wallet's poll interval and timeout are short
(0.05 / 0.5 s): the product's own timing, not a wait. Store-and-forward runs only when a
test calls flush(), so what it sends is deterministic. Nothing sleeps.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from firmware.acquirer import messages
from firmware.acquirer.link import AcquirerLink
from firmware.bridge import Worker
from firmware.clock import FixedClock
from firmware.config import SafConfig, WalletConfig
from firmware.journal import Journal
from firmware.qrpay import PAID_LATE, QrPayment, payment_request, query_request, refund_advice
from firmware.saf import StoreAndForward
from firmware.sim import acquirer
from firmware.sim.acquirer import AcquirerSimulator, Faults
from firmware.sim.host_wallet import PAID_AFTER
from firmware.vault import Vault
from test_acquirer_sim import CATALOG, IDS, NOW, TID

WAIT = 20.0  # bound for a whole test; never reached when all is well
CNY = 156
WALLET = WalletConfig(limit=500_000, poll_interval=0.05, timeout=0.5)
SAF = SafConfig(retry_first=0.02, retry_max=0.1, expire_after=3600.0, batch=50)
RESPONSE_TIMEOUT = 0.3  # the link's: an unanswered request costs this much

# WeChat codes (18 digits, prefix 13): the last digit chooses the wallet's behaviour.
PAID, PAID_LATER, DECLINED, SILENT, PAYING, PAID_AT_CANCEL, INVALID = (
    f"13456789012345678{d}" for d in "0123456")
ALIPAY_PAID, UNIONPAY_PAID = "2812345678901230", "6212345678901234560"
CODES = (PAID, PAID_LATER, DECLINED, SILENT, PAYING, PAID_AT_CANCEL, INVALID, ALIPAY_PAID,
         UNIONPAY_PAID)


@pytest.fixture(autouse=True)
def qr_messages_carry_no_pan(monkeypatch):
    """The simulator checks field 2 of every 0200/0220 before routing; QR messages have no
    PAN. Until that check moves after the routing (asked of the lead), lift it here."""
    for mti in ("0200", "0220", "0221"):
        monkeypatch.setitem(acquirer.REQUIRED, mti,
                            tuple(f for f in acquirer.REQUIRED[mti] if f != "2"))


@pytest.fixture(autouse=True)
def no_code_in_logs(caplog, test_pans):
    caplog.set_level(logging.DEBUG)
    yield
    assert not [code for code in (*CODES, *test_pans) if code in caplog.text]


@dataclass
class Env:
    sim: AcquirerSimulator
    journal: Journal
    journal_path: object
    worker: Worker
    link: AcquirerLink
    saf: StoreAndForward
    progress: list[str] = field(default_factory=list)

    async def j(self, fn):
        return await self.worker.run(fn, self.journal)

    def qr(self, cfg: WalletConfig = WALLET) -> QrPayment:
        return QrPayment(self.link, self.j, IDS, cfg_wallet=cfg, saf=self.saf, now=lambda: NOW,
                         operator="02", currency=CNY, on_progress=self.progress.append)

    async def row(self, txn_id: int):
        return await self.j(lambda j: j.get(txn_id))

    async def ledger(self) -> list[tuple[str, str | None, int]]:
        """(kind, rc, amount) of every decision the host recorded for the terminal."""
        return [(a.kind, a.rc, a.amount) for a in await self.sim.in_ledger(lambda l: l.records(TID))]

    async def order(self, stan: int) -> dict:
        def read(ledger):
            cur = ledger.db.execute("SELECT * FROM wallet_orders WHERE tid = ? AND stan = ?",
                                    (TID, f"{stan:06d}"))
            return dict(zip([c[0] for c in cur.description], cur.fetchone()))
        return await self.sim.in_ledger(read)

    def journal_bytes(self) -> bytes:
        return b"".join(p.read_bytes() for p in self.journal_path.parent.glob("journal.db*"))


@asynccontextmanager
async def env(tmp_path):
    sim = AcquirerSimulator(CATALOG, tmp_path / "acquirer.db", clock=lambda: NOW)
    await sim.start()
    worker = Worker("journal")
    journal_path = tmp_path / "journal.db"
    vault = Vault.open(tmp_path / "vault.key")
    journal = await worker.run(lambda: Journal(journal_path, vault, now=FixedClock(NOW).now))
    link = AcquirerLink("127.0.0.1", sim.port, connect_timeout=2.0,
                        response_timeout=RESPONSE_TIMEOUT)
    saf = StoreAndForward(link, lambda fn: worker.run(fn, journal), IDS, SAF, echo_interval=60.0,
                          now=lambda: NOW, on_status=lambda state: None, rng=lambda: 0.0)
    try:
        yield Env(sim, journal, journal_path, worker, link, saf)
    finally:
        await link.close()
        await sim.stop()
        await worker.run(journal.close)
        worker.shutdown()


def run(test):
    """Run `test(env)` on a fresh loop with a fresh simulator and journal."""
    def runner(tmp_path):
        async def main():
            async with asyncio.timeout(WAIT), env(tmp_path) as e:
                await test(e)
        asyncio.run(main())
    runner.__name__ = test.__name__
    return runner


# ---- messages ----

def test_payment_query_and_refund_messages_encode():
    pay = payment_request(IDS, stan=7, batch=3, amount=1234, currency=CNY, code=PAID, now=NOW)
    assert pay == {"t": "0200", "3": "000000", "4": "000000001234", "11": "000007",
                   "12": "103000", "13": "0514", "22": "031", "25": "00", "41": TID,
                   "42": IDS.merchant_id, "49": "156", "57": PAID, "60": "60000003000"}
    assert "2" not in pay
    query = query_request(pay, stan=8, batch=3, now=NOW)
    assert (query["11"], query["60"], query["61"], "57" in query) == (
        "000008", "61000003000", "0000030000070514", False)
    for msg in (pay, query):
        assert messages.decode(messages.encode(msg)) == msg
    cancel = messages.reversal_request(pay, "98")
    assert (cancel["t"], cancel["60"][:2], cancel["61"]) == ("0400", "60", "000003000007")


# ---- the wallet's outcomes ----

@run
async def test_paid_at_once(e: Env):
    outcome = await e.qr().pay(1500, PAID)
    assert (outcome.outcome, outcome.code, outcome.wallet, outcome.refunded) == (
        "approved", "00", "wechat", False)
    assert len(outcome.rrn) == 12 and len(outcome.auth_code) == 6
    row = await e.row(outcome.txn_id)
    assert (row.kind, row.status, row.amount, row.wallet, row.entry_mode, row.operator) == (
        "qr_sale", "APPROVED", 1500, "wechat", "031", "02")
    assert (row.masked_pan, row.rrn, row.auth_code) == (
        "134567********6780", outcome.rrn, outcome.auth_code)
    assert row.reversal_status == "CANCELLED"
    assert await e.ledger() == [("qr_sale", "00", 1500)]
    order = await e.order(row.stan)
    assert (order["status"], order["wallet"], order["rrn"]) == ("PAID", "wechat", outcome.rrn)
    assert PAID.encode() not in e.journal_bytes()  # the sealed request is gone, none in clear
    assert e.progress == []


@run
async def test_alipay_and_unionpay_codes(e: Env):
    qr = e.qr()
    alipay, unionpay = await qr.pay(700, ALIPAY_PAID), await qr.pay(800, UNIONPAY_PAID)
    assert [(o.outcome, o.wallet) for o in (alipay, unionpay)] == [
        ("approved", "alipay"), ("approved", "unionpay_qr")]
    assert [(await e.row(o.txn_id)).wallet for o in (alipay, unionpay)] == ["alipay", "unionpay_qr"]
    assert await e.ledger() == [("qr_sale", "00", 700), ("qr_sale", "00", 800)]


@run
async def test_user_paying_then_paid(e: Env):
    outcome = await e.qr().pay(2000, PAID_LATER)
    assert (outcome.outcome, outcome.code) == ("approved", "00")
    assert len(e.progress) == PAID_AFTER
    assert e.progress[0].startswith("Waiting for customer\n") and e.progress[0].endswith(" s left")
    assert await e.j(lambda j: j.count()) == 1  # queries make no journal row
    row = await e.row(outcome.txn_id)
    assert (row.status, row.rrn) == ("APPROVED", outcome.rrn)
    assert (await e.order(row.stan))["polls"] == PAID_AFTER
    assert await e.ledger() == [("qr_sale", "00", 2000)]


@run
async def test_declined_insufficient_funds(e: Env):
    outcome = await e.qr().pay(2500, DECLINED)
    assert (outcome.outcome, outcome.code, outcome.message) == (
        "declined", "51", "INSUFFICIENT FUNDS")
    row = await e.row(outcome.txn_id)
    assert (row.status, row.response_code, row.reversal_status) == ("DECLINED", "51", "CANCELLED")
    assert await e.ledger() == [("qr_sale", "51", 2500)]


@run
async def test_invalid_code(e: Env):
    outcome = await e.qr().pay(100, INVALID)
    assert (outcome.outcome, outcome.code, outcome.message) == ("declined", "Q1", "QR code invalid")
    assert (await e.row(outcome.txn_id)).status == "DECLINED"


@run
async def test_payment_never_answered_is_cancelled(e: Env):
    outcome = await e.qr().pay(3000, SILENT)
    assert (outcome.outcome, outcome.code, outcome.refunded) == ("cancelled", "00", False)
    row = await e.row(outcome.txn_id)
    assert (row.status, row.reversal_status) == ("REVERSED", "ACKED")
    assert (await e.order(row.stan))["status"] == "CLOSED"
    assert await e.ledger() == []  # nothing charged
    assert await e.j(lambda j: j.pending_reversals()) == []


@run
async def test_user_paying_forever_is_cancelled_at_the_timeout(e: Env):
    loop = asyncio.get_running_loop()
    start = loop.time()
    outcome = await e.qr().pay(3500, PAYING)
    assert loop.time() - start >= WALLET.timeout
    assert (outcome.outcome, outcome.message) == ("cancelled", "QR payment cancelled")
    row = await e.row(outcome.txn_id)
    assert (row.status, row.reversal_status) == ("REVERSED", "ACKED")
    order = await e.order(row.stan)
    assert (order["status"], order["cancels"]) == ("CLOSED", 1)
    assert order["polls"] >= 2 and len(e.progress) == order["polls"]
    assert await e.ledger() == []


@run
async def test_paid_as_the_cancel_arrives_is_refunded(e: Env):
    outcome = await e.qr().pay(4000, PAID_AT_CANCEL)
    assert (outcome.outcome, outcome.code, outcome.message, outcome.refunded) == (
        "cancelled", "Q2", PAID_LATE, True)
    payment = await e.row(outcome.txn_id)
    assert (payment.status, payment.reversal_status, payment.rrn) == (
        "APPROVED", "ACKED", outcome.rrn)
    [refund] = await e.j(lambda j: j.dependents(outcome.txn_id))
    assert (refund.kind, refund.status, refund.amount, refund.wallet, refund.offline_code) == (
        "qr_refund", "APPROVED", 4000, "wechat", None)
    assert (refund.advice_status, refund.original_rrn, refund.masked_pan) == (
        "PENDING", outcome.rrn, payment.masked_pan)
    assert await e.saf.flush()  # the refund's 0220 goes through the advice queue
    assert (await e.row(refund.id)).advice_status == "ACKED"
    assert await e.ledger() == [("qr_sale", "00", 4000), ("qr_refund", "00", 4000)]
    assert (await e.order(payment.stan))["refunded"] == 4000


@run
async def test_refund_repeat_is_not_refunded_twice(e: Env):
    e.sim.faults.set_to(Faults(drop=True, times=1, mti="022"))
    outcome = await e.qr().pay(4100, PAID_AT_CANCEL)
    assert not await e.saf.flush()  # the 0230 is lost: the refund stays queued
    assert await e.saf.flush()  # 0221 answered from the recorded refund
    [refund] = await e.j(lambda j: j.dependents(outcome.txn_id))
    assert refund.advice_status == "ACKED"
    assert await e.ledger() == [("qr_sale", "00", 4100), ("qr_refund", "00", 4100)]
    assert (await e.order((await e.row(outcome.txn_id)).stan))["refunded"] == 4100


@run
async def test_unanswered_cancel_is_queued_and_sent_later(e: Env):
    e.sim.faults.set_to(Faults(drop=True, mti="04"))
    outcome = await e.qr().pay(4500, PAYING)
    assert (outcome.outcome, outcome.code) == ("no_response", "98")
    assert outcome.message.startswith("Cancel pending")
    [pending] = await e.j(lambda j: j.pending_reversals())
    assert (pending.txn_id, pending.attempts, pending.reason_code) == (outcome.txn_id, 1, "98")
    e.sim.faults.set_to(Faults())
    assert await e.saf.flush()  # an 0401 repeat
    row = await e.row(outcome.txn_id)
    assert (row.status, row.reversal_status) == ("REVERSED", "ACKED")
    assert (await e.order(row.stan))["cancels"] == 2
    assert await e.ledger() == []


@run
async def test_late_payment_found_by_a_queued_cancel_is_refunded_next_time(e: Env):
    e.sim.faults.set_to(Faults(drop=True, times=1, mti="04"))
    qr = e.qr()
    first = await qr.pay(5000, PAID_AT_CANCEL)  # the wallet takes the money, the answer is lost
    assert first.outcome == "no_response"
    assert await e.saf.flush()  # the queue's 0401 is answered Q2: acknowledged, REVERSED
    assert (await e.row(first.txn_id)).status == "REVERSED"
    second = await qr.pay(600, PAID)  # before it, the late payment is refunded
    assert second.outcome == "approved"
    payment = await e.row(first.txn_id)
    assert payment.status == "APPROVED"
    [refund] = await e.j(lambda j: j.dependents(first.txn_id))
    assert (refund.kind, refund.amount) == ("qr_refund", 5000)
    assert await qr.refund_paid_late() == []  # once only
    assert await e.saf.flush()
    assert sorted(await e.ledger()) == [("qr_refund", "00", 5000), ("qr_sale", "00", 600),
                                        ("qr_sale", "00", 5000)]


# ---- refused before anything is sent ----

@pytest.mark.parametrize("amount, code, message", [
    (500_001, PAID, "Over QR limit 5,000.00"),
    (100, "9912345678901234", "Unknown QR code"),
    (100, "13456789012345678x", "Unknown QR code"),
])
def test_refusals_send_nothing(tmp_path, amount, code, message):
    async def main():
        async with asyncio.timeout(WAIT), env(tmp_path) as e:
            outcome = await e.qr().pay(amount, code)
            assert (outcome.outcome, outcome.message, outcome.txn_id) == ("declined", message, None)
            assert e.sim.requests_seen == 0
            assert await e.j(lambda j: j.count()) == 0
            assert await e.ledger() == []
    asyncio.run(main())


@run
async def test_host_down_sends_nothing(e: Env):
    await e.sim.go_down()
    outcome = await e.qr().pay(100, PAID)
    assert (outcome.outcome, outcome.message) == ("not_sent", "Host unreachable")
    row = await e.row(outcome.txn_id)  # recorded before the send, then nothing left the box
    assert (row.status, row.reversal_status) == ("FAILED", "CANCELLED")
    assert await e.j(lambda j: j.pending_reversals()) == []


def test_refund_advice_names_the_payment():
    from firmware.journal import TxnRecord
    payment = TxnRecord(id=1, terminal_id=TID, kind="qr_sale", stan=7, batch=3, amount=900,
                        currency=CNY, status="APPROVED", operator="01", masked_pan=None,
                        entry_mode="031", aid=None, app_label=None, arqc=None,
                        created_at="2026-05-13T23:59:59", updated_at="", response_code="Q2",
                        rrn=None, auth_code=None, failure=None, printed_merchant_at=None,
                        printed_customer_at=None, tvr=None, tsi=None, cvm=None,
                        cryptogram_type=None, offline_code=None, reversal_status="ACKED",
                        advice_status=None)
    advice = refund_advice(IDS, payment, rrn="000000000042", stan=9, batch=4, now=NOW)
    assert advice == {"t": "0220", "3": "200000", "4": "000000000900", "11": "000009",
                      "12": "103000", "13": "0514", "22": "031", "25": "00",
                      "37": "000000000042", "39": "00", "41": TID, "42": IDS.merchant_id,
                      "49": "156", "60": "63000004000", "61": "0000030000070513"}
    assert messages.decode(messages.encode(advice)) == advice
    assert "37" not in refund_advice(IDS, payment, rrn=None, stan=9, batch=4, now=NOW)
