/* The handout's Print button (inline handlers are blocked by the CSP). Inside the EHR's frame
   print() is blocked (a sandboxed iframe without allow-modals): there the button opens the
   handout in a new window instead, and says so; anywhere print() does nothing, it says so. */
(function () {
  "use strict";
  var button = document.getElementById("print-handout");
  var status = document.getElementById("print-status");
  var opener = document.getElementById("open-window");
  var framed = false;
  try { framed = window.self !== window.top; } catch (e) { framed = true; }
  function say(text) { if (status) { status.textContent = text; } }
  if (!button) { return; }
  if (framed) {
    button.textContent = "Print (opens a new window)";
    if (opener) { opener.hidden = true; }
  } else if (opener) {
    opener.hidden = true;  // already a window of its own: Print works here
  }
  button.addEventListener("click", function () {
    if (framed) {
      var win = window.open(window.location.href, "_blank");
      if (win) {
        say("The handout opened in a new window: print it from there.");
      } else {
        say("Printing is blocked inside the EHR and the new window was blocked too. Use the link above, or allow pop-ups for PeerBridge.");
        if (opener) { opener.hidden = false; }
      }
      return;
    }
    var started = false;
    var mark = function () { started = true; };
    window.addEventListener("beforeprint", mark, { once: true });
    window.print();
    window.setTimeout(function () {
      window.removeEventListener("beforeprint", mark);
      if (!started) {
        say("This browser window blocked printing. Use your browser's Print command (Ctrl+P or Cmd+P).");
      }
    }, 500);
  });
})();
