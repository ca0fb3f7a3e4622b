// Forms with data-confirm ask before they are sent (a script file: the console's
// Content-Security-Policy allows no inline script).
document.addEventListener("submit", (event) => {
  const message = event.target.getAttribute("data-confirm");
  if (message && !window.confirm(message)) {
    event.preventDefault();
  }
});
