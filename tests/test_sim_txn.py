"""The simulator host of the full card transaction set (firmware/sim/host_txn.py) and the
ledger's holds and reversals, over real TCP on 127.0.0.1 through AcquirerLink.

Each test runs its own simulator on a fresh ledger, signs on through the link and builds
every request with txn_messages.txn_request (chip kinds carry a real ARQC read from the
card emulator, PIN blocks are under the PIK the 0810 delivered).
"""
from __future__ import annotations

import asyncio
import itertools
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import pytest

from firmware import keys
from firmware.acquirer import messages
from firmware.acquirer.link import AcquirerLink
from firmware.acquirer.messages import reversal_request
from firmware.acquirer.txn_messages import parse_balance, txn_request
from firmware.flows.types import OriginalRef
from firmware.sim.acquirer import AcquirerSimulator
from firmware.txnkinds import KINDS
from test_acquirer_sim import CATALOG, CNY, IDS, NOW, TMK, UNKNOWN_PAN, chip_card, running

TIMEOUT = 2.0
BATCH = 1
DATE = NOW.strftime("%m%d")
APPROVE, VISA, LOW = "approve", "visa", "low_balance"


@dataclass
class Done:
    """A request and its answer."""

    req: dict
    resp: dict

    @property
    def rc(self) -> str:
        return self.resp["39"]

    def ref(self, **over) -> OriginalRef:
        """The OriginalRef a later void / refund / completion names this one by."""
        req, resp = self.req, self.resp
        ref = OriginalRef(kind="", stan=int(req["11"]), batch=int(req["60"][2:8]),
                          rrn=resp["37"], date=req["13"], auth_code=resp.get("38", ""),
                          amount=int(req.get("4", "0")))
        return replace(ref, **over)


class Pos:
    """A test terminal on an AcquirerLink: signed on, fresh STANs, real card reads."""

    def __init__(self, sim: AcquirerSimulator, link: AcquirerLink):
        self.sim, self.link = sim, link
        self.stans = itertools.count(1)
        self.pik = b""

    async def sign_on(self) -> None:
        resp = await self.link.exchange(messages.signon_request(
            IDS, stan=next(self.stans), batch=BATCH, now=NOW))
        assert resp["39"] == "00"
        self.pik = keys.session_keys_from_working(TMK, messages.parse_working_keys(resp)).pik

    def request(self, kind: str, name: str, amount: int, *, pin: str | None = "catalog",
                batch: int = BATCH, pan: str | None = None, **extra) -> dict:
        card = chip_card(name, amount, pan)
        block = None
        if KINDS[kind].card == "pin" and pin is not None:
            pin = CATALOG.cards[name].pin if pin == "catalog" else pin
            block = keys.pin_block_iso0(bytearray(pin.encode()), card.pan, self.pik)
        return txn_request(IDS, kind, stan=next(self.stans), batch=batch, amount=amount,
                           currency=CNY, card=card, pin_block=block, now=NOW, **extra)

    async def send(self, req: dict) -> Done:
        resp = await self.link.exchange(req)
        assert messages.match_response(req, resp) is None
        return Done(req, resp)

    async def run(self, kind: str, name: str, amount: int, **kw) -> Done:
        return await self.send(self.request(kind, name, amount, **kw))

    async def reverse(self, done: Done, repeat: bool = False) -> dict:
        resp = await self.link.exchange(reversal_request(done.req, "98", repeat=repeat))
        assert resp["t"] == "0410" and resp["39"] == "00"
        return resp

    async def balance(self, name: str) -> int:
        """The card's available balance in the ledger (minor units)."""
        return await self.sim.in_ledger(lambda ledger: ledger.balance(CATALOG.cards[name].pan))

    async def held(self, name: str) -> int:
        return await self.sim.in_ledger(lambda ledger: ledger.held(CATALOG.cards[name].pan))


@asynccontextmanager
async def pos(tmp_path):
    async with running(tmp_path) as sim:
        link = AcquirerLink("127.0.0.1", sim.port, connect_timeout=TIMEOUT,
                            response_timeout=TIMEOUT)
        terminal = Pos(sim, link)
        try:
            await terminal.sign_on()
            yield terminal
        finally:
            await link.close()


