"""The code tool: chart capture, error reasons, fences/escapes, the warm pool's life cycle, sandbox
detection and the refusal to run with a weaker sandbox unless the operator accepts it."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time

import pytest

from llmi.config import Settings
from llmi.errors import ToolError
from llmi.protocol import validate
from llmi.tools.base import BackendContext, ToolRequest
from llmi.tools.code import sandbox as sb
from llmi.tools.code.backend import SandboxChartBackend, SandboxOptions, clean_code

pytest.importorskip("matplotlib")
_support = sb.detect()
_active, _missing = sb.plan_layers(_support)
needs_sandbox = pytest.mark.skipif(
    bool(_missing), reason=f"host lacks required sandbox layers: {', '.join(_missing)}"
)


def make_backend(options: dict | None = None, **sandbox) -> SandboxChartBackend:
    settings = Settings()
    for key, value in {"wall_s": 5.0, "cpu_s": 3, "memory_mb": 1024, **sandbox}.items():
        setattr(settings.sandbox, key, value)
    return SandboxChartBackend(SandboxOptions(**(options or {})), BackendContext(settings=settings, http=None, fetcher=None))


def req(code: str) -> ToolRequest:
    return ToolRequest(tool="code", params={"code": code}, description="chart")


@pytest.fixture(scope="module")
def backend():
    b = make_backend(workers=2)
    yield b
    if b._pool is not None:
        b._pool.close()


# -- pure pieces -----------------------------------------------------------------------------------------


def test_clean_code_strips_fences_and_keeps_escapes_and_non_ascii():
    assert clean_code("```python\nplt.plot([1])\n```") == "plt.plot([1])"
    assert clean_code("```\nx = 1\n```\n") == "x = 1"
    assert clean_code("  plt.title('销售额\\n2024')") == "plt.title('销售额\\n2024')"  # not re-decoded
    assert clean_code("Here:\n```py\na = 1\n```\nand\n```python\nb = 2\n```") == "a = 1\nb = 2"
    assert clean_code("plt.bar([1], [2])") == "plt.bar([1], [2])"


def test_importing_backend_does_not_import_matplotlib():
    code = "import sys, llmi.tools.code.backend; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_sandbox_report_lists_every_layer():
    rows = sb.sandbox_report()
    names = [r[0] for r in rows]
    assert names == list(sb.ALL_LAYERS)
    assert all(isinstance(ok, bool) and detail for _, ok, detail in rows)
    assert dict((n, ok) for n, ok, _ in rows)["clean_env"] is True
    off = dict((n, (ok, d)) for n, ok, d in sb.sandbox_report(("landlock",)))
    assert off["landlock"] == (False, "required: switched off by configuration")


# -- refusing a weaker sandbox -------------------------------------------------------------------------


async def test_required_layer_missing_refuses_by_default():
    b = make_backend({"layers_off": ["seccomp"]})
    st = b.status()
    assert st.state in ("misconfigured", "missing_dependency") and "seccomp" in st.detail
    assert "allow_weaker" in st.detail
    with pytest.raises(ToolError) as ei:
        await b.run(req("plt.plot([1, 2])"))
    assert ei.value.kind == "sandbox_unavailable" and "allow_weaker" in str(ei.value)
    assert b._pool is None  # nothing was started
    await b.aclose()


def test_unknown_layer_name_is_a_config_error():
    from llmi.errors import ConfigError

    with pytest.raises(ConfigError):
        make_backend({"layers_off": ["landlok"]})


@needs_sandbox
async def test_allow_weaker_runs_and_reports_the_weaker_layers():
    b = make_backend({"layers_off": ["landlock"]}, allow_weaker=True, workers=1)
    try:
        st = b.status()
        assert st.state == "ok" and "WEAKER" in st.detail
        res = await b.run(req("plt.plot([1, 2, 3])"))
        assert "landlock" not in res.provenance["sandbox_layers"]
        assert "seccomp" in res.provenance["sandbox_layers"]
    finally:
        await b.aclose()


# -- charts ------------------------------------------------------------------------------------------------


@needs_sandbox
def test_status_ok_and_lists_layers(backend):
    st = backend.status()
    assert st.state == "ok"
    for layer in ("landlock", "seccomp", "rlimits"):
        assert layer in st.detail


@needs_sandbox
async def test_renders_png_with_provenance(backend):
    res = await backend.run(req("plt.plot([1, 2, 3], [3, 1, 2], marker='o')\nplt.title('Sales')"))
    img = res.image
    assert img.mime == "image/png" and img.width > 400 and img.height > 300
    prov = res.provenance
    assert prov["backend"] == "sandbox" and prov["dpi"] == 150
    for layer in sb.required_layers(_support):
        assert layer in prov["sandbox_layers"]
    assert prov["font"]


@needs_sandbox
async def test_cjk_labels_render_with_a_cjk_font(backend):
    from matplotlib import font_manager

    has_cjk = any("CJK" in f.name for f in font_manager.fontManager.ttflist)
    res = await backend.run(req("plt.bar(['一月', '二月'], [3, 5])\nplt.title('月度销售额 매출')"))
    if has_cjk:
        assert "CJK" in res.provenance["font"]
        assert "warnings" not in res.provenance  # no "Glyph ... missing from font" warning
    else:
        assert "no CJK font" in res.provenance["font"]
    # The labels are drawn: the same chart with ASCII labels gives a different image.
    ascii_res = await backend.run(req("plt.bar(['a', 'b'], [3, 5])\nplt.title('sales')"))
    assert ascii_res.image.sha256 != res.image.sha256


@needs_sandbox
async def test_tag_with_escaped_newlines_and_non_ascii(backend):
    # One-line code in a JSON tag: the protocol decodes "\\n" once; a "\\\\n" stays an escape inside the
    # Python string literal, and the non-ASCII title survives.
    payload = ('{"source": "code", "description": "销售额", "params": {"code": '
               '"import math\\nxs = [1, 2, 3]\\nplt.plot(xs, [math.sqrt(x) for x in xs])\\n'
               'plt.title(\\"第一行\\\\n第二行\\")"}}')
    call = validate(payload, 0)
    assert "第一行\\n第二行" in call.params["code"]
    res = await backend.run(req(call.params["code"]))
    assert res.image.width > 0


@needs_sandbox
async def test_code_error_names_type_message_and_line(backend):
    with pytest.raises(ToolError) as ei:
        await backend.run(req("x = [1, 2]\ny = [1, 2, 3]\nplt.plot(x, y)\n"))
    err = ei.value
    assert err.kind == "code_error"
    assert "ValueError" in str(err) and "line 3: plt.plot(x, y)" in str(err)
    assert not hasattr(err, "retry_after") or err.retry_after is None


@needs_sandbox
async def test_syntax_error_and_missing_module_and_sys_exit(backend):
    with pytest.raises(ToolError) as ei:
        await backend.run(req("plt.plot([1, 2]\nplt.title('x')"))
    assert ei.value.kind == "code_error" and "SyntaxError" in str(ei.value) and "line" in str(ei.value)
    with pytest.raises(ToolError) as ei:
        await backend.run(req("import requests_not_here\nplt.plot([1])"))
    assert ei.value.kind == "code_error" and "ModuleNotFoundError" in str(ei.value) and "line 1" in str(ei.value)
    with pytest.raises(ToolError) as ei:
        await backend.run(req("import sys\nplt.plot([1])\nsys.exit(3)"))
    assert ei.value.kind == "code_error" and "SystemExit" in str(ei.value)


@needs_sandbox
async def test_no_figure(backend):
    with pytest.raises(ToolError) as ei:
        await backend.run(req("x = sum(range(10))\nprint(x)"))
    assert ei.value.kind == "no_figure" and "no figure" in str(ei.value)
    with pytest.raises(ToolError) as ei:
        await backend.run(req("fig = plt.figure()"))  # a figure with nothing on it
    assert ei.value.kind == "no_figure"


@needs_sandbox
async def test_current_figure_is_captured_when_several(backend):
    code = "plt.figure(figsize=(3, 3))\nplt.plot([1, 2])\nplt.figure(figsize=(9, 3))\nplt.bar([1, 2], [2, 1])"
    res = await backend.run(req(code))
    assert res.image.width > 2 * res.image.height  # the wide one, drawn last


@needs_sandbox
async def test_savefig_show_and_close_are_tolerated(backend):
    code = ("fig, ax = plt.subplots(figsize=(8, 3))\nax.plot([1, 2, 3])\nplt.savefig('/tmp/llmi_chart_out.png')\n"
            "plt.show()\nplt.close()\n")
    res = await backend.run(req(code))
    assert res.image.width > 2 * res.image.height
    assert not os.path.exists("/tmp/llmi_chart_out.png")


@needs_sandbox
async def test_pandas_and_seaborn_and_fenced_code(backend):
    code = ("```python\ndf = pd.DataFrame({'g': ['a', 'b', 'a', 'b'], 'v': [1, 2, 3, 4]})\n"
            "sns.barplot(data=df, x='g', y='v')\ndf.plot(kind='line', ax=plt.gca())\n```")
    res = await backend.run(req(code))
    assert res.image.mime == "image/png"


@needs_sandbox
async def test_oversized_figure_is_a_code_error(backend):
    with pytest.raises(ToolError) as ei:
        await backend.run(req("plt.figure(figsize=(400, 400))\nplt.plot([1, 2])"))
    assert ei.value.kind == "code_error" and "figsize" in str(ei.value)


async def test_empty_or_missing_code_is_rejected_without_a_worker():
    b = make_backend()
    for params in ({}, {"code": ""}, {"code": "```python\n```"}, {"code": 3}):
        with pytest.raises(ToolError) as ei:
            await b.run(ToolRequest(tool="code", params=params))
        assert ei.value.kind == "code_error"
    assert b._pool is None


# -- the pool ----------------------------------------------------------------------------------------------


@needs_sandbox
async def test_concurrent_charts_use_both_workers(backend):
    codes = [f"plt.plot([1, {i}, 2])\nplt.title('chart {i}')" for i in range(6)]
    results = await asyncio.gather(*(backend.run(req(c)) for c in codes))
    assert len({r.image.sha256 for r in results}) == 6
    assert len(backend._pool.worker_pids()) == 2


@needs_sandbox
async def test_workers_are_recycled_and_restarted():
    b = make_backend(workers=1, max_jobs_per_worker=2)
    try:
        await b.run(req("plt.plot([1, 2])"))
        first = b._pool.worker_pids()
        await b.run(req("plt.plot([2, 1])"))  # second job: the worker is retired after it
        assert b._pool.worker_pids() == []
        await b.run(req("plt.plot([1, 3])"))
        second = b._pool.worker_pids()
        assert second and second != first
        # A worker killed from outside is replaced and the chart still renders.
        os.kill(second[0], signal.SIGKILL)
        time.sleep(0.1)
        res = await b.run(req("plt.plot([3, 1])"))
        assert res.image.mime == "image/png"
        assert b._pool.restarts == 1 and b._pool.worker_pids() != second
    finally:
        await b.aclose()
    assert b._pool is None


@needs_sandbox
async def test_aclose_stops_the_workers():
    b = make_backend(workers=1)
    await b.run(req("plt.plot([1, 2])"))
    pids = b._pool.worker_pids()
    await b.aclose()
    time.sleep(0.1)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@needs_sandbox
def test_png_is_valid_and_decodes(backend):
    from PIL import Image

    res = asyncio.run(backend.run(req("plt.scatter([1, 2, 3], [3, 2, 1])")))  # a different event loop
    with Image.open(io.BytesIO(res.image.data)) as im:
        assert im.format == "PNG" and im.size == (res.image.width, res.image.height)
