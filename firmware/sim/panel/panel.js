// KPOS simulator front panel: renders the sections the server pushes (server-sent events)
// and posts key, card, scanner and network actions. No framework, no build step.
"use strict";

let token = "";
const $ = (sel) => document.querySelector(sel);

function cell(row, text) { const td = document.createElement("td"); td.textContent = text; row.append(td); }

function fillTable(id, items, columns) {
  const body = $(id + " tbody");
  body.replaceChildren(...items.map((item) => {
    const row = document.createElement("tr");
    columns.forEach((c) => cell(row, String(item[c])));
    return row;
  }));
}

const render = {
  screen(s) {
    $("#screen-img").src = s.png;
    $("#screen-text").textContent = s.text;
    $("#display").setAttribute("aria-label", "Screen: " + s.text.replace(/\n/g, " / "));
  },
  network(n) { document.querySelectorAll("input[name=net]").forEach((r) => { r.checked = r.value === n.state; }); },
  queue(q) {
    $("#queue-count").textContent = q.count;
    fillTable("#queue", q.items, ["what", "kind", "amount", "stan", "state"]);
  },
  journal(rows) { fillTable("#journal", rows, ["stan", "kind", "amount", "pan", "entry", "status", "rc"]); },
  receipts(list) {
    const box = $("#receipts");
    $("#receipt-count").textContent = list.length;
    list.slice(box.children.length).forEach((r) => {
      const fig = document.createElement("figure");
      fig.className = "receipt";
      fig.dataset.name = r.name;
      const img = document.createElement("img");
      img.src = r.png; img.alt = "receipt " + r.name;
      const cap = document.createElement("figcaption");
      cap.append(r.name + " ");
      [["PNG", r.png, r.name + ".png"], ["ESC/POS .bin", r.bin, r.name + ".bin"]].forEach(([label, href, file]) => {
        const a = document.createElement("a"); a.href = href; a.download = file; a.textContent = label; cap.append(a);
      });
      fig.append(img, cap);
      box.append(fig);
      fig.scrollIntoView({block: "nearest"});
    });
  },
  messages(list) {
    const box = $("#messages");
    box.replaceChildren(...list.slice().reverse().map((m) => {
      const d = document.createElement("details");
      d.className = "dir-" + m.dir;
      const s = document.createElement("summary");
      const stan = m.fields.find((f) => f[0] === "11");
      const rc = m.fields.find((f) => f[0] === "39");
      s.textContent = `${m.time} ${m.dir} ${m.mti}` + (stan ? ` STAN ${stan[2]}` : "") + (rc ? ` RC ${rc[2]}` : "");
      const t = document.createElement("table");
      m.fields.forEach((f) => { const r = t.insertRow(); f.forEach((v) => cell(r, v)); });
      d.append(s, t);
      return d;
    }));
  },
};

let sending = Promise.resolve();  // posts go one after another: key presses keep their order

function post(action, body) {
  sending = sending.then(async () => {
    const r = await fetch("/api/" + action, {
      method: "POST", headers: {"Content-Type": "application/json", "X-KPOS-Token": token},
      body: JSON.stringify(body),
    });
    const answer = await r.json();
    $("#error").textContent = answer.error || "";
  }).catch((err) => { $("#error").textContent = "panel: " + err; });
  return sending;
}

const KEYBOARD = {Enter: "ENTER", Escape: "CANCEL", Backspace: "BACK", Delete: "CLEAR", F2: "MENU", m: "MENU"};

function wire() {
  document.querySelectorAll("[data-key]").forEach((b) => b.addEventListener("click", () => post("key", {key: b.dataset.key})));
  document.querySelectorAll("[data-card]").forEach((b) => b.addEventListener("click",
    () => post("card", {action: b.dataset.card, card: $("#card").value})));
  document.querySelectorAll("input[name=net]").forEach((r) => r.addEventListener("change", () => post("network", {state: r.value})));
  $("#scanner").addEventListener("submit", (e) => {
    e.preventDefault();
    post("scan", {code: $("#scan-code").value.trim()});
    $("#scan-code").value = "";
  });
  document.addEventListener("keydown", (e) => {
    if (e.target.closest("input, select, textarea") || e.ctrlKey || e.altKey || e.metaKey) return;
    const key = /^[0-9]$/.test(e.key) ? e.key : KEYBOARD[e.key];
    if (key) { e.preventDefault(); post("key", {key}); }
  });
}

async function start() {
  wire();
  const state = await (await fetch("/api/state")).json();
  token = state.token;
  $("#card").replaceChildren(...state.cards.map((c) => new Option(`${c.name} (${c.outcome})`, c.name)));
  Object.keys(render).forEach((k) => { if (state[k]) render[k](state[k]); });
  const events = new EventSource("/api/events");
  Object.keys(render).forEach((k) => events.addEventListener(k, (e) => render[k](JSON.parse(e.data))));
  document.body.dataset.ready = "1";
}

start();