def run(test):
    """Run `test(pos)` against a fresh simulator."""
    def wrapper(tmp_path):
        async def main():
            async with pos(tmp_path) as p:
                await test(p)
        asyncio.run(main())
    wrapper.__name__ = test.__name__
    return wrapper


# --- void ------------------------------------------------------------------------------


@run
async def test_sale_then_void_restores_the_balance_and_a_second_void_is_refused(p):
    before = await p.balance(APPROVE)
    sale = await p.run("sale", APPROVE, 5000)
    assert sale.rc == "00" and await p.balance(APPROVE) == before - 5000
    void = await p.run("void", APPROVE, 5000, original=sale.ref())
    assert void.resp["t"] == "0210" and void.rc == "00"
    assert len(void.resp["37"]) == 12 and len(void.resp["38"]) == 6
    assert await p.balance(APPROVE) == before
    again = await p.run("void", APPROVE, 5000, original=sale.ref())
    assert again.rc == "12" and await p.balance(APPROVE) == before


@pytest.mark.parametrize("change, rc", [
    (dict(amount=4000), "64"),
    (dict(ref=dict(stan=999)), "25"),
    (dict(ref=dict(rrn="999999999999")), "25"),
    (dict(name=VISA), "12"),
    (dict(batch=2), "12"),
])
def test_void_refusals(tmp_path, change, rc):
    async def main():
        async with pos(tmp_path) as p:
            sale = await p.run("sale", APPROVE, 5000)
            after_sale = await p.balance(APPROVE)
            amount = change.get("amount", 5000)
            original = sale.ref(**change.get("ref", {}), amount=amount)
            void = await p.run("void", change.get("name", APPROVE), amount, original=original,
                               batch=change.get("batch", BATCH))
            assert void.rc == rc and "38" not in void.resp
            assert await p.balance(APPROVE) == after_sale
            records = await p.sim.in_ledger(lambda ledger: ledger.records(IDS.terminal_id))
            assert records[-1].kind == "void" and records[-1].rc == rc
    asyncio.run(main())


@run
async def test_void_of_a_declined_sale_is_not_found(p):
    sale = await p.run("sale", APPROVE, 5000, pin="0000")
    assert sale.rc == "55"
    void = await p.run("void", APPROVE, 5000, original=sale.ref(auth_code=""))
    assert void.rc == "25"


# --- refund ----------------------------------------------------------------------------


@run
async def test_partial_refunds_up_to_the_original_then_61(p):
    sale = await p.run("sale", APPROVE, 5000)
    after_sale = await p.balance(APPROVE)
    keyed = OriginalRef(rrn=sale.resp["37"], date=DATE)  # by RRN, as a supervisor keys it
    for n, amount in enumerate((2000, 2500), start=1):
        refund = await p.run("refund", APPROVE, amount, original=keyed)
        assert refund.rc == "00"
    assert await p.balance(APPROVE) == after_sale + 4500
    over = await p.run("refund", APPROVE, 501, original=keyed)
    assert over.rc == "61"
    rest = await p.run("refund", APPROVE, 500, original=keyed)
    assert rest.rc == "00" and await p.balance(APPROVE) == after_sale + 5000


@pytest.mark.parametrize("case, rc", [
    ("above_original", "64"), ("unknown_rrn", "25"), ("other_card", "12"),
    ("voided", "12"), ("wrong_date", "25"),
])
def test_refund_refusals(tmp_path, case, rc):
    async def main():
        async with pos(tmp_path) as p:
            sale = await p.run("sale", APPROVE, 5000)
            ref, name, amount = OriginalRef(rrn=sale.resp["37"], date=DATE), APPROVE, 1000
            if case == "above_original":
                amount = 5001
            elif case == "unknown_rrn":
                ref = replace(ref, rrn="999999999999")
            elif case == "other_card":
                name = VISA
            elif case == "voided":
                assert (await p.run("void", APPROVE, 5000, original=sale.ref())).rc == "00"
            elif case == "wrong_date":
                ref = replace(ref, date="0101")
            before = await p.balance(name)
            refund = await p.run("refund", name, amount, original=ref)
            assert refund.rc == rc and await p.balance(name) == before
    asyncio.run(main())


