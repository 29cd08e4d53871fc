// Refreshes every part of the operator console in place (no reload): one GET /parts returns
// each part's HTML fragment, rendered by the server, and the problems banner.
(function () {
  "use strict";
  const period = parseInt(document.body.dataset.refreshMs || "2000", 10);
  async function refresh() {
    try {
      const resp = await fetch("parts", { credentials: "same-origin", cache: "no-store" });
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const body = await resp.json();
      for (const [name, html] of Object.entries(body.parts)) {
        const el = document.getElementById("part-" + name);
        if (el) el.innerHTML = html;
      }
      const banner = document.getElementById("problems");
      banner.className = body.problems.length ? "alarm" : "ok";
      banner.replaceChildren();
      const strong = document.createElement("strong");
      strong.textContent = body.problems.length
        ? body.problems.length + (body.problems.length === 1 ? " problem:" : " problems:")
        : "All parts healthy.";
      banner.appendChild(strong);
      if (body.problems.length) {
        const ul = document.createElement("ul");
        for (const p of body.problems) {
          const li = document.createElement("li");
          li.textContent = p;
          ul.appendChild(li);
        }
        banner.appendChild(ul);
      }
      document.getElementById("updated").textContent = "updated " + body.at;
      document.body.dataset.refreshed = String((parseInt(document.body.dataset.refreshed || "0", 10) + 1));
    } catch (err) {
      document.getElementById("updated").textContent = "refresh failed: " + err.message;
    }
  }
  setInterval(refresh, period);
})();
