/* Constants and helpers. Labels are set as textContent (or fillText): "<script>" is shown, not parsed. */
const NODE_W = 130, NODE_H = 34, GAP_X = 14, ROW_H = 96, SLIDER_STEPS = 1000;
const EMPTY_W = 50;  /* a token column without nodes */
const INITIAL_EDGES = 300, LEGIBLE_ZOOM = 0.8, MAX_ZOOM = 1.5, LABEL_W = 90;
const WHOLE_TOKENS_ZOOM = 0.6;  /* a token axis this close to fitting opens whole, a little smaller */
const BLUE = [33, 102, 172], RED = [178, 24, 43];

const el = (tag, className, text) => {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
};

const fmt = (x) => (x === null || x === undefined ? "n/a" : Number(x).toPrecision(3).replace(/\.?0+(e|$)/, "$1"));

/* Tokens as drawn in the static image: control characters as their Unicode pictures. */
const visible = (token) =>
  String(token).replace(/[\u0000-\u001f]/g, (c) => String.fromCharCode(0x2400 + c.charCodeAt(0)));

const rgba = (rgb, alpha) => `rgba(${rgb[0]},${rgb[1]},${rgb[2]},${alpha.toFixed(3)})`;
