"""Backends of the ``edit`` tool (image + instruction → image).

- ``openai``: the OpenAI Images API (``/v1/images/edits``, multipart);
- ``ark``: Volcengine Ark SeedEdit / Seedream over its OpenAI-compatible wire;
- ``qwen-server``: one or more Qwen-Image-Edit servers of the LLM-I recipe (``POST /edit/``);
- ``diffusers``: a local diffusers edit pipeline (Qwen-Image-Edit, InstructPix2Pix, FLUX Kontext).
"""
