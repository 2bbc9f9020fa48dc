// Loaded before the viewer's modules, as a classic script: when one of them
// cannot be fetched (the server restarting, a network change), the module
// graph never runs and the page would stay blank. Say so, with a way back.

window.addEventListener("error", (event) => {
  const script = event.target;
  if (!(script instanceof HTMLScriptElement) || script.type !== "module") return;
  const main = document.getElementById("main");
  const card = document.createElement("div");
  card.className = "card";
  const message = document.createElement("p");
  message.className = "page-error boot-error";
  message.setAttribute("role", "alert");
  message.textContent = "The viewer could not load all of its files from the server.";
  const reload = document.createElement("button");
  reload.type = "button";
  reload.className = "button";
  reload.textContent = "Reload";
  reload.addEventListener("click", () => location.reload());
  card.append(message, reload);
  main.replaceChildren(card);
}, true);
