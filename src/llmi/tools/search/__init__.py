"""The ``search`` tool: find an existing photo for a query.

Backends (one small file each, registered as entry points ``search.<name>``):

* ``local`` — a folder of images matched by file names, sidecar captions and embedded EXIF/IPTC text;
  works offline and for an organisation's own asset library (the default).
* ``wikimedia`` — Wikimedia Commons, no key needed; records artist and licence.
* ``serpapi`` — Google Images through SerpAPI (key: ``SERPAPI_API_KEY``).
* ``brave`` — Brave Image Search API (key: ``BRAVE_API_KEY``).
* ``ddgs`` — DuckDuckGo through the ``ddgs`` package, best-effort (``pip install 'llmi[ddgs]'``).

Every backend hands its candidates to :func:`llmi.tools.search.candidates.choose`, which downloads them
through the engine's :class:`~llmi.fetch.SafeFetcher` (web) or reads them from disk (local) and returns the
first that validates, with its provenance.
"""
