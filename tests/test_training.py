"""Training mode over real TCP: practice sales go to the training host and journal, never to
the real acquirer or the real batch; switching back restores the real parts as they were."""
from __future__ import annotations

import asyncio

from conftest import SIM_TOML, run_bounded, sim_overrides
from firmware.config import load_config, read_tmk
from firmware.flows.types import TrainingSet
from firmware.journal import open_existing
from firmware.sim.acquirer import Faults
from firmware.sim.catalog import load_catalog
from firmware.sim.ledger import SALE
from firmware.sim.runner import sim_session
from firmware.training import TrainingHost, training_catalog, training_dir
from scenario import ONLINE_PIN_APPROVED, REMOVE_TO_IDLE, SALE_5000, play

TRAINING_SALE = SALE_5000 + """
    insert approve
    expect screen "Enter PIN"
    keys 1234 ENTER
    expect screen "Take receipts"
    expect journal APPROVED
""" + REMOVE_TO_IDLE
FULL_BALANCE = 1000000  # the catalog's "approve" card


async def wait_idle(terminal, timeout: float = 10.0) -> None:
    """Until no flow or housekeeping task of the terminal is in flight."""
    async with asyncio.timeout(timeout):
        while tasks := terminal._tasks | terminal._background:
            await asyncio.wait(tasks)


async def balance(simulator, card: str = "approve") -> int:
    pan = simulator.catalog.cards[card].pan
    return await simulator.in_ledger(lambda ledger: ledger.balance(pan))


async def sales(simulator, tid: str) -> list:
    records = await simulator.in_ledger(lambda ledger: ledger.records(tid))
    return [r for r in records if r.kind == SALE]


def training_rows(cfg) -> list:
    journal = open_existing(training_dir(cfg), cfg.security.vault_key_file)
    try:
        return journal.page(0, 10)
    finally:
        journal.close()


def test_training_sale_stays_off_the_real_acquirer_and_batch(sim_config, no_card_data_in_logs):
    tid = sim_config.terminal.terminal_id

    async def go():
        async with sim_session(sim_config) as session:
            t, real = session.terminal, session.acquirer
            await asyncio.wait_for(t.online.wait(), 10)
            await wait_idle(t)
            handled = real.requests_handled
            batch = await t.journal_call(lambda j: j.batch_no())
            real_parts = (t.journal, t.link, t.saf, t.session_keys)

            assert await t._set_training(True) == TrainingSet(True, "")
            assert t.training and t.signed_on.is_set() and t.journal is not real_parts[0]
            host = t.training_host.simulator
            await play(session, TRAINING_SALE)
            await wait_idle(t)
            assert real.requests_handled == handled  # not even an echo test
            assert await balance(real) == FULL_BALANCE
            assert await balance(host) == FULL_BALANCE - 5000
            assert [s.rc for s in await sales(host, tid)] == ["00"]

            assert await t._set_training(False) == TrainingSet(False, "")
            assert (t.journal, t.link, t.saf, t.session_keys) == real_parts
            assert not t.training and t.training_host is None and not t._saf_task.done()
            assert await t.journal_call(lambda j: (j.count(), j.batch_no())) == (0, batch)

            await play(session, SALE_5000 + ONLINE_PIN_APPROVED + REMOVE_TO_IDLE)
            assert real.requests_handled > handled
            assert [s.rc for s in await sales(real, tid)] == ["00"]
            return await t.journal_call(lambda j: j.count())
    assert asyncio.run(go()) == 1
    [row] = training_rows(sim_config)
    assert (row.kind, row.status, row.amount, row.masked_pan) == ("sale", "APPROVED", 5000,
                                                                  "622609******0014")


