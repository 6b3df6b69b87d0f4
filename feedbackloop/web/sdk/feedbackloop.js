/*! feedbackloop.js - explicit and implicit feedback from the browser to a feedbackloop
 * collector. No dependencies, no build step. Served by the collector at /sdk/feedbackloop.js.
 *
 *   <script src="https://collector.example/sdk/feedbackloop.js" data-key="pk_..."
 *           data-respect-dnt="true" defer></script>
 *   <div data-feedbackloop-interaction="{interaction id}">the model's answer</div>
 *   <button data-feedbackloop-thumbs="up" data-feedbackloop-for="{id}">Good</button>
 *
 * Marked responses report copy (copied_chars), edit (when an editable response loses focus
 * changed: edited_text, edit_distance), dwell (time on screen while the page is visible)
 * and abandon (the page is left right after the latest answer, with no thumbs, rating, copy
 * or edit on it). Calls:
 * feedbackloop.thumbs(id, up), .rate(id, 1-5), .comment(id, text), .implicit(id, signal,
 * fields), .outcome(name, fields), .widget(element, {interactionId, kind}), .flush().
 * Events are batched, posted with the public key, retried with back-off on 429/5xx and
 * network errors (event ids make retries idempotent), and sent with navigator.sendBeacon
 * when the page is hidden or left. With respectDoNotTrack, nothing is ever sent when the
 * browser asks not to be tracked (Do Not Track or Global Privacy Control).
 */