# --- pre-authorisation family ------------------------------------------------------------


@run
async def test_preauth_holds_and_cancel_releases(p):
    before = await p.balance(APPROVE)
    pre = await p.run("preauth", APPROVE, 30000)
    assert pre.resp["t"] == "0110" and pre.rc == "00" and len(pre.resp["38"]) == 6
    assert await p.balance(APPROVE) == before - 30000 and await p.held(APPROVE) == 30000
    wrong = await p.run("preauth_cancel", APPROVE, 29999, original=pre.ref(amount=0))
    assert wrong.rc == "64" and await p.held(APPROVE) == 30000
    cancel = await p.run("preauth_cancel", APPROVE, 30000, original=pre.ref())
    assert cancel.resp["t"] == "0110" and cancel.rc == "00"
    assert await p.balance(APPROVE) == before and await p.held(APPROVE) == 0
    again = await p.run("preauth_cancel", APPROVE, 30000, original=pre.ref())
    assert again.rc == "12"
    other_code = f"{(int(pre.resp['38']) + 1) % 10**6:06d}"
    unknown = await p.run("preauth_cancel", APPROVE, 30000, original=pre.ref(auth_code=other_code))
    assert unknown.rc == "25"


@run
async def test_completion_110_percent_ok_120_refused_then_completion_void(p):
    before = await p.balance(APPROVE)
    pre = await p.run("preauth", APPROVE, 10000)
    too_much = await p.run("completion", APPROVE, 12000, original=pre.ref(amount=0))
    assert too_much.rc == "61" and await p.held(APPROVE) == 10000
    done = await p.run("completion", APPROVE, 11000, original=pre.ref())
    assert done.rc == "00" and await p.held(APPROVE) == 0
    assert await p.balance(APPROVE) == before - 11000
    twice = await p.run("completion", APPROVE, 11000, original=pre.ref())
    assert twice.rc == "12" and await p.balance(APPROVE) == before - 11000
    void = await p.run("completion_void", APPROVE, 11000, original=done.ref())
    assert void.rc == "00" and await p.balance(APPROVE) == before
    again = await p.run("completion_void", APPROVE, 11000, original=done.ref())
    assert again.rc == "12" and await p.balance(APPROVE) == before


@run
async def test_a_hold_limits_later_sales_and_a_completion_by_another_card_is_not_found(p):
    assert (await p.run("preauth", LOW, 800)).rc == "00"
    assert (await p.run("sale", LOW, 500)).rc == "51"
    assert (await p.run("sale", LOW, 200)).rc == "00"
    pre = await p.run("preauth", APPROVE, 1000)
    assert (await p.run("completion", VISA, 1000, original=pre.ref())).rc == "25"


@run
async def test_preauth_checks_the_pin_like_a_sale(p):
    before = await p.balance(APPROVE)
    wrong = await p.run("preauth", APPROVE, 1000, pin="0000")
    assert wrong.rc == "55" and await p.balance(APPROVE) == before
    assert wrong.resp["55"][:1] == bytes.fromhex("91")  # the ARPC, as a sale gets


@run
async def test_completion_advice_is_idempotent(p):
    before = await p.balance(APPROVE)
    pre = await p.run("preauth", APPROVE, 10000)
    advice = p.request("completion", APPROVE, 10500, original=pre.ref(), advice=True)
    first = await p.send(advice)
    assert first.resp["t"] == "0230" and first.rc == "00"
    repeat = await p.send({**advice, "t": "0221"})
    assert (repeat.rc, repeat.resp["37"], repeat.resp["38"]) == (
        "00", first.resp["37"], first.resp["38"])
    assert await p.balance(APPROVE) == before - 10500 and await p.held(APPROVE) == 0
    records = await p.sim.in_ledger(lambda ledger: ledger.records(IDS.terminal_id))
    assert records[-1].kind == "completion_advice" and records[-1].repeats == 1


