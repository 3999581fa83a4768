// Dates are rendered in UTC; show them in the browser's time zone when scripts run.
document.querySelectorAll("time[datetime]").forEach(function (el) {
  var d = new Date(el.getAttribute("datetime"));
  if (!isNaN(d)) {
    el.title = el.textContent;
    el.textContent = d.toLocaleString("ru-RU", { dateStyle: "short", timeStyle: "short" });
  }
});
