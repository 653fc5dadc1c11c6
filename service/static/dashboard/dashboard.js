// roomwarden dashboard: live countdowns for pending timers and actions. Nothing else runs here.
(function () {
  "use strict";

  function duration(seconds) {
    seconds = Math.round(seconds);
    if (seconds === 0) return "0s";
    var parts = [], units = [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]];
    for (var i = 0; i < units.length; i++) {
      var n = Math.floor(seconds / units[i][1]);
      if (n) parts.push(n + units[i][0]);
      seconds -= n * units[i][1];
    }
    return parts.join("");
  }

  function tick() {
    var now = Date.now() / 1000;
    var clocks = document.querySelectorAll("time.countdown[data-due]");
    for (var i = 0; i < clocks.length; i++) {
      var left = parseFloat(clocks[i].getAttribute("data-due")) - now;
      clocks[i].textContent = left >= 0 ? "in " + duration(left) : "due " + duration(-left) + " ago";
      clocks[i].classList.toggle("overdue", left < 0);
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    tick();
    window.setInterval(tick, 1000);
  });
})();
