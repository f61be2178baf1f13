// Provisioner console: a few lines of plain JavaScript on top of pages that work without it.
// - Regions marked data-live-src refresh themselves (fast while work is in progress) and
//   announce status changes to screen readers.
// - Forms marked data-confirm ask first; the app form shows the fields of the chosen
//   authentication; "Select all Pending" ticks every pending event.
// - In the parameter and rule editors, a select marked data-switch="key" shows, within its
//   [data-scope], only the fields marked data-on="key=value,value" (or "key=!value": all but).
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  var announcer = document.getElementById("announcer");

  function announce(text) {
    if (!announcer) return;
    announcer.textContent = "";
    window.setTimeout(function () { announcer.textContent = text; }, 50);
  }

  function states(region) {
    var out = {};
    region.querySelectorAll("[data-row]").forEach(function (el) {
      out[el.getAttribute("data-row")] = { status: el.getAttribute("data-status"), label: el.getAttribute("data-label") };
    });
    return out;
  }

  function refresh(region) {
    var src = region.getAttribute("data-live-src");
    return fetch(src, { headers: { "X-Requested-With": "fetch", "X-CSRF-Token": csrf }, credentials: "same-origin" })
      .then(function (resp) {
        if (resp.status === 401) { window.location.reload(); return null; }
        return resp.ok ? resp.text() : null;
      })
      .then(function (html) {
        if (html === null || html === undefined || html.trim() === region.innerHTML.trim()) return;
        var before = states(region);
        var checked = {};
        region.querySelectorAll("input[type=checkbox]:checked").forEach(function (c) { checked[c.value] = true; });
        var focusedValue = document.activeElement && region.contains(document.activeElement) ? document.activeElement.value : null;
        region.innerHTML = html;
        region.querySelectorAll("input[type=checkbox]").forEach(function (c) {
          if (checked[c.value]) c.checked = true;
          if (focusedValue && c.value === focusedValue) c.focus();
        });
        var after = states(region);
        var changes = [];
        Object.keys(after).forEach(function (k) {
          if (!before[k] || before[k].status !== after[k].status) changes.push(after[k].label);
        });
        if (changes.length > 0) {
          var text = changes.slice(0, 3).join(". ");
          if (changes.length > 3) text += ". And " + (changes.length - 3) + " more.";
          announce(text);
        }
      })
      .catch(function () { /* offline for a moment: try again later */ });
  }

  function poll(region) {
    var delay = region.querySelector("[data-working]") ? 1500 : 5000;
    window.setTimeout(function () {
      if (document.hidden) { poll(region); return; }
      refresh(region).then(function () { poll(region); });
    }, delay);
  }

  document.querySelectorAll("[data-live-src]").forEach(poll);

  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      if (!window.confirm(form.getAttribute("data-confirm"))) ev.preventDefault();
    });
  });

  document.querySelectorAll("[data-auth-switch]").forEach(function (select) {
    var form = select.form;
    function show() {
      form.querySelectorAll("[data-auth]").forEach(function (group) {
        group.hidden = group.getAttribute("data-auth") !== select.value;
      });
    }
    select.addEventListener("change", show);
    show();
  });

  document.querySelectorAll("select[data-switch]").forEach(function (select) {
    var key = select.getAttribute("data-switch");
    var scope = select.closest("[data-scope]") || select.form;
    function show() {
      scope.querySelectorAll("[data-on]").forEach(function (el) {
        var rule = el.getAttribute("data-on").split("=");
        if (rule[0] !== key) return;
        var not = rule[1].charAt(0) === "!";
        var listed = rule[1].replace("!", "").split(",").indexOf(select.value) >= 0;
        var visible = not ? !listed : listed;
        el.hidden = !visible;
        var label = el.id && scope.querySelector('label[for="' + el.id + '"]');
        if (label) label.hidden = !visible;
      });
    }
    select.addEventListener("change", show);
    show();
  });

  // After a refused save, the first field in error gets the focus (and comes into view).
  var invalid = document.querySelector('main form [aria-invalid="true"]');
  if (invalid && !document.querySelector("[autofocus]")) invalid.focus();

  document.querySelectorAll("[data-select-all]").forEach(function (box) {
    var name = box.getAttribute("data-select-all");
    box.addEventListener("change", function () {
      box.form.querySelectorAll('input[type=checkbox][name="' + name + '"]').forEach(function (c) { c.checked = box.checked; });
    });
  });
})();
