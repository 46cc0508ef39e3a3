// The llmi page. Served from the same origin under a strict Content-Security-Policy: no inline script,
// requests to this origin only. Untrusted text (prompts, model output, failure reasons, titles) is put
// into the page with textContent; the only HTML inserted is what the server rendered with llmi's
// sanitising renderer (/api/markdown, /api/runs/{id}/slots/{n}, /api/runs/{id}/fragment).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const state = {
    key: sessionStorage.getItem("llmi-key") || "",
    config: null,
    controller: null,
    runId: null,
    files: [],
  };

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function setStatus(text, isError) {
    const s = $("status");
    s.textContent = text || "";
    s.classList.toggle("error", !!isError);
  }

  async function api(path, opts) {
    opts = Object.assign({}, opts || {});
    const headers = Object.assign({}, opts.headers || {});
    if (state.key) headers["Authorization"] = "Bearer " + state.key;
    opts.headers = headers;
    const r = await fetch(path, opts);
    if (!r.ok) {
      let message = r.status + " " + r.statusText;
      try {
        const j = await r.json();
        if (j && j.error && j.error.message) message = j.error.message;
      } catch (e) { /* not JSON */ }
      const err = new Error(message);
      err.status = r.status;
      throw err;
    }
    return r;
  }

  async function postJSON(path, body, signal) {
    return api(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: signal,
    });
  }

  // Server-rendered, sanitised HTML into a fresh element (template content is inert while parsed).
  function fromHTML(html) {
    const t = document.createElement("template");
    t.innerHTML = html;
    return t.content;
  }

  // --- server-sent events over fetch (EventSource cannot send the API key) -----------------------
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) {
          let ev = null;
          try { ev = JSON.parse(data.join("\n")); } catch (e) { ev = null; }
          if (ev) await onEvent(ev);
        }
      }
    }
  }

  // --- the document being written ----------------------------------------------------------------
  class LiveDocument {
    constructor(root) {
      this.root = root;
      root.replaceChildren();
      this.article = el("article", "llmi-document");
      root.append(this.article);
      this.textNode = null;
      this.textRaw = "";
      this.slots = new Map();
      this.runId = null;
      this.pending = [];
    }

    text(t) {
      if (!this.textNode) {
        this.textNode = el("div", "llmi-text llmi-streaming");
        this.article.append(this.textNode);
        this.textRaw = "";
      }
      this.textRaw += t;
      this.textNode.textContent = this.textRaw; // as text: nothing in it can run or load
    }

    closeText() {
      if (!this.textNode) return;
      const node = this.textNode;
      const raw = this.textRaw;
      this.textNode = null;
      this.textRaw = "";
      this.pending.push(postJSON("/api/markdown", { text: raw })
        .then((r) => r.json())
        .then((j) => { if (node.isConnected) node.replaceWith(fromHTML(j.html)); })
        .catch(() => { /* keep the plain text */ }));
    }

    toolStarted(ev) {
      this.closeText();
      const box = el("div", "llmi-pending");
      box.setAttribute("data-slot", String(ev.index));
      box.append(el("span", "spinner"));
      const what = ev.description ? ev.source + ": " + ev.description : ev.source;
      box.append(el("span", "label", what + " …"));
      this.article.append(box);
      this.slots.set(ev.index, box);
    }

    toolFinished(ev) {
      const box = this.slots.get(ev.index);
      if (!box || !this.runId) return;
      this.pending.push(api("/api/runs/" + encodeURIComponent(this.runId) + "/slots/" + ev.index)
        .then((r) => r.json())
        .then((j) => {
          const part = fromHTML(j.html);
          const wrap = el("div", "llmi-slot");
          wrap.setAttribute("data-slot", String(ev.index));
          wrap.append(part);
          if (box.isConnected) box.replaceWith(wrap);
          this.slots.set(ev.index, wrap);
        })
        .catch((e) => {
          box.replaceChildren(el("span", "label", "could not show this image: " + e.message));
        }));
    }

    stage(ev) {
      setStatus((ev.name || "stage") + ": " + (ev.status || ""));
    }

    error(ev) {
      this.closeText();
      this.article.append(el("p", "run-error", (ev.kind ? ev.kind + ": " : "") + (ev.message || "the run failed")));
    }

    async done() {
      this.closeText();
      await Promise.allSettled(this.pending);
      await showDocument(this.runId, { keepOnError: true });
    }
  }

  async function showDocument(runId, opts) {
    opts = opts || {};
    try {
      const info = await (await api("/api/runs/" + encodeURIComponent(runId))).json();
      setDownloads(info);
      const j = await (await api("/api/runs/" + encodeURIComponent(runId) + "/fragment")).json();
      $("doc").replaceChildren(fromHTML(j.html));
      markCurrent(runId);
    } catch (e) {
      if (!opts.keepOnError) {
        $("doc").replaceChildren(el("p", "run-error", e.message));
      }
    }
  }

  function setDownloads(info) {
    const links = info && info.links;
    if (!links) { $("downloads").hidden = true; return; }
    $("dl-html").href = links.html + "&download=1";
    $("dl-html").setAttribute("download", "llmi-" + info.id + ".html");
    $("dl-md").href = links.zip;
    $("dl-md").setAttribute("download", "llmi-" + info.id + ".zip");
    $("dl-json").href = links.json + "&download=1";
    $("dl-json").setAttribute("download", "llmi-" + info.id + ".json");
    $("downloads").hidden = info.status !== "done" && info.status !== "failed";
  }

  // --- earlier documents -------------------------------------------------------------------------
  async function loadHistory() {
    let runs = [];
    try {
      runs = (await (await api("/api/runs?limit=50")).json()).runs;
    } catch (e) {
      if (e.status === 401) askForKey();
      return;
    }
    const list = $("history");
    list.replaceChildren();
    for (const r of runs) {
      const li = el("li");
      const b = el("button");
      b.type = "button";
      b.setAttribute("data-run", r.id);
      b.append(el("span", "title", r.title || r.prompt || r.id));
      const when = new Date(r.created * 1000).toLocaleString();
      b.append(el("span", "meta", when + " · " + r.status + (r.n_images ? " · " + r.n_images + " image(s)" : "")));
      b.addEventListener("click", () => { if (!state.controller) showDocument(r.id); });
      li.append(b);
      list.append(li);
    }
    markCurrent(state.runId);
  }

  function markCurrent(runId) {
    state.runId = runId;
    for (const b of document.querySelectorAll("#history button")) {
      b.setAttribute("aria-current", b.getAttribute("data-run") === runId ? "true" : "false");
    }
  }

  // --- images the user adds ----------------------------------------------------------------------
  const ACCEPTED = ["image/png", "image/jpeg", "image/gif", "image/webp"];

  function checkFiles(files) {
    const limits = (state.config && state.config.limits) || {};
    if (limits.max_images !== undefined && files.length > limits.max_images) {
      throw new Error("at most " + limits.max_images + " images");
    }
    for (const f of files) {
      if (!ACCEPTED.includes(f.type)) throw new Error(f.name + ": only PNG, JPEG, GIF or WEBP images");
      if (limits.max_image_bytes && f.size > limits.max_image_bytes) {
        throw new Error(f.name + " is larger than " + Math.floor(limits.max_image_bytes / 1048576) + " MiB");
      }
    }
  }

  function readAsDataURL(file) {
    return new Promise((resolve, reject) => {
      const fr = new FileReader();
      fr.onload = () => resolve(fr.result);
      fr.onerror = () => reject(fr.error);
      fr.readAsDataURL(file);
    });
  }

  function showPreviews() {
    const box = $("previews");
    box.replaceChildren();
    state.files.forEach((f, i) => {
      const img = el("img");
      img.src = URL.createObjectURL(f);
      img.alt = "image " + i;
      img.title = "image " + i + ": " + f.name;
      box.append(img);
    });
  }

  // --- writing -----------------------------------------------------------------------------------
  async function write(ev) {
    ev.preventDefault();
    if (state.controller) return;
    const prompt = $("prompt").value;
    if (!prompt.trim()) return;
    let images;
    try {
      checkFiles(state.files);
      images = await Promise.all(state.files.map(readAsDataURL));
    } catch (e) {
      setStatus(e.message, true);
      return;
    }
    const body = {
      prompt: prompt,
      images: images,
      options: { background: $("background").checked, tts: $("tts").checked ? true : null },
      stream: true,
    };
    const controller = new AbortController();
    state.controller = controller;
    $("send").disabled = true;
    $("stop").hidden = false;
    $("downloads").hidden = true;
    setStatus("writing…");
    const live = new LiveDocument($("doc"));
    let failed = false;
    try {
      const r = await postJSON("/api/runs", body, controller.signal);
      await readEvents(r, async (e) => {
        if (!live.runId && e.run_id) {
          live.runId = e.run_id;
          markCurrent(e.run_id);
        }
        switch (e.type) {
          case "text": live.text(e.text || ""); break;
          case "tool_started": live.toolStarted(e); break;
          case "tool_finished": case "tag_amended": live.toolFinished(e); break;
          case "stage": live.stage(e); break;
          case "error": failed = true; live.error(e); setStatus(e.message || "the run failed", true); break;
          default: break;
        }
      });
      if (live.runId) await live.done();
      if (!failed) setStatus("done");
    } catch (e) {
      if (e.name === "AbortError") {
        setStatus("stopped");
      } else {
        if (e.status === 401) askForKey();
        setStatus(e.message, true);
      }
    } finally {
      state.controller = null;
      $("send").disabled = false;
      $("stop").hidden = true;
      loadHistory();
    }
  }

  function askForKey() {
    $("key-row").hidden = false;
    $("api-key").focus();
  }

  async function init() {
    $("api-key").value = state.key;
    $("api-key").addEventListener("change", () => {
      state.key = $("api-key").value.trim();
      sessionStorage.setItem("llmi-key", state.key);
      loadHistory();
    });
    $("ask").addEventListener("submit", write);
    $("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });
    $("new-doc").addEventListener("click", () => {
      if (state.controller) return;
      $("doc").replaceChildren();
      $("downloads").hidden = true;
      $("prompt").value = "";
      state.files = [];
      $("images").value = "";
      showPreviews();
      markCurrent(null);
      setStatus("");
    });
    $("images").addEventListener("change", () => {
      state.files = Array.from($("images").files || []);
      try { checkFiles(state.files); setStatus(""); } catch (e) { setStatus(e.message, true); }
      showPreviews();
    });
    try {
      state.config = await (await fetch("/api/config")).json();
      if (state.config.auth_required && !state.key) askForKey();
      $("tts-row").hidden = !state.config.tts_available;
    } catch (e) {
      setStatus("cannot reach the server: " + e.message, true);
    }
    loadHistory();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
