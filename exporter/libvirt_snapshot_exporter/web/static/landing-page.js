// The landing page's updates (landing_page.py renders the page; this only keeps it current).
// Every few seconds it asks /api/operations whether an operation started, ended or was
// judged (the page's data-signature, computed the same way); when one did, it fetches this
// very page again, its ?domain= filter with it, and puts the new table in place of the old.
// Meanwhile the running operations' time ticks. #checked says when it last checked, or why
// it could not; the domain filter applies as soon as one is chosen.
"use strict";
(function () {
  const NEWEST = 3;  // landing_page.SIGNATURE_NEWEST
  const live = document.getElementById("live");
  const checked = document.getElementById("checked");
  const select = document.querySelector("#filter select");
  const poll = 1000 * Number(document.getElementById("refresh").dataset.poll || 2);
  let loaded = performance.now();
  let busy = false;

  if (select) {
    select.addEventListener("change", () => select.form.submit());
  }

  function tick() {
    const seconds = (performance.now() - loaded) / 1000;
    for (const cell of live.querySelectorAll("td.elapsed")) {
      cell.textContent = "running " + (Number(cell.dataset.elapsed) + seconds).toFixed(1) + " s";
    }
  }

  function signature(api) {
    const flying = api.in_flight.map((o) => String(o.id)).sort().join(" ");
    const newest = api.operations.slice(0, NEWEST)
      .map((o) => o.id + (o.verdict ? "v" : "")).join(" ");
    return flying + "|" + api.total + "|" + newest;
  }

  function clock() {
    return new Date().toTimeString().slice(0, 8);
  }

  async function check() {
    if (busy || document.hidden) {
      return;
    }
    busy = true;
    try {
      const answer = await fetch("api/operations?limit=" + NEWEST, { cache: "no-store" });
      if (!answer.ok) {
        throw new Error("/api/operations answered " + answer.status);
      }
      if (signature(await answer.json()) !== live.dataset.signature) {
        const page = await fetch(location.href, { cache: "no-store" });
        if (!page.ok) {
          throw new Error("the page answered " + page.status);
        }
        const fresh = new DOMParser().parseFromString(await page.text(), "text/html");
        const next = fresh.getElementById("live");
        if (!next) {
          throw new Error("the page came without its table");
        }
        live.replaceChildren(...next.childNodes);
        live.dataset.signature = next.dataset.signature;
        loaded = performance.now();
        const options = fresh.querySelector("#filter select");
        if (select && options && document.activeElement !== select) {
          select.replaceChildren(...options.childNodes);  // domains seen since
        }
        live.dataset.updates = String(Number(live.dataset.updates || 0) + 1);
      }
      checked.textContent = "Last checked at " + clock() + " (your clock).";
      checked.dataset.state = "ok";
    } catch (error) {
      checked.textContent = "Could not check at " + clock() + " (" + error.message +
        "); trying again.";
      checked.dataset.state = "error";
    } finally {
      busy = false;
    }
  }

  setInterval(tick, 1000);
  setInterval(check, poll);
  check();
})();