# --- balance inquiry, repayment ------------------------------------------------------------


@run
async def test_balance_is_the_catalog_balance_minus_approved_debits(p):
    await p.run("sale", APPROVE, 1234)
    await p.run("sale", APPROVE, 99, pin="0000")  # declined: not in the balance
    answer = await p.run("balance", APPROVE, 0)
    assert answer.rc == "00" and "4" not in answer.resp
    assert parse_balance(answer.resp["54"]) == (CNY, CATALOG.cards[APPROVE].balance - 1234)
    wrong = await p.run("balance", APPROVE, 0, pin="0000")
    assert wrong.rc == "55" and "54" not in wrong.resp


@run
async def test_repayment_moves_money_between_two_catalog_cards(p):
    payer, payee = await p.balance(APPROVE), await p.balance(VISA)
    target = CATALOG.cards[VISA].pan
    done = await p.run("repayment", APPROVE, 30000, target_pan=target)
    assert done.rc == "00"
    assert (await p.balance(APPROVE), await p.balance(VISA)) == (payer - 30000, payee + 30000)
    unknown = await p.run("repayment", APPROVE, 100, target_pan=UNKNOWN_PAN)
    self_pay = await p.run("repayment", APPROVE, 100, target_pan=CATALOG.cards[APPROVE].pan)
    wrong_pin = await p.run("repayment", APPROVE, 100, target_pan=target, pin="0000")
    assert (unknown.rc, self_pay.rc, wrong_pin.rc) == ("14", "12", "55")
    assert (await p.balance(APPROVE), await p.balance(VISA)) == (payer - 30000, payee + 30000)


# --- reversals -------------------------------------------------------------------------


# Each builds the request of its kind (its original approved first), not yet sent.
async def _sale(p):
    return p.request("sale", APPROVE, 5000)


async def _void(p):
    sale = await p.run("sale", APPROVE, 5000)
    return p.request("void", APPROVE, 5000, original=sale.ref())


async def _preauth(p):
    return p.request("preauth", APPROVE, 7000)


async def _preauth_cancel(p):
    pre = await p.run("preauth", APPROVE, 7000)
    return p.request("preauth_cancel", APPROVE, 7000, original=pre.ref())


async def _completion(p):
    pre = await p.run("preauth", APPROVE, 7000)
    return p.request("completion", APPROVE, 8000, original=pre.ref())


async def _completion_void(p):
    done = await p.send(await _completion(p))
    return p.request("completion_void", APPROVE, 8000, original=done.ref())


async def _repayment(p):
    return p.request("repayment", APPROVE, 6000, target_pan=CATALOG.cards[VISA].pan)


SETUPS = {"sale": _sale, "void": _void, "preauth": _preauth, "preauth_cancel": _preauth_cancel,
          "completion": _completion, "completion_void": _completion_void,
          "repayment": _repayment}


async def accounts(p) -> tuple[int, int, int]:
    return await p.balance(APPROVE), await p.balance(VISA), await p.held(APPROVE)


def test_every_reversible_card_kind_has_a_reversal_test():
    assert set(SETUPS) == {k for k, v in KINDS.items() if v.reversible and v.card != "none"}


@pytest.mark.parametrize("kind", SETUPS)
def test_reversal_undoes_each_kind_exactly_once(tmp_path, kind):
    async def main():
        async with pos(tmp_path) as p:
            req = await SETUPS[kind](p)
            before = await accounts(p)
            done = await p.send(req)
            assert done.rc == "00" and await accounts(p) != before
            await p.reverse(done)
            assert await accounts(p) == before
            await p.reverse(done, repeat=True)
            assert await accounts(p) == before
            count = await p.sim.in_ledger(lambda ledger: ledger.reversal_count(
                IDS.terminal_id, req["11"], DATE))
            assert count == 2
    asyncio.run(main())


