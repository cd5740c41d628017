/* The handout's Print button (inline handlers are blocked by the CSP). */
(function () {
  "use strict";
  var button = document.getElementById("print-handout");
  if (button) { button.addEventListener("click", function () { window.print(); }); }
})();
