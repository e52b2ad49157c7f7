"use strict";
(() => {
const D = JSON.parse(document.getElementById("report-data").textContent);

// Children are nodes, strings or arrays of them: a list as long as a sweep's values is passed as an
// array, never spread into arguments (100,000 arguments overflow the stack).
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

class Sweep {
  constructor(data, index) {
    Object.assign(this, data);
    this.index = index;
    this.at = new Map(data.columns.map((name, i) => [name, i]));
    this.coded = new Map(Object.entries(data.codes));
    this.rank = new Map(Object.entries(data.values).map(([name, labels]) => [name, new Map(labels.map((v, i) => [v, i]))]));
  }
  get size() { return this.rows.length; }
  value(i, name) {
    if (this.coded.has(name)) return this.values[name][this.coded.get(name)[i]];
    return this.at.has(name) ? this.rows[i][this.at.get(name)] : this.constants[name];
  }
  label(name, code) { return name ? this.values[name][code] : ""; }
  href(path) { return this.base + path.split("/").map(encodeURIComponent).join("/"); }
  full(i) { return this.href(this.value(i, "path")); }
  // The small WEBP while tiles are no larger than it; the image itself above that.
  thumb(i) { return this.state[i] === "ok" && view.size <= D.thumbSide ? this.href(this.thumbs + this.value(i, "image_id") + this.ext) : this.full(i); }
  describe(i) { return this.swept.map((name) => `${name}=${this.value(i, name)}`).join(", "); }
  shortLabel(name, v) { return (name && this.short[name] && this.short[name][v]) || v; }
}
const sweeps = D.sweeps.map((data, i) => new Sweep(data, i));
const main = sweeps[0];
// Scores of the main sweep's images (scored.page_scores): per score its value by row, null where none.
const scores = new Map(D.scores.map((score) => [score.id, score]));
const scoreText = (v) => String(Number(v.toPrecision(4)));

function tile(sweep, i) {
  const state = sweep.state[i];
  const node = el("button", {type: "button", class: `tile ${state}`, "data-s": sweep.index, "data-i": i, title: sweep.describe(i)});
  const tint = sweep === main && scores.get(view.tint);
  if (tint && tint.values[i] !== null) {  // low red to high green over the sweep's range, the value written on it
    const v = tint.values[i], t = tint.high > tint.low ? (v - tint.low) / (tint.high - tint.low) : 1;
    node.classList.add("tinted");
    node.style.setProperty("--tint", `hsl(${Math.round(t * 120)}, 75%, 42%)`);
    node.title += ` · ${tint.id} ${scoreText(v)} (scorer ${tint.by})`;
    node.append(el("span", {class: "score", text: scoreText(v)}));
  }
  if (state === "error") {
    const message = sweep.value(i, "error");
    node.append(el("span", {class: "note", text: "error"}), el("span", {class: "msg", text: message === "null" ? "" : message}));
  } else if (state === "missing") {
    node.append(el("span", {class: "note", text: "missing file"}));
  } else {
    const img = el("img", {loading: "lazy", decoding: "async", alt: sweep.describe(i), src: sweep.thumb(i)});
    img.addEventListener("error", () => {
      node.classList.add("broken");
      img.replaceWith(el("span", {class: "note", text: "image not found"}));
    }, {once: true});
    node.append(img);
  }
  return node;
}

function pager(hosts, count, current, go) {
  for (const host of hosts) {
    host.replaceChildren();
    if (count <= 1) continue;
    const prev = el("button", {type: "button", class: "prev", text: "‹ previous"});
    const next = el("button", {type: "button", class: "next", text: "next ›"});
    const pick = el("select", {"aria-label": "page"},
      Array.from({length: count}, (_, n) => el("option", {value: n, text: `page ${n + 1} of ${count}`})));
    prev.disabled = current === 0;
    next.disabled = current === count - 1;
    pick.value = String(current);
    prev.addEventListener("click", () => go(current - 1));
    next.addEventListener("click", () => go(current + 1));
    pick.addEventListener("change", () => go(Number(pick.value)));
    host.append(prev, pick, next);
  }
}

// View state lives in the URL hash, so a view can be shared or reloaded.
const params = new URLSearchParams(location.hash.slice(1));
const view = {
  x: params.has("x") && D.axes.includes(params.get("x")) ? params.get("x") : D.x,
  y: params.has("y") && D.axes.includes(params.get("y")) ? params.get("y") : D.y,
  filters: {},
  page: Math.max(0, Number(params.get("page")) - 1 || 0),
  pairPage: Math.max(0, Number(params.get("pairs")) - 1 || 0),
  size: D.sizes.includes(Number(params.get("size"))) ? Number(params.get("size")) : D.size,
  sortBy: scores.has(params.get("sort")) ? params.get("sort") : D.sortBy,
  tint: scores.has(params.get("tint")) ? params.get("tint") : D.tint,
};
const setSize = () => document.documentElement.style.setProperty("--cell", `${view.size}px`);
setSize();
if (params.get("x") === "") view.x = "";
if (params.get("y") === "") view.y = "";
if (params.get("sort") === "") view.sortBy = "";
if (params.get("tint") === "") view.tint = "";
for (const name of main.swept) {
  const value = params.get(`f.${name}`);
  if (value !== null && main.rank.get(name).has(value)) view.filters[name] = value;
}

function saveHash(image, pair) {
  const out = new URLSearchParams();
  out.set("x", view.x);
  out.set("y", view.y);
  for (const [name, value] of Object.entries(view.filters)) out.set(`f.${name}`, value);
  if (view.page) out.set("page", view.page + 1);
  if (view.pairPage) out.set("pairs", view.pairPage + 1);
  if (view.size !== D.size) out.set("size", view.size);
  if (view.sortBy !== D.sortBy) out.set("sort", view.sortBy);
  if (view.tint !== D.tint) out.set("tint", view.tint);
  if (image) out.set("img", image);
  if (pair !== undefined) out.set("pair", pair + 1);
  history.replaceState(null, "", `#${out}`);
}

const EAGER_OPTIONS = 1000;  // a select with more (a key of 100,000 seeds) lists them once it is opened

function select(text, value, options, change) {
  const node = el("select", {});
  const fill = (list) => {
    node.replaceChildren();
    for (const [v, t] of list) node.append(el("option", {value: v, text: t}));
    node.value = value;
  };
  if (options.length > EAGER_OPTIONS) {
    fill(options.filter(([v], n) => n === 0 || v === value));  // "all" (or the first) and the current value
    const all = () => {
      node.removeEventListener("focus", all);
      node.removeEventListener("pointerdown", all);
      fill(options);
    };
    node.addEventListener("focus", all);
    node.addEventListener("pointerdown", all);
  } else {
    fill(options);
  }
  node.addEventListener("change", () => change(node.value));
  return el("label", {text}, node);
}

function controls() {
  const axes = [["", "(none)"], ...D.axes.map((name) => [name, name])];
  const setAxis = (axis, other) => (value) => {
    if (value && value === view[other]) view[other] = view[axis];
    view[axis] = value;
    view.page = 0;
    renderGrid();
  };
  const host = document.getElementById("grid-controls");
  const sizes = D.sizes.map((px) => [String(px), `${px} px`]);
  const resize = select("image size", String(view.size), sizes, (value) => {
    view.size = Number(value);
    setSize();
    renderGrid();
    renderCompare();
  });
  resize.classList.add("size");
  host.replaceChildren(resize, select("x (columns)", view.x, axes, setAxis("x", "y")), select("y (rows)", view.y, axes, setAxis("y", "x")));
  if (scores.size) {
    const ids = D.scores.map((score) => [score.id, `${score.id} (${score.by})`]);
    const sortBy = select("sort by score", view.sortBy, [["", "(axis order)"], ...ids], (value) => {
      view.sortBy = value;
      view.page = 0;
      renderGrid();
    });
    const tintBy = select("tint by score", view.tint, [["", "(none)"], ...ids], (value) => {
      view.tint = value;
      renderGrid();
      renderCompare();
    });
    sortBy.classList.add("sort-by");
    tintBy.classList.add("tint");
    host.append(sortBy, tintBy);
  }
  for (const name of main.swept) {
    const options = [["\u0000", "all"], ...main.values[name].map((v) => [v, v])];
    host.append(select(name, view.filters[name] ?? "\u0000", options, (value) => {
      if (value === "\u0000") delete view.filters[name];
      else view.filters[name] = value;
      view.page = 0;
      renderGrid();
    }));
  }
}

// Which image goes in which cell follows sweeper/report/layout.py, on the codes it gives each image
// (its value's place in display order, per axis): sections by the codes of the other swept keys in
// order, columns and rows the x and y codes that occur in a section, cells in manifest order.
function gridBlocks() {
  const {x, y, filters} = view;
  const keys = main.swept.filter((name) => name !== x && name !== y && !(name in filters));
  const none = new Array(main.size).fill(0);  // no axis, or a constant one: one column or row
  const along = (name) => main.coded.get(name) || none;
  const kept = Object.entries(filters).map(([name, v]) => [along(name), main.rank.get(name).get(v)]);
  const keyCodes = keys.map(along), xCodes = along(x), yCodes = along(y);
  const width = x ? main.values[x].length : 1;
  const sections = new Map();
  let shown = 0;
  for (let i = 0; i < main.size; i++) {
    if (!kept.every(([codes, code]) => codes[i] === code)) continue;
    const key = keyCodes.map((codes) => codes[i]);
    const id = key.join(",");
    let section = sections.get(id);
    if (!section) sections.set(id, (section = {key, xs: new Set(), ys: new Set(), cells: new Map()}));
    const xc = xCodes[i], yc = yCodes[i], at = yc * width + xc;
    section.xs.add(xc);
    section.ys.add(yc);
    if (!section.cells.has(at)) section.cells.set(at, []);
    section.cells.get(at).push(i);
    shown++;
  }
  const ordered = [...sections.values()].sort((a, b) => {
    for (let n = 0; n < keys.length; n++) {
      if (a.key[n] !== b.key[n]) return a.key[n] - b.key[n];
    }
    return 0;
  });
  const blocks = [];
  for (const section of ordered) {
    let xs = [...section.xs].sort((a, b) => a - b), ys = [...section.ys].sort((a, b) => a - b);
    if (scores.has(view.sortBy)) [xs, ys] = byScore(section, width, xs, ys, scores.get(view.sortBy).values);
    const title = keys.map((name, n) => `${name} = ${main.label(name, section.key[n])}`).join(" · ");
    const colStep = Math.min(xs.length, D.maxCols);
    const rowStep = Math.max(1, Math.floor(D.pageCells / colStep));
    for (let r = 0; r < ys.length; r += rowStep) {
      for (let c = 0; c < xs.length; c += colStep) {
        const split = xs.length > colStep || ys.length > rowStep;
        const rowsPart = `rows ${r + 1}–${Math.min(r + rowStep, ys.length)} of ${ys.length}`;
        const part = split ? `${rowsPart}, columns ${c + 1}–${Math.min(c + colStep, xs.length)} of ${xs.length}` : "";
        blocks.push({title, part, xs: xs.slice(c, c + colStep), ys: ys.slice(r, r + rowStep), width, cells: section.cells});
      }
    }
  }
  return {blocks, sections: ordered.length, shown};
}

// A section's columns and rows ordered by the mean score of their images, best first (unscored last).
function byScore(section, width, xs, ys, values) {
  const sums = {x: new Map(), y: new Map()};
  const add = (sum, code, v) => { const [total, n] = sum.get(code) || [0, 0]; sum.set(code, [total + v, n + 1]); };
  for (const [at, rows] of section.cells) {
    for (const i of rows) {
      if (values[i] === null) continue;
      add(sums.x, at % width, values[i]);
      add(sums.y, Math.floor(at / width), values[i]);
    }
  }
  const mean = (sum, code) => (sum.has(code) ? sum.get(code)[0] / sum.get(code)[1] : -Infinity);
  const order = (codes, sum) => [...codes].sort((a, b) => mean(sum, b) - mean(sum, a) || a - b);
  return [order(xs, sums.x), order(ys, sums.y)];
}

function paginate(blocks) {
  const pages = [];
  let size = 0;
  for (const block of blocks) {
    const cells = block.xs.length * block.ys.length;
    if (!pages.length || size + cells > D.pageCells) {
      pages.push([]);
      size = 0;
    }
    pages[pages.length - 1].push(block);
    size += cells;
  }
  return pages;
}

function axisLabel(cls, scope, name, code) {
  const v = main.label(name, code);
  return el("th", {class: cls, scope, title: name ? `${name} = ${v}` : ""}, el("div", {class: "label", text: main.shortLabel(name, v)}));
}

function blockNode(block) {
  const {x, y} = view;
  const corner = el("th", {class: "corner"}, el("span", {class: "axis-x", text: x ? `${x} →` : ""}), el("span", {class: "axis-y", text: y ? `${y} ↓` : ""}));
  const head = el("tr", {}, corner, block.xs.map((xc) => axisLabel("xlabel", "col", x, xc)));
  const body = block.ys.map((yc) => el("tr", {},
    axisLabel("ylabel", "row", y, yc),
    block.xs.map((xc) => {
      const rows = block.cells.get(yc * block.width + xc);
      return rows ? el("td", {class: "cell"}, rows.map((i) => tile(main, i))) : el("td", {class: "empty"});
    })));
  const heading = el("h3", {}, block.title, block.part ? el("span", {class: "part", text: ` (${block.part})`}) : null);
  return el("div", {class: "block"}, block.title || block.part ? heading : null,
    el("div", {class: "scroll"}, el("table", {class: "grid"}, el("thead", {}, head), el("tbody", {}, body))));
}

let laidOut = {key: null};  // the grid's pages for the current axes and filters: paging only draws

function renderGrid() {
  const key = JSON.stringify([view.x, view.y, view.filters, view.sortBy]);
  if (laidOut.key !== key) {
    const {blocks, sections, shown} = gridBlocks();
    laidOut = {key, sections, shown, pages: paginate(blocks)};
    controls();  // once per axes and filters: turning a page keeps them
  }
  const {pages, sections, shown} = laidOut;
  view.page = Math.min(view.page, Math.max(0, pages.length - 1));
  document.getElementById("grid-blocks").replaceChildren(...(pages[view.page] || []).map(blockNode));  // D.pageCells at most
  document.getElementById("grid-status").textContent =
    `${shown} of ${main.size} images in ${sections} grid${sections === 1 ? "" : "s"}` + (pages.length > 1 ? `, ${pages.length} pages` : "");
  const go = (page) => { view.page = page; renderGrid(); document.getElementById("grid").scrollIntoView(); };
  pager([document.getElementById("grid-pager"), document.getElementById("grid-pager-bottom")], pages.length, view.page, go);
  saveHash();
}

function renderCompare() {
  if (!D.compare) return;
  const [a, b] = sweeps;
  const {shown, pairs} = D.compare;
  const count = Math.ceil(pairs.length / D.pagePairs);
  view.pairPage = Math.min(view.pairPage, Math.max(0, count - 1));
  const start = view.pairPage * D.pagePairs;
  const head = el("tr", {}, shown.map((name) => el("th", {scope: "col", text: name})),
    el("th", {scope: "col", text: `A: ${a.name}`}), el("th", {scope: "col", text: `B: ${b.name}`}));
  const rows = pairs.slice(start, start + D.pagePairs).map(([inA, inB], k) => el("tr", {class: "pair", "data-n": start + k},
    shown.map((name) => el("td", {text: a.value(inA[0], name)})),
    el("td", {class: "cell side-a"}, inA.map((i) => tile(a, i))),
    el("td", {class: "cell side-b"}, inB.map((i) => tile(b, i)))));
  const host = document.getElementById("compare-pairs");
  host.replaceChildren(pairs.length
    ? el("div", {class: "scroll"}, el("table", {class: "pairs"}, el("thead", {}, head), el("tbody", {}, rows)))
    : el("p", {class: "note", text: "No image of A has a match in B."}));
  pager([document.getElementById("compare-pager")], count, view.pairPage, (page) => { view.pairPage = page; renderCompare(); saveHash(); });
}

// Lightbox: the full image and the columns of its manifest row that are set; opened from a compared
// pair, the two sweeps' images side by side, and their columns in two (those that differ marked).
const box = document.getElementById("lightbox");
let boxTiles = [];
let boxAt = -1;
const isSet = (value) => value !== "null" && value !== "";

function figureOf(sweep, i) {
  if (sweep.state[i] === "error") return el("pre", {text: `error: ${sweep.value(i, "error")}`});
  if (sweep.state[i] === "missing") return el("pre", {text: `missing file: ${sweep.value(i, "path")}`});
  return el("a", {href: sweep.full(i), target: "_blank"}, el("img", {src: sweep.full(i), alt: sweep.describe(i)}));
}

function where(text) {
  const at = boxTiles.length > 1 ? `${boxAt + 1} of ${boxTiles.length} · ` : "";
  box.querySelector(".where").textContent = at + text;
  box.hidden = false;
}

function show(s, i) {
  const sweep = sweeps[s];
  box.querySelector(".figure").replaceChildren(figureOf(sweep, i));
  const scored = sweep === main ? D.scores.filter((score) => score.values[i] !== null) : [];
  box.querySelector(".params").replaceChildren(el("tbody", {}, sweep.order.filter((name) => isSet(sweep.value(i, name))).map((name) =>
    el("tr", {}, el("th", {scope: "row", text: name}), el("td", {text: sweep.value(i, name)}))),
    scored.map((score) => el("tr", {class: "score"}, el("th", {scope: "row", text: `${score.id} (${score.by})`}), el("td", {text: scoreText(score.values[i])})))));
  where(`${D.sweeps.length > 1 ? (s ? "B: " : "A: ") : ""}${sweep.name}`);
  saveHash(`${s}:${sweep.value(i, "image_id")}`);
}

function showPair(row) {
  const [a, b] = sweeps;
  const [i, j] = [".side-a", ".side-b"].map((side) => Number(row.querySelector(`${side} .tile`).dataset.i));
  box.querySelector(".figure").replaceChildren(el("div", {class: "pair"},
    el("figure", {class: "side-a"}, figureOf(a, i), el("figcaption", {text: `A: ${a.name}`})),
    el("figure", {class: "side-b"}, figureOf(b, j), el("figcaption", {text: `B: ${b.name}`}))));
  const names = [...new Set([...a.order, ...b.order])].filter((name) => isSet(a.value(i, name) ?? "null") || isSet(b.value(j, name) ?? "null"));
  const head = el("tr", {}, el("th", {scope: "col", text: "column"}), el("th", {scope: "col", text: "A"}), el("th", {scope: "col", text: "B"}));
  box.querySelector(".params").replaceChildren(el("thead", {}, head), el("tbody", {}, names.map((name) => {
    const [va, vb] = [a.value(i, name) ?? "", b.value(j, name) ?? ""];
    return el("tr", {class: va === vb ? "" : "differ"}, el("th", {scope: "row", text: name}), el("td", {text: va}), el("td", {text: vb}));
  })));
  where(`A: ${a.name} | B: ${b.name}`);
  saveHash(undefined, Number(row.dataset.n));
}

function open(node) {
  const pair = node.closest("tr.pair");
  if (pair) {  // a compared pair: step from pair to pair
    boxTiles = [...document.querySelectorAll("#compare-pairs tr.pair")];
    boxAt = boxTiles.indexOf(pair);
    showPair(pair);
    return;
  }
  const scope = node.closest("[data-scope]") || document;
  boxTiles = [...scope.querySelectorAll(".tile")];
  boxAt = boxTiles.indexOf(node);
  show(Number(node.dataset.s), Number(node.dataset.i));
}

function step(by) {
  if (boxAt < 0 || !boxTiles.length) return;
  boxAt = (boxAt + by + boxTiles.length) % boxTiles.length;
  const node = boxTiles[boxAt];
  if (node.matches("tr.pair")) showPair(node);
  else show(Number(node.dataset.s), Number(node.dataset.i));
}

function close() {
  box.hidden = true;
  saveHash();
}

document.addEventListener("click", (event) => {
  const node = event.target.closest(".tile");
  if (node) open(node);
});
box.addEventListener("click", (event) => {
  const go = event.target.closest("[data-go]");
  if (go) step(Number(go.dataset.go));
  else if (event.target === box || event.target.closest(".close")) close();
});
document.addEventListener("keydown", (event) => {
  if (box.hidden) return;
  if (event.key === "Escape") close();
  else if (event.key === "ArrowLeft") step(-1);
  else if (event.key === "ArrowRight") step(1);
});

const wantedPair = Number(params.get("pair")) - 1;
if (D.compare && wantedPair >= 0) view.pairPage = Math.floor(wantedPair / D.pagePairs);
renderGrid();
renderCompare();
// Milliseconds from the start of loading to the first page of grids drawn (benchmarks read it).
document.documentElement.dataset.readyMs = Math.round(performance.now());
const pairRow = wantedPair >= 0 ? document.querySelector(`#compare-pairs tr.pair[data-n="${wantedPair}"]`) : null;
if (pairRow) open(pairRow.querySelector(".tile"));
const wanted = (params.get("img") || "").split(":");
const shared = sweeps[Number(wanted[0])];
if (shared && wanted.length === 2) {
  const i = Array.from({length: shared.size}, (_, n) => n).find((n) => shared.value(n, "image_id") === wanted[1]);
  const node = document.querySelector(`.tile[data-s="${shared.index}"][data-i="${i}"]`);
  if (node) open(node);
  else if (i !== undefined) show(shared.index, i);
}
})();
