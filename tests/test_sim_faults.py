"""The acquirer simulator's link faults, fault filters, network switch and script verbs.

Each fault is driven over real TCP on 127.0.0.1: through the terminal's AcquirerLink (what
the terminal makes of it: NotSent / NoResponse / an answer) or through raw framed streams
(the exact bytes), and each test ends by checking what the simulator's ledger holds.
Helpers (Terminal, running, signed_on, chip cards) come from tests/test_acquirer_sim.py.
"""
import asyncio

import pytest

from firmware.acquirer import messages
from firmware.acquirer.link import AcquirerLink, NoResponse, NotSent
from firmware.cli import main as kpos
from firmware.journal import Journal
from firmware.sim.acquirer import Faults, next_stan
from firmware.sim.runner import sim_session
from firmware.sim.script import ScriptError, parse_script, run_script
from scenario import run_scenario
from test_acquirer_sim import (
    ANSWER_TIMEOUT, CATALOG, IDS, NOW, TID, Terminal, balance, running, signed_on,
)

RESPONSE_TIMEOUT = 0.5  # the link's, where a fault means no answer ever comes
FULL = CATALOG.cards["approve"].balance


def link_to(sim) -> AcquirerLink:
    return AcquirerLink("127.0.0.1", sim.port, connect_timeout=ANSWER_TIMEOUT,
                        response_timeout=RESPONSE_TIMEOUT)


async def rows(sim) -> list[tuple[str, str, str | None]]:
    """(kind, STAN, response code) of every decision the simulator recorded."""
    return [(r.kind, r.stan, r.rc) for r in await sim.in_ledger(lambda l: l.records(TID))]


async def read_until_eof(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), ANSWER_TIMEOUT)


# --- the knobs alone ---------------------------------------------------------------------


@pytest.mark.parametrize("text,want", [
    ("none", Faults()),
    ("drop", Faults(drop=True)),
    ("delay 2.5", Faults(delay=2.5)),
    ("wrong_stan times 1 mti 0220", Faults(wrong_stan=True, times=1, mti="0220")),
    ("mti 02 close_before_read answer_twice",
     Faults(close_before_read=True, answer_twice=True, mti="02")),
    ("close_mid_frame disconnect garble times 3",
     Faults(close_mid_frame=True, disconnect=True, garble=True, times=3)),
])
def test_fault_words_parse(text, want):
    assert Faults.parse(text.split()) == want


@pytest.mark.parametrize("text,message", [
    ("", "name a knob"),
    ("explode", "unknown knob 'explode'"),
    ("none drop", "unknown knob 'none'"),
    ("delay", "delay wants seconds"),
    ("delay -1", "delay wants seconds"),
    ("delay nan", "delay wants seconds"),
    ("times 0", "times wants a count"),
    ("drop times x", "times wants a count"),
    ("mti 02a", "mti wants 1-4 MTI digits"),
    ("mti 02200", "mti wants 1-4 MTI digits"),
])
def test_bad_fault_words_are_refused_by_name(text, message):
    with pytest.raises(ValueError, match=message):
        Faults.parse(text.split())


def test_take_applies_to_matching_mtis_counts_down_then_resets_everything():
    faults = Faults.parse("drop delay 1 times 2 mti 022".split())
    assert faults.take("0200") == Faults()  # not an advice: no fault, not counted
    assert faults.times == 2
    first = faults.take("0220")
    assert first.drop and first.delay == 1 and faults.times == 1
    assert faults.take("0221").drop
    assert faults == Faults()  # reset in place after the last counted request
    assert faults.take("0221") == Faults()


def test_set_to_changes_the_object_in_place():
    faults = Faults(drop=True)
    held = faults
    faults.set_to(Faults(garble=True, times=1))
    assert held == Faults(garble=True, times=1)


@pytest.mark.parametrize("stan,after", [("000001", "000002"), ("999998", "999999"),
                                        ("999999", "000001")])
def test_next_stan_wraps_within_six_digits(stan, after):
    assert next_stan(stan) == after


def test_kpos_acquirer_refuses_bad_fault_words(capsys):
    assert kpos(["acquirer", "--fault", "drop times 0"]) == 2
    assert "fault: times wants a count >= 1" in capsys.readouterr().err


# --- each fault: what the terminal sees, what the host recorded ------------------------------


