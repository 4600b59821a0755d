/* steer.py commands ([label, text] pairs), each with a copy button: the clipboard API where the page
 * may use it, else a selected textarea in `root`. */
function steerBox(lines, root) {
  const box = el("div", "sc-steer");
  box.appendChild(el("div", "sc-heading", "test it with steer.py (add --config PATH for yours)"));
  for (const [label, text] of lines) {
    const row = el("div", "sc-steer-row");
    const button = el("button", "sc-copy", "copy");
    button.title = `copy the ${label} command`;
    button.addEventListener("click", () => copyText(text, button, root));
    row.append(el("span", "sc-steer-label", label), el("pre", "sc-steer-code", text), button);
    box.appendChild(row);
  }
  return box;
}

function copyText(text, button, root) {
  const done = () => {
    button.textContent = "copied";
    setTimeout(() => { button.textContent = "copy"; }, 1500);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, () => copyBySelection(text, root) && done());
  } else if (copyBySelection(text, root)) {
    done();
  }
}

function copyBySelection(text, root) {
  const area = el("textarea", "sc-copy-area");
  area.value = text;
  root.appendChild(area);
  area.select();
  let ok = false;
  try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
  root.removeChild(area);
  return ok;
}
