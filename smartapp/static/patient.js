/* Patient view filters without a page reload. Without JavaScript the same form is a GET form
   that the server applies; here the rendered cards are shown or hidden by their data- attributes. */
(function () {
  "use strict";
  var form = document.getElementById("filters");
  if (!form) { return; }
  var cards = Array.prototype.slice.call(document.querySelectorAll(".suggestion"));
  var selects = Array.prototype.slice.call(form.querySelectorAll("select[data-filter]"));
  var count = document.getElementById("shown-count");
  var none = document.getElementById("no-match");
  var total = cards.length;

  function apply() {
    var shown = 0;
    var active = false;
    cards.forEach(function (card) {
      var visible = selects.every(function (select) {
        if (!select.value) { return true; }
        active = true;
        var values = (card.getAttribute("data-" + select.getAttribute("data-filter")) || "").split(" ");
        return values.indexOf(select.value) !== -1;
      });
      card.hidden = !visible;
      if (visible) { shown += 1; }
    });
    if (count) {
      var noun = total === 1 ? "program" : "programs";
      count.textContent = active ? shown + " of " + total + " " + noun + " suggested shown with these filters."
                                 : total + " " + noun + " suggested.";
    }
    if (none) { none.hidden = !(active && shown === 0 && total > 0); }
    if (window.history && window.history.replaceState) {
      var params = new URLSearchParams(new FormData(form));
      selects.forEach(function (s) { if (!s.value) { params.delete(s.name); } });
      var query = params.toString();
      window.history.replaceState(null, "", window.location.pathname + (query ? "?" + query : ""));
    }
  }

  selects.forEach(function (select) { select.addEventListener("change", apply); });
  form.addEventListener("submit", function (event) { event.preventDefault(); apply(); });
  Array.prototype.forEach.call(form.querySelectorAll(".js-hide"), function (el) { el.hidden = true; });
  apply();
})();