@run
async def test_late_reversal_of_a_voided_sale_credits_nothing_more(p):
    before = await p.balance(APPROVE)
    sale = await p.run("sale", APPROVE, 5000)
    void = await p.run("void", APPROVE, 5000, original=sale.ref())
    await p.reverse(sale)
    assert await p.balance(APPROVE) == before
    await p.reverse(void)  # the void's reversal after its sale's: nothing left to undo
    assert await p.balance(APPROVE) == before


@run
async def test_late_reversal_of_a_refunded_sale_credits_only_the_rest(p):
    before = await p.balance(APPROVE)
    sale = await p.run("sale", APPROVE, 5000)
    refund = await p.run("refund", APPROVE, 2000, original=OriginalRef(rrn=sale.resp["37"]))
    assert refund.rc == "00"
    await p.reverse(sale)
    assert await p.balance(APPROVE) == before


@run
async def test_reversed_completion_holds_again_and_can_be_redone(p):
    pre = await p.run("preauth", APPROVE, 7000)
    done = await p.run("completion", APPROVE, 7000, original=pre.ref())
    await p.reverse(done)
    assert await p.held(APPROVE) == 7000
    redo = await p.run("completion", APPROVE, 7000, original=pre.ref())
    assert redo.rc == "00" and await p.held(APPROVE) == 0


# --- common checks ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["void", "refund", "preauth", "preauth_cancel", "completion",
                                  "completion_void", "repayment"])
def test_unknown_terminal_03_and_duplicate_stan_94(tmp_path, kind):
    async def main():
        async with pos(tmp_path) as p:
            sale = await p.run("sale", APPROVE, 5000)
            pre = await p.run("preauth", APPROVE, 5000)
            extra = {"void": dict(original=sale.ref()),
                     "refund": dict(original=OriginalRef(rrn=sale.resp["37"])),
                     "preauth_cancel": dict(original=pre.ref()),
                     "completion": dict(original=pre.ref()),
                     "completion_void": dict(original=sale.ref()),
                     "repayment": dict(target_pan=CATALOG.cards[VISA].pan)}.get(kind, {})
            req = p.request(kind, APPROVE, 5000, **extra)
            other = await p.send({**req, "41": "99999999"})
            assert other.rc == "03"
            duplicate = await p.send({**req, "11": sale.req["11"]})
            assert duplicate.rc == "94"
    asyncio.run(main())


@pytest.mark.parametrize("kind, field", [("refund", "37"), ("void", "61"),
                                         ("completion", "38"), ("repayment", "103")])
def test_missing_field_answers_30_and_records_nothing(tmp_path, kind, field):
    async def main():
        async with pos(tmp_path) as p:
            sale = await p.run("sale", APPROVE, 5000)
            extra = {"refund": dict(original=OriginalRef(rrn=sale.resp["37"])),
                     "void": dict(original=sale.ref()),
                     "completion": dict(original=sale.ref()),
                     "repayment": dict(target_pan=CATALOG.cards[VISA].pan)}[kind]
            req = p.request(kind, APPROVE, 5000, **extra)
            del req[field]
            answer = await p.send(req)
            assert answer.rc == "30"
            records = await p.sim.in_ledger(lambda ledger: ledger.records(IDS.terminal_id))
            assert [r.kind for r in records] == ["sale"]
    asyncio.run(main())


@run
async def test_unknown_card_gets_14(p):
    sale = await p.run("sale", APPROVE, 5000)
    void = await p.run("void", APPROVE, 5000, original=sale.ref(), pan=UNKNOWN_PAN)
    assert void.rc == "14"


def test_logs_never_show_a_clear_pan(tmp_path, caplog):
    caplog.set_level("DEBUG")

    async def main():
        async with pos(tmp_path) as p:
            await p.run("repayment", APPROVE, 100, target_pan=CATALOG.cards[VISA].pan)
            await p.run("repayment", APPROVE, 100, target_pan=UNKNOWN_PAN)
    asyncio.run(main())
    for pan in (CATALOG.cards[APPROVE].pan, CATALOG.cards[VISA].pan, UNKNOWN_PAN):
        assert pan not in caplog.text
