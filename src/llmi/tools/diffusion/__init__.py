"""Backends of the ``diffusion`` tool (text → image).

- ``openai``: the OpenAI Images API (``/v1/images/generations``), or any server that speaks it;
- ``ark``: Volcengine Ark Seedream over its OpenAI-compatible wire;
- ``qwen-server``: one or more Qwen-Image servers of the LLM-I recipe (``POST /generate/``);
- ``diffusers``: a local diffusers pipeline (``pip install 'llmi[local]'``).
"""
