/* The sample browser of the static benchmark report (flows/stages/html_report.py).
 *
 * data/index.js calls GILL_REPORT.index({...}): the facet values and, per sample, the codes of its benchmark,
 * setting, system and status. The samples themselves are in data/samples-NNNN.js (per_file each), each calling
 * GILL_REPORT.page(number, samples); a file is loaded when a page of the browser needs one of its samples, by
 * adding a <script> element (fetch/XHR of file:// URLs is blocked). Every element is built with textContent and
 * setAttribute: no text of the data is ever parsed as HTML.
 */
(function () {
  "use strict";

  var PAGE_SIZE = 50;
  var SCRIPT_TIMEOUT_MS = 30000;
  var state = {
    index: null,
    files: {}, // number -> samples array
    loading: {}, // number -> Promise
    waiting: {}, // number -> [resolve]
    filters: {},
    matches: [],
    page: 0,
    renderToken: 0,
  };

  window.GILL_REPORT = {
    index: function (data) {
      state.index = data;
      if (document.readyState === "loading") {
        document.addEventListener("DOMContentLoaded", start);
      } else {
        start();
      }
    },
    page: function (number, samples) {
      state.files[number] = samples;
      (state.waiting[number] || []).forEach(function (resolve) {
        resolve(samples);
      });
      delete state.waiting[number];
    },
  };

  function $(id) {
    return document.getElementById(id);
  }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      var value = attrs[key];
      if (value === null || value === undefined || value === false) return;
      if (key === "text") node.textContent = String(value);
      else node.setAttribute(key, String(value));
    });
    (children || []).forEach(function (child) {
      if (child === null || child === undefined) return;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function fileName(number) {
    return "data/samples-" + String(number).padStart(4, "0") + ".js";
  }

  function loadFile(number) {
    if (state.files[number]) return Promise.resolve(state.files[number]);
    if (state.loading[number]) return state.loading[number];
    var promise = new Promise(function (resolve, reject) {
      (state.waiting[number] = state.waiting[number] || []).push(resolve);
      var script = el("script", { src: fileName(number), "data-samples-file": number });
      script.onerror = function () {
        delete state.loading[number];
        script.remove();
        reject(new Error("could not load " + fileName(number)));
      };
      setTimeout(function () {
        if (state.files[number]) return;
        delete state.loading[number]; // a later page may try again
        reject(new Error("timed out loading " + fileName(number)));
      }, SCRIPT_TIMEOUT_MS);
      document.head.appendChild(script);
    });
    state.loading[number] = promise;
    return promise;
  }

  function sample(i) {
    var per = state.index.per_file;
    var file = state.files[Math.floor(i / per) + 1];
    return file ? file[i % per] : null;
  }

  // -- filters ----------------------------------------------------------------------------------------------

  function matches(row, skip) {
    var facets = state.index.facets;
    for (var f = 0; f < facets.length; f++) {
      if (f === skip) continue;
      var wanted = state.filters[facets[f]];
      if (wanted !== undefined && wanted !== "" && row[f] !== Number(wanted)) return false;
    }
    return true;
  }

  function fillSelects() {
    var index = state.index;
    index.facets.forEach(function (facet, f) {
      var select = $("f-" + facet);
      if (!select) return;
      var zeros = function () {
        return index.values[facet].map(function () {
          return 0;
        });
      };
      var counts = zeros(); // under the other filters
      var listed = zeros(); // under the benchmark filter only: a value of another benchmark is not listed
      var total = 0;
      var benchmark = state.filters.benchmark;
      var b = index.facets.indexOf("benchmark");
      index.rows.forEach(function (row) {
        if (matches(row, f)) {
          counts[row[f]] += 1;
          total += 1;
        }
        if (f === b || !benchmark || row[b] === Number(benchmark)) listed[row[f]] += 1;
      });
      var current = state.filters[facet] || "";
      select.replaceChildren(el("option", { value: "", text: "all (" + total + ")" }));
      index.values[facet].forEach(function (value, code) {
        if (listed[code] === 0 && String(code) !== current) return;
        select.appendChild(el("option", { value: code, text: (value || "(none)") + " (" + counts[code] + ")" }));
      });
      select.value = current;
    });
  }

  function dropEmptyFilters(changed) {
    // a choice the new one leaves without samples (a VIST setting after choosing VisDial) goes back to "all"
    var index = state.index;
    index.facets.forEach(function (facet, f) {
      var current = state.filters[facet];
      if (facet === changed || current === undefined || current === "") return;
      var any = index.rows.some(function (row) {
        return row[f] === Number(current) && matches(row, f);
      });
      if (!any) state.filters[facet] = "";
    });
  }

  function applyFilters() {
    var rows = state.index.rows;
    state.matches = [];
    for (var i = 0; i < rows.length; i++) {
      if (matches(rows[i], -1)) state.matches.push(i);
    }
  }

  // -- one sample -------------------------------------------------------------------------------------------

  function image(url, caption, css) {
    if (!url) {
      return el("figure", { class: "tile missing " + (css || "") }, [
        el("div", { class: "no-image", text: "no image" }),
        el("figcaption", { text: caption }),
      ]);
    }
    return el("figure", { class: "tile " + (css || "") }, [
      el("a", { href: url, target: "_blank", rel: "noopener" }, [
        el("img", { src: url, alt: caption, loading: "lazy", decoding: "async" }),
      ]),
      el("figcaption", { text: caption }),
    ]);
  }

  function number(value) {
    if (typeof value !== "number") return String(value);
    return Number.isInteger(value) ? String(value) : value.toFixed(3);
  }

  function scoreTable(pairs) {
    return el(
      "table",
      { class: "scores" },
      pairs.map(function (pair) {
        return el("tr", {}, [el("th", { scope: "row", text: pair[0] }), el("td", { text: number(pair[1]) })]);
      })
    );
  }

  function decisionText(s) {
    if (!s.decision) return null;
    var word = s.decision === "ret" ? "retrieve" : s.decision === "gen" ? "generate" : s.decision;
    var text = "decision: " + word;
    if (typeof s.p_ret === "number") text += " (p(retrieve) " + s.p_ret.toFixed(2) + ")";
    if (s.ret_key) text += "; retrieved " + s.ret_key;
    return text;
  }

  function card(s, i) {
    var meta = [s.benchmark, s.setting, s.system, "seed " + s.seed, "sample " + s.sample_id].join(" \u00b7 ");
    var context = el("div", { class: "context" }, [
      el("h4", { text: "context" + (s.context_length !== null ? " (length " + s.context_length + ")" : "") }),
      el("p", { class: "prompt", text: s.prompt === null ? "(no text)" : s.prompt }),
    ]);
    if (s.context.length) {
      context.appendChild(
        el(
          "div",
          { class: "context-images" },
          s.context.map(function (c, k) {
            return image(c.url, "image " + (k + 1) + (c.url ? "" : ": " + c.name), "small");
          })
        )
      );
    }
    var side = el("div", { class: "outcome" }, [
      el("h4", { text: "scores" }),
      s.scores.length ? scoreTable(s.scores) : el("p", { class: "muted", text: "no scores" }),
      s.scene.length
        ? el("details", { class: "scene" }, [el("summary", { text: "scene metric per attribute" }), scoreTable(s.scene)])
        : null,
      decisionText(s) ? el("p", { class: "decision", text: decisionText(s) }) : null,
      s.status !== "ok" ? el("p", { class: "skip", text: "skipped: " + (s.skip_reason || "no reason given") }) : null,
    ]);
    return el("article", { class: "sample status-" + s.status, "data-index": i }, [
      el("header", { class: "sample-meta" }, [
        el("span", { class: "sample-title", text: meta }),
        el("span", { class: "badge " + (s.status === "ok" ? "ok" : "skipped"), text: s.status }),
      ]),
      el("div", { class: "sample-body" }, [
        context,
        image(s.reference, "ground truth", "reference"),
        image(s.output, "output of " + s.system, "output"),
        side,
      ]),
    ]);
  }

  // -- the list ---------------------------------------------------------------------------------------------

  function pages() {
    return Math.max(1, Math.ceil(state.matches.length / PAGE_SIZE));
  }

  function render() {
    var token = ++state.renderToken;
    var list = $("sample-list");
    var first = state.page * PAGE_SIZE;
    var shown = state.matches.slice(first, first + PAGE_SIZE);
    var files = {};
    shown.forEach(function (i) {
      files[Math.floor(i / state.index.per_file) + 1] = true;
    });
    $("pager-status").textContent = state.matches.length
      ? "page " + (state.page + 1) + " of " + pages() + " \u00b7 samples " + (first + 1) + "\u2013" +
        (first + shown.length) + " of " + state.matches.length
      : "no sample matches these filters";
    ["prev", "prev-bottom"].forEach(function (id) {
      $(id).disabled = state.page === 0;
    });
    ["next", "next-bottom"].forEach(function (id) {
      $(id).disabled = state.page + 1 >= pages();
    });
    list.setAttribute("aria-busy", "true");
    return Promise.all(Object.keys(files).map(Number).map(loadFile)).then(
      function () {
        if (token !== state.renderToken) return;
        list.replaceChildren.apply(
          list,
          shown.map(function (i) {
            return card(sample(i), i);
          })
        );
        list.setAttribute("aria-busy", "false");
        list.setAttribute("data-page", state.page);
      },
      function (err) {
        if (token !== state.renderToken) return;
        list.replaceChildren(el("p", { class: "error", text: String(err.message || err) }));
        list.setAttribute("aria-busy", "false");
      }
    );
  }

  function go(page) {
    state.page = Math.min(Math.max(0, page), pages() - 1);
    render();
  }

  function start() {
    if (!state.index.rows.length) {
      $("sample-list").replaceChildren(el("p", { class: "empty", text: "No samples in this run." }));
      return;
    }
    state.index.facets.forEach(function (facet) {
      var select = $("f-" + facet);
      if (!select) return;
      select.addEventListener("change", function () {
        state.filters[facet] = select.value;
        dropEmptyFilters(facet);
        fillSelects();
        applyFilters();
        go(0);
      });
    });
    $("prev").addEventListener("click", function () {
      go(state.page - 1);
    });
    $("next").addEventListener("click", function () {
      go(state.page + 1);
    });
    $("prev-bottom").addEventListener("click", function () {
      go(state.page - 1);
      $("samples").scrollIntoView();
    });
    $("next-bottom").addEventListener("click", function () {
      go(state.page + 1);
      $("samples").scrollIntoView();
    });
    fillSelects();
    applyFilters();
    go(0);
  }
})();
