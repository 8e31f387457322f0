// The staff's dashboard: reads the controller's API and listens to its event stream.
// Plain JavaScript for this page alone (no build step, no library: the exhibition PC
// has no internet). The staff token lives in sessionStorage and travels only in the
// Authorization header, never in a URL; every request goes to this same origin.
"use strict";

(function () {
  const API = document.body.dataset.api;
  const TOKEN_KEY = "vmcontroller-staff-token";
  const HISTORY_LIMIT = 200;
  // The screen is taken every interval (0.5 s in tests): a phone on a gallery's Wi-Fi
  // fetches the picture at most this often.
  const SCREEN_EVERY_MS = 2000;
  const SCREENS = API + "/screen/";
  const $ = (id) => document.getElementById(id);

  const view = {
    status: null,
    beat: null, // {age: seconds when received, at: performance.now() then, timeout}
    progress: null, // {value, unchanged: seconds when received, at, timeout}
    // The latest screenshot: the time status gave for it (wanted), the one asked for
    // (asked), the object URL shown, when it was last asked for, a waiting timer.
    screen: { wanted: null, asked: null, url: null, askedAt: -Infinity, timer: null, busy: false },
    pictureUrl: null, // the object URL of the recovery's screenshot in the overlay
    rows: new Map(), // history rows by id
    lastEventId: null,
    streamAbort: null,
    reportTimer: null,
    started: false,
  };

  // ------------------------------------------------------------ requests

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function headers(extra) {
    const h = Object.assign({ Accept: "application/json" }, extra || {});
    const t = token();
    if (t) h.Authorization = "Bearer " + t;
    return h;
  }

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  async function call(method, path) {
    let response;
    try {
      response = await fetch(API + path, {
        method: method,
        headers: headers(),
        cache: "no-store",
        credentials: "omit",
      });
    } catch (err) {
      throw new ApiError(0, "The controller did not answer: " + err.message);
    }
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    if (!response.ok) {
      const detail = body && body.detail ? body.detail : response.status + " " + response.statusText;
      throw new ApiError(response.status, detail);
    }
    return body;
  }

  function notify(text, isError) {
    const n = $("notice");
    n.textContent = text;
    n.className = isError ? "error" : "ok";
    n.hidden = !text;
  }

  // A refusal of the token stops everything: nothing is shown with a wrong one.
  function refused(err) {
    if (err.status === 401) {
      showOnly("login");
      if (token()) {
        sessionStorage.removeItem(TOKEN_KEY);
        notify("This token was not accepted: " + err.message, true);
      }
      return true;
    }
    if (err.status === 403 && token()) {
      showOnly("guest");
      notify("", false);
      return true;
    }
    return false;
  }

  function showOnly(id) {
    for (const part of ["login", "guest", "board"]) $(part).hidden = part !== id;
    // A guest token gets no button at all: closing the tab forgets it.
    $("forget-token").hidden = !token() || id === "guest";
    if (id !== "board") {
      stopStream();
      dropScreen();
    }
  }

  // ------------------------------------------------------------ status

  function text(id, value) {
    $(id).textContent = value;
  }

  function when(iso) {
    if (!iso) return "never";
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }

  function renderStatus(s) {
    view.status = s;
    text("vm-name", s.vm_name);
    const state = $("vm-state");
    state.textContent = s.vm_state;
    state.className = "pill " + (s.vm_is_running ? "good" : "bad");
    text("vm-detail", s.vm_state_detail || "");
    text(
      "snapshot",
      s.snapshot_name + (s.snapshot_exists ? " (present)" : " (missing!)") +
        (s.snapshot_detail ? " - " + s.snapshot_detail : "")
    );
    $("snapshot").className = s.snapshot_exists ? "" : "warn";
    text("maintenance", s.auto_revert_enabled ? "on" : "off: maintenance");
    $("maintenance").className = s.auto_revert_enabled ? "" : "warn";
    text("staff-stop", s.stopped_by_staff ? "yes: stays stopped until started" : "no");
    renderGuard(s.recovery || {});
    renderSchedule(s.schedule);
    renderNotifications(s.notifications);
    const sf = s.state_file || {};
    text("state-file", sf.saving === false ? "not saving: " + (sf.detail || "") : "saving");
    $("state-file").className = sf.saving === false ? "warn" : "";
    if (s.heartbeat) renderBeat(s.heartbeat);
    renderScreen(s.screen);
    // Only the maintenance button that changes something.
    document.querySelector("[data-action=maintenance-on]").hidden = !s.auto_revert_enabled;
    document.querySelector("[data-action=maintenance-off]").hidden = s.auto_revert_enabled;
    $("snapshot-name").placeholder = s.snapshot_name;
  }

  function renderGuard(rec) {
    const g = rec.guard || {};
    let line = g.state || "unknown";
    if (g.detail) line += ": " + g.detail;
    if (g.retry_in !== null && g.retry_in !== undefined) line += " (retries in " + g.retry_in + " s)";
    if (g.max_recoveries !== undefined) {
      line += " - " + g.recent_recoveries + " of " + g.max_recoveries + " recoveries in " +
        g.recovery_window + " s";
    }
    text("guard", line);
    $("guard").className = g.state && g.state !== "ok" ? "warn" : "";
    text(
      "last-recovery",
      rec.last_time ? when(rec.last_time) + ", " + rec.last_trigger + ", " + rec.last_outcome +
        " (" + rec.count + " in all)" : "none"
    );
  }

  function renderSchedule(sc) {
    if (!sc) {
      text("schedule", "none: always open, always watched");
      $("schedule").className = "";
      return;
    }
    let line = sc.state + " (" + sc.why + ")";
    if (!sc.enforcing) line += ", not watched";
    if (sc.next_change) line += "; " + sc.next_state + " at " + when(sc.next_change);
    text("schedule", line);
    $("schedule").className = sc.enforcing ? "" : "warn";
  }

  function renderNotifications(n) {
    if (!n) {
      text("notifications", "not running");
      $("notifications").className = "";
      return;
    }
    const parts = [];
    let failing = false;
    Object.keys(n.channels || {}).forEach((name) => {
      const c = n.channels[name];
      if (c.last_error) failing = true;
      parts.push(name + ": " + (c.last_error ? "failing (" + c.last_error + ")" :
        "last sent " + when(c.last_delivery)));
    });
    if (n.ping) {
      if (n.ping.last_error) failing = true;
      parts.push("ping every " + n.ping.interval + " s: " + (n.ping.last_error ?
        "failing (" + n.ping.last_error + ")" : "last " + when(n.ping.last_ping)));
    }
    if (n.queued) parts.push(n.queued + " waiting");
    text("notifications", parts.length ? parts.join("; ") : "none configured");
    $("notifications").className = failing ? "warn" : "";
  }

  // ------------------------------------------------------------ heartbeat bar

  function renderBeat(hb) {
    const age = hb.seconds_since_last !== undefined ? hb.seconds_since_last : hb.seconds_since_heartbeat;
    view.beat = {
      age: age === null || age === undefined ? null : Number(age),
      at: performance.now(),
      timeout: Number(hb.timeout),
      last: hb.last_heartbeat,
      enabled: hb.enabled !== false,
    };
    const p = hb.progress;
    view.progress = p ? {
      value: p.value,
      unchanged: p.seconds_unchanged === null || p.seconds_unchanged === undefined ? null :
        Number(p.seconds_unchanged),
      at: performance.now(),
      timeout: p.timeout === null || p.timeout === undefined ? null : Number(p.timeout),
    } : null;
  }

  function renderProgress() {
    const p = view.progress;
    $("progress").hidden = $("progress-label").hidden = !p;
    if (!p) return;
    let line = p.value === null || p.value === undefined ? "no value yet" : "\u201c" + p.value + "\u201d";
    let late = false;
    if (p.unchanged !== null) {
      const still = p.unchanged + (performance.now() - p.at) / 1000;
      line += ", unchanged for " + still.toFixed(1) + " s";
      late = p.timeout !== null && still > p.timeout * 0.6;
    }
    line += p.timeout === null ? " (no progress rule)" : " (revert after " + p.timeout + " s)";
    text("progress", line);
    $("progress").className = late ? "warn" : "";
  }

  // Drawn every frame from what the last event said: the bar moves without asking
  // the controller, and a new heartbeat event brings it back to zero.
  function animate() {
    const b = view.beat;
    if (b && !$("board").hidden) {
      const fill = $("hb-fill");
      if (b.age === null) {
        fill.style.width = "100%";
        fill.className = "fill none";
        text("hb-text", "no heartbeat yet");
      } else {
        const age = b.age + (performance.now() - b.at) / 1000;
        const share = Math.min(1, age / b.timeout);
        fill.style.width = (share * 100).toFixed(2) + "%";
        // Grey while the timeout is not armed: no revert will follow, whatever the age.
        fill.className = "fill " + (!b.enabled ? "idle" : share >= 1 ? "late" : share > 0.6 ? "slow" : "fresh");
        text("hb-text", age.toFixed(1) + " s ago of " + b.timeout + " s timeout" +
          (b.enabled ? "" : " (timeout not armed: start-up grace or VM off)"));
      }
    }
    if (!$("board").hidden) renderProgress();
    requestAnimationFrame(animate);
  }

  // ------------------------------------------------------------ the screen

  // An <img src> cannot send the Authorization header: a picture is fetched like the
  // rest and shown through an object URL. Only the controller's screenshots are asked for.
  async function fetchPicture(path) {
    if (!path.startsWith(SCREENS)) throw new ApiError(0, "not a screenshot of this controller");
    let response;
    try {
      response = await fetch(path, {
        headers: headers({ Accept: "image/png, application/json" }),
        cache: "no-store",
        credentials: "omit",
      });
    } catch (err) {
      throw new ApiError(0, "The controller did not answer: " + err.message);
    }
    if (!response.ok) {
      let detail = response.status + " " + response.statusText;
      try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
      throw new ApiError(response.status, detail);
    }
    return { blob: await response.blob(), taken: response.headers.get("X-Screenshot-Time") };
  }

  function span(cls, value) {
    const el = document.createElement("span");
    el.className = cls;
    el.textContent = value;
    return el;
  }

  function renderScreen(sc) {
    $("screen").hidden = !sc;
    if (!sc) {
      dropScreen();
      return;
    }
    $("screen-judged").hidden = sc.judged;
    $("screen-error").hidden = !sc.error;
    text("screen-error", sc.error ? "The screen cannot be taken: " + sc.error : "");
    const list = $("screen-rules");
    list.replaceChildren();
    for (const r of sc.rules || []) {
      const li = document.createElement("li");
      const state = r.failing ? "failing" : r.holding ? "holding" : "ok";
      li.className = state;
      li.dataset.rule = r.rule;
      const verdict = r.failing ? "FAILING" : r.holding ?
        "holding " + Number(r.held_seconds || 0).toFixed(1) + " s" : "ok";
      li.append(span("verdict", verdict), span("name", r.rule + " (" + r.kind + ")"),
        span("detail", r.detail || ""));
      list.append(li);
    }
    if (!list.children.length) list.append(span("detail", "no rules"));
    if (sc.last_screenshot) wantScreen(sc.last_screenshot);
  }

  // A status event says a newer screenshot exists: fetch it, but not more often than
  // SCREEN_EVERY_MS and one at a time; the newest wanted is the one fetched.
  function wantScreen(stamp) {
    const s = view.screen;
    s.wanted = stamp;
    if (s.timer !== null || s.busy || s.asked === stamp) return;
    const wait = Math.max(0, s.askedAt + SCREEN_EVERY_MS - performance.now());
    s.timer = setTimeout(fetchScreen, wait);
  }

  async function fetchScreen() {
    const s = view.screen;
    s.timer = null;
    if ($("screen").hidden || s.wanted === s.asked) return;
    // Asked once per screenshot, answered or not: a failure waits for the next one.
    s.asked = s.wanted;
    s.askedAt = performance.now();
    s.busy = true;
    try {
      const got = await fetchPicture(SCREENS + "latest");
      if ($("screen").hidden) return;
      const old = s.url;
      s.url = URL.createObjectURL(got.blob);
      $("screen-img").src = s.url;
      $("screen-img").hidden = false;
      if (old) URL.revokeObjectURL(old);
      const size = view.status && view.status.screen && view.status.screen.size;
      text("screen-time", "taken " + when(got.taken) + (size ? ", " + size.join(" x ") + " pixels" : ""));
    } catch (err) {
      if (!refused(err)) text("screen-time", "No screenshot: " + err.message);
    } finally {
      s.busy = false;
      if (s.wanted !== s.asked && !$("screen").hidden) wantScreen(s.wanted);
    }
  }

  function dropScreen() {
    const s = view.screen;
    clearTimeout(s.timer);
    s.timer = null;
    s.wanted = s.asked = null;
    if (s.url) URL.revokeObjectURL(s.url);
    s.url = null;
    $("screen-img").hidden = true;
    $("screen-img").removeAttribute("src");
    text("screen-time", "no screenshot yet");
  }

  // The screenshot kept for a screen recovery, in an overlay (a plain link would
  // open it without the token).
  async function showPicture(row) {
    const dialog = $("picture");
    text("picture-title", "The screen at " + when(row.time) + ": " + (row.reason || row.trigger));
    dropPicture();
    if (!dialog.open) dialog.showModal();
    try {
      const got = await fetchPicture(row.screenshot);
      if (!dialog.open) return;
      view.pictureUrl = URL.createObjectURL(got.blob);
      $("picture-img").src = view.pictureUrl;
      $("picture-img").hidden = false;
    } catch (err) {
      if (refused(err)) dialog.close();
      else text("picture-title", "No screenshot: " + err.message);
    }
  }

  function dropPicture() {
    if (view.pictureUrl) URL.revokeObjectURL(view.pictureUrl);
    view.pictureUrl = null;
    $("picture-img").hidden = true;
    $("picture-img").removeAttribute("src");
  }

  // ------------------------------------------------------------ snapshots

  async function loadSnapshots() {
    const body = await call("GET", "/snapshots");
    const list = $("snapshot-list");
    list.replaceChildren();
    for (const name of body.snapshots) {
      const li = document.createElement("li");
      const label = document.createElement("span");
      label.textContent = name;
      if (view.status && name === view.status.snapshot_name) label.className = "reference";
      li.append(label, button("Replace", () => snapshotCreate(name, true)),
        button("Delete", () => snapshotDelete(name), "danger"));
      list.append(li);
    }
    if (!body.snapshots.length) {
      const li = document.createElement("li");
      li.textContent = "no snapshots";
      list.append(li);
    }
  }

  function button(label, onClick, cls) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    if (cls) b.className = cls;
    b.addEventListener("click", onClick);
    return b;
  }

  async function snapshotCreate(name, replacing) {
    const shown = name || (view.status ? view.status.snapshot_name : "");
    if (replacing && !(await confirmed("Replace snapshot '" + shown + "' with the VM as it is now?"))) return;
    const query = name ? "?snapshot_name=" + encodeURIComponent(name) : "";
    await act("POST", "/snapshot/create" + query);
  }

  async function snapshotDelete(name) {
    if (!(await confirmed("Delete snapshot '" + name + "'? This cannot be undone."))) return;
    await act("DELETE", "/snapshot/" + encodeURIComponent(name));
  }

  // ------------------------------------------------------------ actions

  const ACTIONS = {
    start: { path: "/vm/start" },
    stop: { path: "/vm/stop", ask: "Stop the VM? The artwork stays off until someone starts it." },
    restart: { path: "/vm/restart", ask: "Restart the VM from its reference snapshot?" },
    "maintenance-on": { path: "/revert/disable" },
    "maintenance-off": { path: "/revert/enable" },
  };

  function confirmed(question) {
    const dialog = $("confirm");
    text("confirm-text", question);
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.returnValue = "";
      dialog.showModal();
    });
  }

  async function act(method, path) {
    const buttons = document.querySelectorAll("main button");
    buttons.forEach((b) => (b.disabled = true));
    notify("Working...", false);
    try {
      const body = await call(method, path);
      notify(body && body.message ? body.message : "Done", false);
    } catch (err) {
      if (!refused(err)) notify(err.message, true);
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
    await loadSnapshots().catch(() => {});
    if (!view.streaming) await loadStatus().catch(() => {});
  }

  // ------------------------------------------------------------ history

  function renderHistory() {
    const trigger = $("filter-trigger").value;
    const outcome = $("filter-outcome").value;
    const rows = [...view.rows.values()]
      .filter((r) => (!trigger || r.trigger === trigger) && (!outcome || r.outcome === outcome))
      .sort((a, b) => b.id - a.id);
    const body = $("history-table").tBodies[0];
    body.replaceChildren();
    for (const r of rows) {
      const tr = document.createElement("tr");
      tr.dataset.id = r.id;
      tr.className = "outcome-" + r.outcome;
      const labels = ["Time", "Trigger", "Action", "Outcome", "Duration", "Reason"];
      const cells = [
        when(r.time),
        r.trigger,
        r.action + (r.count > 1 ? " x" + r.count : ""),
        r.outcome,
        r.duration === null || r.duration === undefined ? "" : r.duration.toFixed(1) + " s",
        (r.reason || "") + (r.error ? " - " + r.error : ""),
      ];
      for (const [i, c] of cells.entries()) {
        const td = document.createElement("td");
        td.dataset.label = labels[i];
        td.textContent = c;
        tr.append(td);
      }
      if (r.screenshot && r.screenshot.startsWith(SCREENS)) {
        const shot = button("screenshot", () => showPicture(r), "small shot");
        tr.lastChild.append(" ", shot);
      }
      body.append(tr);
    }
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 6;
      td.textContent = "nothing recorded";
      tr.append(td);
      body.append(tr);
    }
  }

  function keepRow(row) {
    view.rows.set(row.id, row);
    if (view.rows.size > HISTORY_LIMIT * 2) {
      const oldest = [...view.rows.keys()].sort((a, b) => a - b).slice(0, view.rows.size - HISTORY_LIMIT);
      oldest.forEach((id) => view.rows.delete(id));
    }
  }

  async function loadHistory() {
    const body = await call("GET", "/events?limit=" + HISTORY_LIMIT);
    // A row the stream already brought is as new as this one or newer.
    body.events.forEach((row) => view.rows.has(row.id) || keepRow(row));
    renderHistory();
  }

  // ------------------------------------------------------------ report plot

  const SVG = "http://www.w3.org/2000/svg";

  function svg(name, attrs, parent) {
    const el = document.createElementNS(SVG, name);
    for (const k in attrs) el.setAttribute(k, attrs[k]);
    if (parent) parent.append(el);
    return el;
  }

  async function loadReport() {
    let body;
    try {
      body = await call("GET", "/report");
    } catch (err) {
      if (refused(err)) return;
      text("report-total", "No report: " + err.message);
      return;
    }
    drawReport(body);
  }

  function drawReport(report) {
    const days = report.days || [];
    const W = 600, H = 200, left = 34, right = 30, top = 10, bottom = 28;
    const plotW = W - left - right, plotH = H - top - bottom;
    const maxRec = Math.max(1, ...days.map((d) => d.recoveries_total || 0));
    const root = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img",
      "aria-label": "Availability and recoveries per day" });
    const title = svg("title", {}, root);
    title.textContent = "Availability and recoveries per day, " + report.since + " to " + report.until;
    for (const f of [0, 0.5, 1]) {
      const y = top + plotH * (1 - f);
      svg("line", { x1: left, x2: W - right, y1: y, y2: y, class: "grid" }, root);
      svg("text", { x: left - 4, y: y + 4, class: "axis", "text-anchor": "end" }, root).textContent =
        Math.round(f * 100) + "%";
    }
    svg("text", { x: W - right + 4, y: top + 4, class: "axis rec-axis" }, root).textContent = String(maxRec);
    svg("text", { x: W - right + 4, y: top + plotH + 4, class: "axis rec-axis" }, root).textContent = "0";
    const step = days.length ? plotW / days.length : plotW;
    const points = [];
    days.forEach((d, i) => {
      const x = left + i * step;
      if (d.healthy_share === null || d.healthy_share === undefined) {
        svg("rect", { x: x + 1, y: top, width: Math.max(1, step - 2), height: plotH, class: "nodata" }, root);
      } else {
        const h = plotH * d.healthy_share;
        const bar = svg("rect", { x: x + 1, y: top + plotH - h, width: Math.max(1, step - 2),
          height: h, class: "avail" }, root);
        svg("title", {}, bar).textContent = d.date + ": " + (d.healthy_share * 100).toFixed(1) +
          "% healthy, " + d.recoveries_total + " recoveries";
      }
      points.push([x + step / 2, top + plotH * (1 - (d.recoveries_total || 0) / maxRec)]);
      const last = days.length - 1;
      if ((i % 7 === 0 && last - i >= 4) || i === last) {
        svg("text", { x: x + step / 2, y: H - 8, class: "axis", "text-anchor": "middle" }, root)
          .textContent = d.date.slice(5);
      }
    });
    if (points.length) {
      svg("polyline", { points: points.map((p) => p.join(",")).join(" "), class: "rec" }, root);
      for (const [x, y] of points) svg("circle", { cx: x, cy: y, r: 2.5, class: "rec-dot" }, root);
    }
    $("plot").replaceChildren(root);
    const t = report.total || {};
    text("report-total", report.since + " to " + report.until + ": " +
      (t.healthy_share === null || t.healthy_share === undefined ? "no monitored time" :
        (t.healthy_share * 100).toFixed(2) + "% healthy") +
      ", " + (t.recoveries_total || 0) + " recoveries, longest outage " +
      Math.round(t.longest_outage_seconds || 0) + " s");
  }

  // A finished action changes the day's numbers: ask again, once for a burst of them.
  function reportLater() {
    clearTimeout(view.reportTimer);
    view.reportTimer = setTimeout(loadReport, 2000);
  }

  // ------------------------------------------------------------ the event stream

  function stopStream() {
    if (view.streamAbort) view.streamAbort.abort();
    view.streamAbort = null;
    view.streaming = false;
    live("off", "bad");
  }

  function live(label, cls) {
    const l = $("live");
    l.textContent = label;
    l.className = "pill " + cls;
  }

  // EventSource cannot send an Authorization header, so the stream is read with fetch
  // and parsed here; on a cut it reconnects, sending the last id it saw.
  async function stream() {
    let retry = 3000;
    while (!$("board").hidden) {
      const abort = new AbortController();
      view.streamAbort = abort;
      try {
        const extra = { Accept: "text/event-stream" };
        if (view.lastEventId !== null) extra["Last-Event-ID"] = view.lastEventId;
        const response = await fetch(API + "/events/stream", {
          headers: headers(extra), cache: "no-store", credentials: "omit", signal: abort.signal,
        });
        if (!response.ok) {
          let detail = response.status + " " + response.statusText;
          try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
          const err = new ApiError(response.status, detail);
          if (refused(err)) return;
          throw err;
        }
        view.streaming = true;
        live("live", "good");
        retry = await readEvents(response.body.getReader(), retry);
      } catch (err) {
        if (abort.signal.aborted) return;
        live("reconnecting", "warn");
        if (err instanceof ApiError) notify("Live updates: " + err.message, true);
      }
      view.streaming = false;
      if (abort.signal.aborted) return;
      live("reconnecting", "warn");
      await new Promise((r) => setTimeout(r, retry));
    }
  }

  async function readEvents(reader, retry) {
    const decoder = new TextDecoder();
    let buffer = "";
    let event = { type: "message", data: [], id: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return retry;
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + (buffer.startsWith("\r\n", nl) ? 2 : 1));
        if (line === "") {
          if (event.id !== null) view.lastEventId = event.id;
          if (event.data.length) dispatch(event.type, event.data.join("\n"));
          event = { type: "message", data: [], id: null };
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value2 = colon < 0 ? "" : line.slice(colon + 1);
        if (value2.startsWith(" ")) value2 = value2.slice(1);
        if (field === "event") event.type = value2;
        else if (field === "data") event.data.push(value2);
        else if (field === "id" && !value2.includes("\0")) event.id = value2;
        else if (field === "retry" && /^\d+$/.test(value2)) retry = Number(value2);
      }
    }
  }

  function dispatch(type, data) {
    let body;
    try {
      body = JSON.parse(data);
    } catch (err) {
      return;
    }
    if (type === "status") {
      renderStatus(body);
    } else if (type === "heartbeat") {
      renderBeat(body);
    } else if (type === "history") {
      keepRow(body);
      renderHistory();
      if (body.outcome !== "started") {
        reportLater();
        if (body.action && body.action.indexOf("snapshot") >= 0) loadSnapshots().catch(() => {});
      }
    }
  }

  // ------------------------------------------------------------ start

  async function loadStatus() {
    renderStatus(await call("GET", "/status"));
  }

  async function boot() {
    try {
      await loadStatus();
    } catch (err) {
      if (!refused(err)) {
        showOnly("board");
        notify(err.message, true);
      }
      return;
    }
    showOnly("board");
    notify("", false);
    // Live first: a busy controller (a revert holding the VM) answers the lists later.
    stream();
    loadReport();
    try {
      await Promise.all([loadSnapshots(), loadHistory()]);
    } catch (err) {
      if (refused(err)) return;
      notify(err.message, true);
    }
  }

  function wire() {
    $("login-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const value = $("token").value.trim();
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      $("token").value = "";
      boot();
    });
    $("forget-token").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      view.rows.clear();
      showOnly("login");
      notify("", false);
    });
    for (const b of document.querySelectorAll("[data-action]")) {
      b.addEventListener("click", async () => {
        const spec = ACTIONS[b.dataset.action];
        if (spec.ask && !(await confirmed(spec.ask))) return;
        await act("POST", spec.path);
      });
    }
    $("snapshot-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const name = $("snapshot-name").value.trim();
      const exists = [...$("snapshot-list").querySelectorAll("li > span")].some(
        (s) => s.textContent === (name || (view.status && view.status.snapshot_name))
      );
      snapshotCreate(name, exists).then(() => ($("snapshot-name").value = ""));
    });
    $("filter-trigger").addEventListener("change", renderHistory);
    $("filter-outcome").addEventListener("change", renderHistory);
    $("picture").addEventListener("close", dropPicture);
    requestAnimationFrame(animate);
  }

  wire();
  boot();
})();
