// herd console: progressive enhancement. Every page works without this script; with it,
//  - regions marked data-live="<event types>" reload when such an event arrives on the
//    tenant's event stream (/ui/events/stream, the API's SSE stream behind the session
//    cookie): the page is fetched again and each such region is swapped by its id;
//  - forms marked data-confirm="question" ask before they are sent.
"use strict";

(function () {
  function liveRegions() {
    return Array.prototype.slice.call(document.querySelectorAll("[data-live]"));
  }

  function typesOf(element) {
    return (element.getAttribute("data-live") || "").split(/\s+/).filter(Boolean);
  }

  var pending = {};
  var timer = null;
  var inFlight = false;

  // Reloads the page in the background and swaps the regions waiting for a refresh.
  function refresh() {
    timer = null;
    if (inFlight) { schedule(); return; }
    var ids = Object.keys(pending);
    pending = {};
    if (ids.length === 0) return;
    inFlight = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Console-Refresh": "1" } })
      .then(function (response) {
        if (response.redirected || !response.ok) return null;
        return response.text();
      })
      .then(function (text) {
        if (!text) return;
        var fresh = new DOMParser().parseFromString(text, "text/html");
        ids.forEach(function (id) {
          var current = document.getElementById(id);
          var replacement = fresh.getElementById(id);
          if (current && replacement && !current.contains(document.activeElement)) {
            current.replaceWith(document.importNode(replacement, true));
          }
        });
        document.dispatchEvent(new CustomEvent("herd:refreshed", { detail: { ids: ids } }));
      })
      .catch(function () { /* the next event tries again */ })
      .then(function () { inFlight = false; });
  }

  function schedule() {
    if (timer === null) timer = window.setTimeout(refresh, 400);
  }

  function connect() {
    var regions = liveRegions();
    if (regions.length === 0 || !window.EventSource) return;
    var wanted = {};
    regions.forEach(function (region) {
      typesOf(region).forEach(function (type) { wanted[type] = true; });
    });
    var types = Object.keys(wanted);
    if (types.length === 0) return;
    var source = new EventSource("/ui/events/stream?type=" + encodeURIComponent(types.join(",")));
    types.forEach(function (type) {
      source.addEventListener(type, function () {
        liveRegions().forEach(function (region) {
          if (typesOf(region).indexOf(type) >= 0 && region.id) pending[region.id] = true;
        });
        schedule();
      });
    });
    document.documentElement.setAttribute("data-live-connected", "true");
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });

  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("[data-copy]");
    if (!button || !navigator.clipboard) return;
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source) return;
    navigator.clipboard.writeText(source.textContent.trim()).then(function () {
      button.textContent = "Copied";
    }, function () { /* the text stays selectable */ });
  });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", connect);
  } else {
    connect();
  }
})();