def test_unanswered_training_sale_is_reversed_on_the_training_host(sim_config):
    async def go():
        async with sim_session(sim_config) as session:
            t, real = session.terminal, session.acquirer
            await asyncio.wait_for(t.online.wait(), 10)
            await wait_idle(t)
            handled = real.requests_handled
            await t._set_training(True)
            host = t.training_host
            host.simulator.faults.set_to(Faults.parse(["drop", "times", "1", "mti", "0200"]))
            await play(session, """
                keys 100 ENTER
                insert approve
                expect screen "Enter PIN"
                keys 1234 ENTER
                expect screen "NO RESPONSE"
                remove
                keys ENTER
                expect screen "Key in amount"
                expect queue 0 within 10
            """)
            record = await t.journal_call(lambda j: j.last())
            assert (record.status, record.reversal_status) == ("REVERSED", "ACKED")
            [sale] = await sales(host.simulator, sim_config.terminal.terminal_id)
            assert sale.reversed and await balance(host.simulator) == FULL_BALANCE
            assert real.requests_handled == handled
            await wait_idle(t)
            return host  # the session stops while training
    host = asyncio.run(go())
    assert host.simulator is None  # stopped with the terminal
    [row] = training_rows(sim_config)
    assert row.status == "REVERSED"
    real = open_existing(sim_config.terminal.data_dir, sim_config.security.vault_key_file)
    try:
        assert real.count() == 0
    finally:
        real.close()


def test_a_host_that_fails_to_start_swaps_nothing(sim_config):
    training_dir(sim_config).parent.mkdir(parents=True, exist_ok=True)
    training_dir(sim_config).write_text("a file where the training directory goes")

    async def go():
        async with sim_session(sim_config) as session:
            t = session.terminal
            await asyncio.wait_for(t.online.wait(), 10)
            await wait_idle(t)
            parts = (t.journal, t.link, t.saf, t._saf_task, t.session_keys)
            answer = await t._set_training(True)
            assert answer == TrainingSet(False, "Training host failed")
            assert (t.journal, t.link, t.saf, t._saf_task, t.session_keys) == parts
            assert not t.training and t.training_host is None and t.signed_on.is_set()
            assert not t._saf_task.done()
            await play(session, SALE_5000 + ONLINE_PIN_APPROVED + REMOVE_TO_IDLE)
    run_bounded(go())


def test_no_switch_while_a_task_is_in_flight(sim_config):
    async def go():
        async with sim_session(sim_config) as session:
            t = session.terminal
            await asyncio.wait_for(t.online.wait(), 10)
            await wait_idle(t)
            gate = asyncio.Event()
            t._spawn(gate.wait(), "in-flight")
            assert await t._set_training(True) == TrainingSet(False, "Terminal busy, try again")
            assert not t.training and not training_dir(sim_config).exists()
            gate.set()
            await wait_idle(t)
            assert await t._set_training(True) == TrainingSet(True, "")
            assert await t._set_training(True) == TrainingSet(True, "")  # already on
            assert await t._set_training(False) == TrainingSet(False, "")
    run_bounded(go())


def test_training_signs_on_whatever_the_terminal_id(tmp_path):
    over = sim_overrides(tmp_path)
    over["terminal"]["terminal_id"] = "20000002"  # the real (simulated) acquirer does not know it
    cfg = load_config(SIM_TOML, overrides=over)

    async def go():
        async with sim_session(cfg) as session:
            t = session.terminal
            await wait_idle(t)
            assert not t.signed_on.is_set()  # refused by the real host
            assert await t._set_training(True) == TrainingSet(True, "")
            assert t.signed_on.is_set()
            await play(session, TRAINING_SALE)
            assert await balance(t.training_host.simulator) == FULL_BALANCE - 5000
            await t._set_training(False)
            assert not t.signed_on.is_set()
    run_bounded(go())


def test_training_catalog_maps_the_terminal_to_its_own_key(sim_config):
    tmk = bytes(range(16))
    catalog = training_catalog(sim_config, tmk)
    sim = load_catalog(sim_config.sim.catalog)
    assert catalog.terminal_keys == {**sim.terminal_keys, sim_config.terminal.terminal_id: tmk}
    assert catalog.cards == sim.cards and catalog.imk_ac == sim.imk_ac


def test_training_host_start_stop(sim_config):
    async def go():
        host = TrainingHost(sim_config, read_tmk(sim_config))
        port = await host.start()
        assert port > 0 and host.simulator.port == port
        assert (training_dir(sim_config) / "acquirer.db").exists()
        await host.stop()
        await host.stop()  # idempotent
        assert host.simulator is None
    run_bounded(go())
