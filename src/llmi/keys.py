"""One way to find an API key: the configured value, else the environment variable the config names.

Tool backends (``[backends.<tool>.<name>] api_key`` / ``api_key_env``), the judges (``[llm_judge]
api_key`` / ``api_key_env``) and the writing LLM (``[llm] api_key`` or ``LLMI_API_KEY``) all resolve
their key here, when it is first needed — never at import or configuration time, so a key that is
only needed by an unused backend is never asked for. A missing key is a :class:`MissingKeyError` whose
message says exactly what to set and where.

Keys never appear in messages: only the name of the variable or table that should hold them.
"""

from __future__ import annotations

import os
from typing import Mapping

from pydantic import SecretStr

from .errors import ConfigError


class MissingKeyError(ConfigError):
    """No API key was configured where one is needed; the message says how to provide it."""


def missing_key_message(owner: str, env_var: str, table: str) -> str:
    """``owner needs an API key: ...`` with the fix: the variable to export, or the config entry."""
    if env_var:
        how = f"${env_var} is not set; export {env_var}=<key>, or put api_key in the [{table}] table of the config file"
    else:
        how = (f"put api_key in the [{table}] table of the config file, or name the environment variable "
               f"that holds it with api_key_env there")
    return f"{owner} needs an API key: {how}"


def resolve_api_key(
    key: SecretStr | str | None,
    env_var: str = "",
    *,
    owner: str,
    table: str,
    required: bool = True,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """The key: ``key`` when it is set and not empty, else the value of ``$env_var``.

    Without either, raises :class:`MissingKeyError` (naming ``owner``, the variable and the ``[table]``
    of the config file) when ``required``, else returns ``None``. ``environ`` replaces ``os.environ``
    (tests, embedding).
    """
    value = key.get_secret_value() if isinstance(key, SecretStr) else key
    if value:
        return value
    if env_var:
        env = os.environ if environ is None else environ
        found = env.get(env_var)
        if found:
            return found
    if required:
        raise MissingKeyError(missing_key_message(owner, env_var, table))
    return None


__all__ = ["MissingKeyError", "missing_key_message", "resolve_api_key"]
