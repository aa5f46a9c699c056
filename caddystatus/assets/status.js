// Keeps the status page current: the server sends the page's main part
// again every few seconds as a server-sent event. Without this script the
// page still shows everything, and reloads itself now and then.
"use strict";
(() => {
  const main = document.getElementById("status");
  const live = document.getElementById("live");
  const generated = document.getElementById("generated");
  if (!window.EventSource || !main) {
    return;
  }
  const source = new EventSource("?feed=events");
  source.addEventListener("update", (event) => {
    main.innerHTML = event.data;
    live.textContent = "live, updated";
    if (event.lastEventId) {
      generated.dateTime = event.lastEventId;
      generated.textContent = event.lastEventId.replace("T", " ").replace("Z", " UTC");
    }
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  });
  source.addEventListener("error", () => {
    live.textContent = "reconnecting; last updated";
  });
})();
