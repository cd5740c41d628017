/* Complete form: choosing who the program contacts fills in that person's phone, email and
   language from the chart (still editable). Without JavaScript the server's defaults stand. */
(function () {
  "use strict";
  var data = document.getElementById("contact-people");
  if (!data) { return; }
  var people = JSON.parse(data.textContent || "[]");
  var phone = document.getElementById("contact_phone");
  var email = document.getElementById("contact_email");
  var language = document.getElementById("language");
  var last = null;
  function person(ref) {
    for (var i = 0; i < people.length; i += 1) { if (people[i].reference === ref) { return people[i]; } }
    return null;
  }
  function fill(field, oldValue, newValue) {
    // Keep what the social worker typed; replace only what came from the previous person.
    if (field && (!field.value || (oldValue !== null && field.value === oldValue))) { field.value = newValue || ""; }
  }
  Array.prototype.forEach.call(document.querySelectorAll("input[name=contact_person]"), function (radio) {
    if (radio.checked) { last = person(radio.value); }
    radio.addEventListener("change", function () {
      var chosen = person(radio.value);
      if (!chosen) { return; }
      fill(phone, last ? last.phone : null, chosen.phone);
      fill(email, last ? last.email : null, chosen.email);
      if (language && chosen.language) {
        for (var i = 0; i < language.options.length; i += 1) {
          if (language.options[i].value === chosen.language) { language.value = chosen.language; }
        }
      }
      last = chosen;
    });
  });
})();
