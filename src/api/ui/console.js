// The console's only script: keeps the inbox current. It listens to the alert stream of the
// signed-in person (/ui/events, the gateway's stream filtered by the treatment relationship)
// and, when an alert is raised, changed or closed, reloads the inbox page through the same
// request a reload would make and swaps in its table. Without this script the page works the
// same, one reload behind.
(function () {
  "use strict";
  var table = document.getElementById("alerts");
  var live = document.getElementById("live");
  if (!table || !live || !window.EventSource || !window.DOMParser) {
    return;
  }
  var pending = null;
  function refresh() {
    pending = null;
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.getElementById("alerts");
        var current = document.getElementById("alerts");
        if (fresh && current) {
          current.replaceWith(document.importNode(fresh, true));
          live.textContent = live.getAttribute("data-changed");
        }
      })
      .catch(function () { /* the next event or a reload tries again */ });
  }
  var source = new EventSource("/ui/events");
  source.addEventListener("open", function () {
    live.textContent = live.getAttribute("data-on");
  });
  source.addEventListener("alert", function () {
    // Several changes of one commit arrive together: one reload for them.
    if (pending === null) {
      pending = window.setTimeout(refresh, 150);
    }
  });
})();
