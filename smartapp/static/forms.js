/* Every page: Enter on a checkbox or radio button never submits its form (Space toggles it, as
   the platform does; a stray Enter used to send the handout or the referral). */
(function () {
  "use strict";
  document.addEventListener("keydown", function (event) {
    var el = event.target;
    if (event.key === "Enter" && el && el.tagName === "INPUT" && (el.type === "checkbox" || el.type === "radio")) {
      event.preventDefault();
    }
  });
})();
