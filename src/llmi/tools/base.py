"""The one interface every tool backend implements, and the values it passes.

A backend is a small class in a file of its own::

    class MyBackend(Backend):
        tool = "search"                 # which tool it serves: search | diffusion | code | edit
        name = "my-search"              # the name used in configuration
        Options = MyOptions             # a BackendOptions subclass (unknown keys are rejected)

        async def run(self, request: ToolRequest) -> ToolResult: ...
        async def aclose(self) -> None: ...      # optional

and is registered under the ``llmi.backends`` entry-point group as ``"<tool>.<name>"`` — built-ins
and third-party plugins alike (see :mod:`llmi.tools.registry`).

``run`` returns a :class:`ToolResult` or raises :class:`~llmi.errors.ToolError`
(:class:`~llmi.errors.TransientToolError` for failures worth retrying). The engine adds timeouts,
retries, concurrency limits, caching and fallbacks; a backend does none of that itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, SecretStr

from ..images import ImageData
from ..keys import resolve_api_key

if TYPE_CHECKING:  # pragma: no cover
    import httpx

    from ..config import Settings
    from ..fetch import SafeFetcher


class BackendOptions(BaseModel):
    """Base of every backend's options (the ``[backends.<tool>.<name>]`` table of the config file)."""

    model_config = ConfigDict(extra="forbid")

    #: At most this many calls to this backend at once (None: only the tool's limit applies).
    concurrency: int | None = None


class HTTPBackendOptions(BackendOptions):
    """Options shared by backends that call an HTTP API with a key."""

    base_url: str = ""
    #: The key itself (config file only — never pass keys on the command line) ...
    api_key: SecretStr | None = None
    #: ... or the environment variable that holds it.
    api_key_env: str = ""
    timeout_s: float = 60.0


@dataclass(frozen=True)
class ToolRequest:
    """One call for a backend. ``params`` are already validated by the protocol for ``tool``."""

    tool: str
    params: dict[str, Any]
    description: str = ""
    #: For ``edit``: the image to edit.
    input_image: ImageData | None = None
    #: The run's sampling seed (``Sampling.seed``), for backends that can seed their sampler (diffusion,
    #: edit); ``None``: the backend's own choice. It is part of the cache key of generative tools.
    seed: int | None = None


@dataclass(frozen=True)
class ToolResult:
    image: ImageData
    #: ``model``, ``source_url``, ``page_url``, ``title``, ``license``, ``author``, ... (JSON values).
    provenance: dict[str, Any] = field(default_factory=dict)
    #: ``False`` for a result the engine must not cache: a degraded one that a later call on a better set
    #: up machine would make differently (a chart drawn with glyphs no installed font has).
    cacheable: bool = True


@dataclass(frozen=True)
class BackendStatus:
    """What ``llmi doctor`` shows for a backend. ``state``: ok | missing_key | missing_dependency |
    unreachable | misconfigured."""

    state: str
    detail: str = ""

    @property
    def usable(self) -> bool:
        return self.state == "ok"


@dataclass
class BackendContext:
    """What the engine hands every backend. Clients are owned by the engine, never by the backend."""

    settings: "Settings"
    #: For the operator-configured API endpoints (base URLs from configuration).
    http: "httpx.AsyncClient"
    #: For URLs that came from untrusted places (search results, model output): checks every address.
    fetcher: "SafeFetcher"


class Backend:
    tool: ClassVar[str]
    name: ClassVar[str]
    Options: ClassVar[type[BackendOptions]] = BackendOptions
    #: Python modules the backend imports lazily; doctor reports them when missing.
    requires: ClassVar[tuple[str, ...]] = ()
    #: The pip extra that provides ``requires``.
    extra: ClassVar[str] = ""

    def __init__(self, options: BackendOptions, ctx: BackendContext):
        self.options = options
        self.ctx = ctx

    async def run(self, request: ToolRequest) -> ToolResult:  # pragma: no cover - interface
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release what the backend holds (worker processes, loaded models)."""

    def cache_identity(self) -> dict[str, Any]:
        """What besides the params changes the output (model id, size, ...): part of the cache key."""
        return {}

    def status(self) -> BackendStatus:
        """A cheap, offline check: dependencies importable, keys present."""
        import importlib.util

        for mod in self.requires:
            if importlib.util.find_spec(mod) is None:
                hint = f" (pip install 'llmi[{self.extra}]')" if self.extra else ""
                return BackendStatus("missing_dependency", f"python module {mod!r} is not installed{hint}")
        return BackendStatus("ok")

    async def probe(self) -> BackendStatus:
        """A live check for ``llmi doctor --probe``; defaults to :meth:`status`."""
        return self.status()

    # -- helpers for subclasses -----------------------------------------------------------------
    def api_key(self, *, required: bool = True) -> str | None:
        """The API key from the options or the named environment variable (resolved on first use);
        :class:`~llmi.keys.MissingKeyError` saying where to put it when ``required`` and there is none."""
        return resolve_api_key(
            getattr(self.options, "api_key", None),
            getattr(self.options, "api_key_env", ""),
            owner=f"backend {self.tool}.{self.name}",
            table=f"backends.{self.tool}.{self.name}",
            required=required,
        )

    def key_status(self) -> BackendStatus:
        base = Backend.status(self)
        if not base.usable:
            return base
        if self.api_key(required=False) is None:
            env = getattr(self.options, "api_key_env", "")
            return BackendStatus("missing_key", f"no API key (set {env or 'api_key_env'})")
        return BackendStatus("ok")