(function (window, document) {
  "use strict";
  if (window.feedbackloop && window.feedbackloop.version) return; // loaded twice

  var ATTR = "data-feedbackloop-interaction";
  var BEACON_MAX = 60000; // bytes; browsers refuse beacons over 64 KiB
  var MAX_TEXT = 100000;
  var script = document.currentScript;
  var config = {
    endpoint: "",
    key: "",
    sessionId: "",
    userId: "",
    respectDoNotTrack: false,
    batchSize: 20,
    flushMs: 1000,
    maxRetries: 6,
    auto: true,
  };
  var queue = [];
  var timer = null;
  var sending = false;
  var inflight = null; // the batch being posted, resent by beacon if the page goes first
  var retries = 0;
  var disabled = false;
  var started = false;
  var watched = {}; // interaction id -> state of its response element
  var pageVisible = document.visibilityState === "visible";
  var latest = null; // the interaction of the answer seen last

  function uuid() {
    if (window.crypto && window.crypto.randomUUID) return window.crypto.randomUUID();
    var b = new Uint8Array(16); // randomUUID needs a secure context; this does not
    window.crypto.getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    var h = Array.prototype.map.call(b, function (x) { return (x + 256).toString(16).slice(1); }).join("");
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

  function doNotTrack() {
    var n = window.navigator;
    return n.doNotTrack === "1" || n.doNotTrack === "yes" || window.doNotTrack === "1" ||
      n.msDoNotTrack === "1" || n.globalPrivacyControl === true;
  }

  function session() {
    if (config.sessionId) return config.sessionId;
    try {
      var s = window.sessionStorage.getItem("feedbackloop.session");
      if (!s) { s = uuid(); window.sessionStorage.setItem("feedbackloop.session", s); }
      return (config.sessionId = s);
    } catch (e) { // storage blocked: one session per page load
      return (config.sessionId = uuid());
    }
  }

  function url() {
    return config.endpoint.replace(/\/+$/, "") + "/v1/events?key=" + encodeURIComponent(config.key);
  }

  function enqueue(event) {
    if (disabled || !config.key) return null;
    var el = watched[event.interaction_id];
    event.event_id = uuid();
    event.occurred_at = new Date().toISOString();
    event.session_id = (el && el.session) || session();
    if (config.userId) event.user_id = config.userId;
    queue.push(event);
    if (queue.length >= config.batchSize) flush();
    else if (!timer) timer = window.setTimeout(flush, config.flushMs);
    return event.event_id;
  }

  // Posts one batch at a time; a batch the collector could not take goes back in front.
  function flush() {
    if (timer) { window.clearTimeout(timer); timer = null; }
    if (sending || !queue.length) return;
    var batch = queue.splice(0, 500);
    var body = JSON.stringify(batch);
    sending = true;
    inflight = batch;
    // text/plain and the key in the URL: a "simple" request, so no CORS preflight.
    // keepalive (the request outlives the page) only within the browsers' 64 KiB budget.
    window.fetch(url(), { method: "POST", body: body, keepalive: body.length < BEACON_MAX / 3,
      headers: { "Content-Type": "text/plain" }, credentials: "omit", mode: "cors" })
      .then(function (r) {
        if (r.status === 429 || r.status >= 500) throw new Error("status " + r.status);
        if (r.status >= 400) warn("collector refused a batch: " + r.status);
        retries = 0;
      })
      .catch(function (e) {
        if (++retries > config.maxRetries) {
          warn("dropping " + batch.length + " events after " + config.maxRetries + " retries: " + e);
          retries = 0;
          return;
        }
        queue = batch.concat(queue);
      })
      .then(function () {
        sending = false;
        inflight = null;
        if (queue.length) timer = window.setTimeout(flush, retries ? Math.min(30000, 500 * Math.pow(2, retries)) : 0);
      });
  }

  // The page is going away: whatever is queued leaves with the browser's beacon.
  function beacon() {
    if (timer) { window.clearTimeout(timer); timer = null; }
    // At least once: a batch still in flight may die with the page; event ids make the
    // copy harmless.
    if (inflight) { queue = inflight.concat(queue); inflight = null; }
    while (queue.length) {
      var n = queue.length;
      var blob = new window.Blob([JSON.stringify(queue)], { type: "text/plain" });
      while (n > 1 && blob.size > BEACON_MAX) {
        n = Math.ceil(n / 2);
        blob = new window.Blob([JSON.stringify(queue.slice(0, n))], { type: "text/plain" });
      }
      if (!(window.navigator.sendBeacon && window.navigator.sendBeacon(url(), blob))) return;
      queue.splice(0, n);
    }
  }

  function warn(msg) { if (window.console) window.console.warn("feedbackloop: " + msg); }

  function textOf(el) {
    return el.tagName === "TEXTAREA" || el.tagName === "INPUT" ? el.value : el.innerText || el.textContent || "";
  }

  // Levenshtein distance, in O(min(a, b)) memory; null when too large to compute quickly.
  function distance(a, b) {
    if (a.length * b.length > 4e6) return null;
    if (a.length < b.length) { var t = a; a = b; b = t; }
    var prev = [], cur, i, j;
    for (j = 0; j <= b.length; j++) prev[j] = j;
    for (i = 1; i <= a.length; i++) {
      cur = [i];
      for (j = 1; j <= b.length; j++) {
        cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
      }
      prev = cur;
    }
    return prev[b.length];
  }

  function interactionOf(node) {
    for (; node && node !== document; node = node.parentNode) {
      if (node.nodeType !== 1) continue;
      if (node.hasAttribute("data-feedbackloop-for")) return node.getAttribute("data-feedbackloop-for");
      if (node.hasAttribute(ATTR)) return node.getAttribute(ATTR);
    }
    return null;
  }

  function engaged(id) { if (watched[id]) watched[id].engaged = true; }

  // --------------------------------------------------------------- implicit signals

  function watch(el) {
    var id = el.getAttribute(ATTR);
    if (!id || (watched[id] && watched[id].el === el)) return;
    // original: the text when the user starts editing (an answer may still be streaming in
    // when it is first seen)
    latest = id;
    watched[id] = { el: el, id: id, session: el.getAttribute("data-feedbackloop-session") || "",
      original: null, reported: null, engaged: false, visible: false, since: 0, dwell: 0, abandoned: false };
    var st = watched[id];
    if (window.IntersectionObserver) {
      new window.IntersectionObserver(function (entries) {
        entries.forEach(function (e) { setVisible(st, e.isIntersecting); });
      }, { threshold: 0.5 }).observe(el);
    } else {
      setVisible(st, true);
    }
  }

  function setVisible(st, visible) {
    var now = Date.now();
    var counting = st.visible && pageVisible;
    if (counting && st.since) st.dwell += now - st.since;
    st.visible = visible;
    st.since = now;
  }

  function reportDwell() {
    Object.keys(watched).forEach(function (id) {
      var st = watched[id];
      setVisible(st, st.visible);
      if (st.dwell >= 1) {
        enqueue({ event_type: "implicit", interaction_id: id, signal: "dwell", dwell_ms: st.dwell });
        st.dwell = 0;
      }
    });
  }

  function onCopy(e) {
    var sel = document.getSelection && document.getSelection();
    var text = sel ? String(sel) : "";
    var id = interactionOf(sel && sel.anchorNode) || interactionOf(e.target);
    if (!id || !watched[id]) return;
    var t = e.target;
    if (!text && t && t.value !== undefined && t.selectionEnd !== undefined) text = t.value.slice(t.selectionStart, t.selectionEnd);
    engaged(id);
    enqueue({ event_type: "implicit", interaction_id: id, signal: "copy", copied_chars: text.length });
  }

  function onEditStart(e) {
    var id = e.target && e.target.getAttribute && e.target.getAttribute(ATTR);
    var st = id && watched[id];
    if (st && st.el === e.target && st.original === null) st.original = st.reported = textOf(st.el);
  }

  function onEditEnd(e) {
    var id = e.target && e.target.getAttribute && e.target.getAttribute(ATTR);
    var st = id && watched[id];
    if (!st || st.el !== e.target || st.original === null) return;
    var now = textOf(st.el);
    if (now === st.reported) return;
    st.reported = now;
    engaged(id);
    var ev = { event_type: "implicit", interaction_id: id, signal: "edit", edited_text: now.slice(0, MAX_TEXT) };
    var d = distance(st.original, now);
    if (d !== null) ev.edit_distance = d;
    enqueue(ev);
  }

  function onHidden() {
    if (document.visibilityState !== "hidden") {
      pageVisible = true;
      Object.keys(watched).forEach(function (id) { watched[id].since = Date.now(); });
      return;
    }
    reportDwell(); // counts up to now, while the page still counts as visible
    pageVisible = false;
    beacon();
  }

  // Abandon: the page is left right after the latest answer, with no thumbs, rating, copy
  // or edit on it. Earlier answers were followed by more conversation, not abandoned.
  function onPageHide() {
    reportDwell();
    var st = latest && watched[latest];
    if (st && !st.engaged && !st.abandoned) {
      st.abandoned = true;
      enqueue({ event_type: "implicit", interaction_id: st.id, signal: "abandon" });
    }
    beacon();
  }

  // ------------------------------------------------------------- explicit feedback

  function onClick(e) {
    var el = e.target && e.target.closest && e.target.closest("[data-feedbackloop-thumbs],[data-feedbackloop-rating]");
    if (!el) return;
    var id = interactionOf(el);
    if (!id) return;
    if (el.hasAttribute("data-feedbackloop-thumbs")) api.thumbs(id, el.getAttribute("data-feedbackloop-thumbs") !== "down");
    else api.rate(id, parseInt(el.getAttribute("data-feedbackloop-rating"), 10));
    var group = el.parentNode ? el.parentNode.children : [];
    for (var i = 0; i < group.length; i++) group[i].setAttribute("aria-pressed", String(group[i] === el));
  }

  function button(label, attr, value, title) {
    var b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.title = title;
    b.setAttribute(attr, value);
    b.setAttribute("aria-pressed", "false");
    return b;
  }

  function scan(root) {
    if (!root || root.nodeType !== 1) return;
    if (root.hasAttribute(ATTR)) watch(root);
    var found = root.querySelectorAll("[" + ATTR + "]");
    for (var i = 0; i < found.length; i++) watch(found[i]);
    var widgets = root.querySelectorAll("[data-feedbackloop-widget]");
    for (i = 0; i < widgets.length; i++) {
      if (!widgets[i].childElementCount) api.widget(widgets[i], { kind: widgets[i].getAttribute("data-feedbackloop-widget") });
    }
  }

  function start() {
    if (started) return;
    started = true;
    document.addEventListener("copy", onCopy, true);
    document.addEventListener("focusin", onEditStart, true);
    document.addEventListener("focusout", onEditEnd, true);
    document.addEventListener("click", onClick, true);
    document.addEventListener("visibilitychange", onHidden);
    window.addEventListener("pagehide", onPageHide);
    if (!config.auto) return;
    scan(document.body);
    if (window.MutationObserver) { // chat apps add answers as they arrive
      new window.MutationObserver(function (records) {
        records.forEach(function (r) { Array.prototype.forEach.call(r.addedNodes, scan); });
      }).observe(document.body, { childList: true, subtree: true });
    }
  }

  var api = {
    version: "1",
    init: function (options) {
      for (var k in options) if (Object.prototype.hasOwnProperty.call(options, k)) config[k] = options[k];
      disabled = !!(config.respectDoNotTrack && doNotTrack());
      if (disabled) { queue = []; return api; }
      if (document.body) start();
      else document.addEventListener("DOMContentLoaded", start);
      return api;
    },
    thumbs: function (id, up) {
      engaged(id);
      return enqueue({ event_type: "feedback", interaction_id: id, kind: "thumbs", thumbs: up ? 1 : -1 });
    },
    rate: function (id, rating) {
      engaged(id);
      return enqueue({ event_type: "feedback", interaction_id: id, kind: "rating", rating: rating });
    },
    comment: function (id, text) {
      engaged(id);
      return enqueue({ event_type: "feedback", interaction_id: id, kind: "comment", text: String(text).slice(0, MAX_TEXT) });
    },
    implicit: function (id, signal, fields) {
      var ev = { event_type: "implicit", interaction_id: id, signal: signal };
      for (var k in fields || {}) ev[k] = fields[k];
      return enqueue(ev);
    },
    outcome: function (name, fields) {
      var ev = { event_type: "outcome", outcome: name };
      for (var k in fields || {}) ev[k] = fields[k];
      return enqueue(ev);
    },
    // Thumbs (or 1-5 rating) buttons for an interaction, inside `element`.
    widget: function (element, options) {
      options = options || {};
      var id = options.interactionId || interactionOf(element);
      if (!id) { warn("widget without an interaction id"); return element; }
      element.setAttribute("data-feedbackloop-for", id);
      element.setAttribute("role", "group");
      if (options.kind === "rating") {
        for (var n = 1; n <= 5; n++) element.appendChild(button(String(n), "data-feedbackloop-rating", String(n), "Rate " + n + " of 5"));
      } else {
        element.appendChild(button("\uD83D\uDC4D", "data-feedbackloop-thumbs", "up", "Helpful"));
        element.appendChild(button("\uD83D\uDC4E", "data-feedbackloop-thumbs", "down", "Not helpful"));
      }
      return element;
    },
    watch: function (element) { watch(element); return api; },
    flush: function () { flush(); return api; },
    get pending() { return queue.length; },
    get enabled() { return !disabled; },
  };
  window.feedbackloop = api;

  if (script && script.getAttribute("data-key")) {
    var src = script.src ? new window.URL(script.src, window.location.href) : window.location;
    api.init({
      key: script.getAttribute("data-key"),
      endpoint: script.getAttribute("data-endpoint") || src.origin,
      sessionId: script.getAttribute("data-session") || "",
      userId: script.getAttribute("data-user") || "",
      respectDoNotTrack: script.getAttribute("data-respect-dnt") === "true",
      auto: script.getAttribute("data-auto") !== "false",
    });
  }
})(window, document);