def test_close_before_read_means_the_host_never_saw_it(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            sim.faults.set_to(Faults.parse("close_before_read times 1".split()))
            seen = sim.requests_seen
            link = link_to(sim)
            with pytest.raises(NoResponse, match="closed by host"):
                await link.exchange(term.sale("approve", 100))
            assert sim.requests_seen == seen
            assert await rows(sim) == [] and await balance(sim, "approve") == FULL
            sale = term.sale("approve", 200)
            assert (await link.exchange(sale))["39"] == "00"  # reconnected, knob used up
            assert await rows(sim) == [("sale", sale["11"], "00")]
            await link.close()
    asyncio.run(main())


@pytest.mark.parametrize("fault,reason", [
    ("close_mid_frame", "closed by host"),
    ("disconnect", "closed by host"),
    ("drop", "no response in"),
    ("garble", "malformed response"),
    ("wrong_stan", None),  # an answer to another STAN: skipped, or refused, as the link sees fit
])
def test_faults_after_the_decision_leave_the_debit_in_place(tmp_path, fault, reason):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            sim.faults.set_to(Faults.parse([fault, "times", "1"]))
            link = link_to(sim)
            sale = term.sale("approve", 300)
            with pytest.raises(NoResponse, match=reason):
                await link.exchange(sale)
            assert await rows(sim) == [("sale", sale["11"], "00")]
            assert await balance(sim, "approve") == FULL - 300
            reversal = messages.reversal_request(sale, "98")
            assert (await link.exchange(reversal))["39"] == "00"  # the terminal's way out
            assert await balance(sim, "approve") == FULL
            await link.close()
    asyncio.run(main())


def test_close_mid_frame_sends_a_strict_prefix_of_the_answer(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            sim.faults.close_mid_frame = True
            await term.send(term.sale("approve", 100))
            data = await read_until_eof(term.reader)
            assert len(data) >= 2
            assert int.from_bytes(data[:2], "big") > len(data) - 2  # the frame never ends
            assert data[2:6] == b"0210"
    asyncio.run(main())


def test_wrong_stan_answers_the_next_stan(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            sim.faults.wrong_stan = True
            sale = term.sale("approve", 100)
            resp = await term.ask(sale)
            assert resp["11"] == next_stan(sale["11"]) and resp["39"] == "00"
            assert "STAN" in messages.match_response(sale, resp)
    asyncio.run(main())


def test_answer_twice_sends_a_stray_copy_the_next_exchange_must_skip(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            sim.faults.answer_twice = True
            sale = term.sale("approve", 100)
            first = await term.ask(sale)
            assert await term.recv() == first  # the same answer, again
            await term.assert_silent()
            sim.faults.set_to(Faults.parse("answer_twice times 1".split()))
            link = link_to(sim)
            one, two = term.sale("approve", 200), term.sale("approve", 300)
            assert (await link.exchange(one))["11"] == one["11"]
            answer = await link.exchange(two)  # the copy of one's answer is not two's
            assert (answer["11"], answer["4"]) == (two["11"], two["4"])
            assert await balance(sim, "approve") == FULL - 600
            await link.close()
    asyncio.run(main())


def test_mti_filter_spares_other_requests(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            sim.faults.set_to(Faults.parse("drop mti 0220".split()))
            assert (await term.ask(term.sale("approve", 100)))["39"] == "00"
            echo = messages.echo_request(IDS, stan=90, batch=1, now=NOW)
            assert (await term.ask(echo))["39"] == "00"
            handled = sim.requests_handled
            await term.send(term.advice("approve", 200))
            await sim.wait_handled(handled + 1, ANSWER_TIMEOUT)
            await term.assert_silent()
            assert sim.faults.drop  # no `times`: still on
            assert [r[2] for r in await rows(sim)] == ["00", "00"]
    asyncio.run(main())


def test_times_counts_matching_requests_then_every_knob_is_off(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            sim.faults.set_to(Faults.parse("disconnect times 2".split()))
            link = link_to(sim)
            for _ in range(2):
                with pytest.raises(NoResponse, match="closed by host"):
                    await link.exchange(term.sale("approve", 100))
            assert sim.faults == Faults()
            assert (await link.exchange(term.sale("approve", 100)))["39"] == "00"
            assert await balance(sim, "approve") == FULL - 300  # all three decided
            await link.close()
    asyncio.run(main())


def test_repeat_after_a_dropped_0230_answers_the_same_rrn_and_debits_once(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            sim.faults.set_to(Faults.parse("drop times 1 mti 022".split()))
            link = link_to(sim)
            with pytest.raises(NoResponse, match="no response"):
                await link.exchange(term.advice("approve", 4200, stan=700))
            repeat = term.advice("approve", 4200, stan=700, repeat=True)
            answer = await link.exchange(repeat)
            assert (answer["t"], answer["39"]) == ("0230", "00")
            [auth] = await sim.in_ledger(lambda l: l.records(TID))
            assert (auth.kind, auth.rrn, auth.auth_code, auth.repeats) == \
                ("advice", answer["37"], answer["38"], 1)
            assert await balance(sim, "approve") == FULL - 4200
            await link.close()
    asyncio.run(main())


# --- the network switch ------------------------------------------------------------------


def test_go_down_refuses_and_closes_then_go_up_serves_the_same_ledger(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            link = link_to(sim)
            assert (await link.exchange(term.sale("approve", 100)))["39"] == "00"
            port = sim.port
            await sim.go_down()
            await sim.go_down()  # idempotent
            assert sim.down
            await term.assert_closed()  # open connections are closed
            with pytest.raises(NotSent, match="failed"):
                await link.exchange(term.sale("approve", 200))
            await sim.go_up()
            assert not sim.down and sim.port == port
            assert (await link.exchange(term.sale("approve", 300)))["39"] == "00"
            assert await balance(sim, "approve") == FULL - 400
            assert [r[2] for r in await rows(sim)] == ["00", "00"]
            await link.close()
    asyncio.run(main())


def test_restart_while_forwarding_keeps_the_decision_and_charges_once(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            sim.faults.set_to(Faults.parse("delay 30 mti 0220".split()))
            link = link_to(sim)
            seen = sim.requests_seen
            forward = asyncio.ensure_future(link.exchange(term.advice("approve", 900, stan=800)))
            await sim.wait_requests(seen + 1, ANSWER_TIMEOUT)
            port = sim.port
            await sim.restart()  # the 0230 was still held back by the delay
            with pytest.raises(NoResponse):
                await forward
            assert sim.port == port and not sim.down
            answer = await link.exchange(term.advice("approve", 900, stan=800, repeat=True))
            assert answer["39"] == "00"
            [auth] = await sim.in_ledger(lambda l: l.records(TID))
            assert (auth.rrn, auth.repeats) == (answer["37"], 1)
            assert await balance(sim, "approve") == FULL - 900
            assert await sim.in_ledger(lambda l: l.session_keys(TID)) == \
                (term.session.pik, term.session.mak)
            await link.close()
    asyncio.run(main())


def test_go_up_before_start_is_an_error(tmp_path):
    async def main():
        async with running(tmp_path) as sim:
            await sim.stop()
            assert sim.down
            with pytest.raises(RuntimeError, match="not started"):
                await sim.go_up()
    asyncio.run(main())


# --- script verbs --------------------------------------------------------------------------


def test_script_accepts_the_new_verbs_and_checks_their_words():
    steps = parse_script("""
        fault wrong_stan times 1 mti 0220
        fault none
        acquirer down
        acquirer up
        acquirer restart
        expect queue 0 within 3
        expect ledger 12 00
        expect signon within 5
    """)
    assert [s.words[0] for s in steps] == ["fault"] * 2 + ["acquirer"] * 3 + ["expect"] * 3


@pytest.mark.parametrize("line,message", [
    ("fault explode", "line 1: fault: unknown knob 'explode'"),
    ("fault delay", "line 1: fault: delay wants seconds"),
    ("acquirer sideways", "line 1: not understood"),
    ("acquirer", "line 1: not understood"),
    ("expect ledger 12", "want expect ledger STAN CODE"),
    ("expect ledger x1 00", "want expect ledger STAN CODE"),
    ("expect queues 1", "unknown expectation 'queues'"),
])
def test_script_refuses_bad_new_verbs(line, message):
    with pytest.raises(ScriptError, match=message):
        parse_script(line)


def test_script_switches_faults_and_network_and_waits_for_the_ledger(sim_config):
    async def main():
        async with sim_session(sim_config) as session:
            acquirer = session.acquirer
            await run_script(session, parse_script("""
                expect signon
                fault drop times 1 mti 0220
                acquirer down
            """), log=lambda line: None)
            assert acquirer.down and acquirer.faults == Faults(drop=True, times=1, mti="0220")
            port = acquirer.port
            await run_script(session, parse_script("acquirer up\nacquirer restart\nfault none"),
                             log=lambda line: None)
            assert not acquirer.down and acquirer.port == port and acquirer.faults == Faults()
            assert session.cfg.terminal.terminal_id == TID
            term = await Terminal.connect(acquirer.port)
            # the expectation looks first (its ledger read is queued first), then waits
            _, answer = await asyncio.gather(
                run_script(session, parse_script("expect ledger 778 00 within 5"),
                           log=lambda line: None),
                term.ask(term.advice("approve", 100, stan=778)))
            assert answer["39"] == "00"
            await term.close()
            with pytest.raises(ScriptError, match=r"\['00'\] for STAN 000778, expected 51"):
                await run_script(session, parse_script("expect ledger 778 51 within 0.3"),
                                 log=lambda line: None)
    asyncio.run(main())


@pytest.mark.skipif(not hasattr(Journal, "queue_stats"),
                    reason="Journal.queue_stats() (pending reversals + advices) is being written")
def test_script_expect_queue_waits_for_the_journal(sim_config):
    run_scenario(sim_config, """
        expect signon
        expect queue 0
        # every request dropped: the sale's reversal stays queued however often it is sent
        fault drop
        keys 100 ENTER
        insert approve
        expect screen "Enter PIN"
        keys 1234 ENTER
        expect screen "NO RESPONSE"
        expect queue 1
        remove
        keys ENTER
        expect screen "Key in amount"
        fault none
        keys 200 ENTER
        insert approve
        expect screen "Enter PIN"
        keys 1234 ENTER
        # the reversal goes before the new sale: the queue drains while the sale runs
        expect queue 0
        expect screen "APPROVED"
        expect balance approve 999800
    """)
