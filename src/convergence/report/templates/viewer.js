// The report's cell viewer: plain JavaScript, no libraries, no network. It reads the JSON
// block #viewer-data (written by convergence.report.viewer) and builds one topic's grid at
// a time; text from the study (prompts, names) is only ever set as textContent.
(function () {
  "use strict";
  var V = JSON.parse(document.getElementById("viewer-data").textContent);
  var el = function (id) { return document.getElementById(id); };
  var root = el("viewer");
  var S = { topic: 0, view: 0, step: 0, panes: { a: { row: 0, view: 0 }, b: { row: 1, view: 0 } } };

  function make(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fmt(x) {
    if (x === null || x === undefined) return "—";
    if (x === "ref") return "0 (this is the reference)";
    if (x === 0) return "0";
    var a = Math.abs(x);
    return a >= 1e5 || a < 1e-3 ? x.toExponential(2) : String(Number(x.toPrecision(3)));
  }
  function fill(select, labels, value) {
    select.textContent = "";
    labels.forEach(function (label, i) { select.appendChild(make("option", { value: i }, label)); });
    select.value = String(Math.min(value, labels.length - 1));
  }
  function topic() { return V.topics[S.topic]; }
  function rowName(t, r) { return t.rows[r][0] + " · " + t.rows[r][1]; }
  function marksAt(view, r, c) {
    return V.points.filter(function (p) {
      return view.marks.some(function (m) { return m[0] === r && m[1] === c && m[2] === p; });
    });
  }
  function frame(points, width) {  // nested frames, outermost = earliest key point
    return points.map(function (p, i) {
      return "inset 0 0 0 " + (width * (i + 1)) + "px " + V.colours[p];
    }).join(", ");
  }
  function rows(t, vi, r, c) {  // [label, value] pairs shown for one cell
    var view = t.views[vi], cell = view.cells[r][c];
    if (!cell) return [["", "not run"]];
    var out = [["NFE", String(cell[1])], [V.secondsLabel, fmt(cell[2])]];
    V.refs.forEach(function (ref, i) { out.push([V.metric + " to " + V.refLabels[i], fmt(cell[3 + i])]); });
    var here = marksAt(view, r, c);
    out.push(["key point", here.length ? here.join(", ") : "none"]);
    return out;
  }
  function numbersTable(pairs) {
    var tb = make("table");
    pairs.forEach(function (p) {
      var tr = make("tr");
      tr.appendChild(make("td", {}, p[0]));
      tr.appendChild(make("td", { "class": "num" }, p[1]));
      tb.appendChild(tr);
    });
    return tb;
  }
  function title(t, vi, r, c) {
    return rowName(t, r) + ", " + t.steps[c] + " steps — " + t.views[vi].label;
  }

  // -- grid --------------------------------------------------------------------------
  function cellSize(t) {  // a wide sweep shrinks to the page instead of a 200-megapixel strip
    var room = root.clientWidth - 200;  // the sampler labels
    return Math.max(V.minThumb, Math.min(V.thumb, Math.floor(room / t.steps.length) - 4));
  }
  function renderGrid() {
    var t = topic(), view = t.views[S.view], grid = el("v-grid"), size = cellSize(t);
    el("v-prompt").textContent = view.prompt;
    grid.textContent = "";
    var head = make("tr");
    head.appendChild(make("th", {}, "steps →"));
    t.steps.forEach(function (s) { head.appendChild(make("th", { scope: "col" }, String(s))); });
    var thead = make("thead");
    thead.appendChild(head);
    grid.appendChild(thead);
    var body = make("tbody");
    t.rows.forEach(function (row, r) {
      var tr = make("tr");
      var th = make("th", { scope: "row", "class": "v-row" }, row[0]);
      th.appendChild(make("small", {}, row[1]));
      tr.appendChild(th);
      t.steps.forEach(function (s, c) {
        var td = make("td"), cell = view.cells[r][c];
        if (!cell) {
          td.appendChild(make("div", { "class": "v-missing", style: "width:" + size + "px;height:" + size + "px" }, "not run"));
        } else {
          var b = make("button", { type: "button", "class": "v-cell", "data-r": r, "data-c": c,
                                   "aria-label": title(t, S.view, r, c) });
          b.appendChild(make("img", { src: cell[0], loading: "lazy", width: size, height: size, alt: "" }));
          var f = make("span", { "class": "v-frame" });
          f.style.boxShadow = frame(marksAt(view, r, c), V.frameWidth);
          b.appendChild(f);
          td.appendChild(b);
        }
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    grid.appendChild(body);
    markPicked();
  }
  function markPicked() {
    var picked = el("v-grid").querySelectorAll(".v-picked");
    Array.prototype.forEach.call(picked, function (b) { b.classList.remove("v-picked"); });
    if (S.panes.a.view !== S.view) return;
    var b = el("v-grid").querySelector('button[data-r="' + S.panes.a.row + '"][data-c="' + S.step + '"]');
    if (b) b.classList.add("v-picked");
  }
  function showTip(b) {
    var t = topic(), r = +b.getAttribute("data-r"), c = +b.getAttribute("data-c"), tip = el("v-tip");
    tip.textContent = "";
    tip.appendChild(make("b", {}, title(t, S.view, r, c)));
    tip.appendChild(numbersTable(rows(t, S.view, r, c)));
    tip.setAttribute("data-cell", r + "," + c);
    tip.hidden = false;
    var box = b.getBoundingClientRect(), host = root.getBoundingClientRect();
    var left = box.right - host.left + 8;
    if (box.right + tip.offsetWidth + 16 > document.documentElement.clientWidth) {
      left = box.left - host.left - tip.offsetWidth - 8;  // no room on the right
    }
    tip.style.left = Math.max(0, left) + "px";
    tip.style.top = (box.top - host.top) + "px";
  }
  function hideTip() { el("v-tip").hidden = true; }

  // -- slider and the two panes ------------------------------------------------------
  function renderPane(key) {
    var t = topic(), p = S.panes[key], pane = el("v-" + key);
    var view = t.views[p.view], cell = view.cells[p.row][S.step];
    var img = pane.querySelector("img"), f = pane.querySelector(".v-frame");
    img.width = img.height = V.view;
    if (cell) {
      img.src = cell[0];
      img.alt = title(t, p.view, p.row, S.step);
      img.style.visibility = "visible";
    } else {
      img.removeAttribute("src");
      img.alt = "not run";
      img.style.visibility = "hidden";
    }
    f.style.boxShadow = frame(marksAt(view, p.row, S.step), 2 * V.frameWidth);
    var nums = pane.querySelector(".v-nums");
    nums.textContent = "";
    nums.appendChild(make("b", {}, title(t, p.view, p.row, S.step)));
    nums.appendChild(numbersTable(rows(t, p.view, p.row, S.step)));
    pane.setAttribute("data-cell", p.row + "," + S.step + "," + p.view);
  }
  function renderPanes() {
    var t = topic();
    el("v-step-label").textContent = t.steps[S.step] + " steps";
    el("v-step").value = String(S.step);
    renderPane("a");
    renderPane("b");
    markPicked();
  }
  function setTopic(i) {
    S.topic = i;
    var t = topic();
    S.view = 0;
    S.step = Math.min(S.step, t.steps.length - 1);
    fill(el("v-seed"), t.views.map(function (v) { return v.label; }), 0);
    var names = t.rows.map(function (row, r) { return rowName(t, r); });
    var labels = t.views.map(function (v) { return v.label; });
    ["a", "b"].forEach(function (key, k) {
      var p = S.panes[key], pane = el("v-" + key);
      p.row = Math.min(k, t.rows.length - 1);
      p.view = 0;
      fill(pane.querySelector(".v-sampler"), names, p.row);
      fill(pane.querySelector(".v-seed"), labels, p.view);
    });
    var slider = el("v-step");
    slider.max = String(t.steps.length - 1);
    renderGrid();
    renderPanes();
  }

  fill(el("v-topic"), V.topics.map(function (t) { return t.name; }), 0);
  el("v-topic").addEventListener("change", function (e) { setTopic(+e.target.value); });
  el("v-seed").addEventListener("change", function (e) {
    S.view = +e.target.value;
    S.panes.a.view = S.view;  // the seed shown is pane A's seed too
    el("v-a").querySelector(".v-seed").value = String(S.view);
    renderGrid();
    renderPanes();
  });
  el("v-step").addEventListener("input", function (e) { S.step = +e.target.value; renderPanes(); });
  ["a", "b"].forEach(function (key) {
    var pane = el("v-" + key);
    pane.querySelector(".v-sampler").addEventListener("change", function (e) {
      S.panes[key].row = +e.target.value; renderPanes();
    });
    pane.querySelector(".v-seed").addEventListener("change", function (e) {
      S.panes[key].view = +e.target.value; renderPanes();
    });
  });
  var grid = el("v-grid");
  grid.addEventListener("mouseover", function (e) {
    var b = e.target.closest("button.v-cell");
    if (b) showTip(b);
  });
  grid.addEventListener("mouseleave", hideTip);
  grid.addEventListener("focusin", function (e) {
    var b = e.target.closest("button.v-cell");
    if (b) showTip(b);
  });
  grid.addEventListener("focusout", hideTip);
  document.addEventListener("keydown", function (e) { if (e.key === "Escape") hideTip(); });
  grid.addEventListener("click", function (e) {  // a cell becomes pane A at its step count
    var b = e.target.closest("button.v-cell");
    if (!b) return;
    S.panes.a.row = +b.getAttribute("data-r");
    S.panes.a.view = S.view;
    S.step = +b.getAttribute("data-c");
    el("v-a").querySelector(".v-sampler").value = String(S.panes.a.row);
    el("v-a").querySelector(".v-seed").value = String(S.view);
    renderPanes();
  });
  if (V.pixelated) root.classList.add("v-pix");
  root.hidden = false;
  setTopic(0);
})();
