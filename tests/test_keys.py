"""The one API-key resolver: configured value, else the named variable, else an error with the fix."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from llmi.errors import ConfigError
from llmi.keys import MissingKeyError, resolve_api_key


def test_the_configured_key_wins_over_the_environment():
    env = {"K": "from-env"}
    assert resolve_api_key(SecretStr("conf"), "K", owner="o", table="t", environ=env) == "conf"
    assert resolve_api_key("plain", "K", owner="o", table="t", environ=env) == "plain"
    assert resolve_api_key(None, "K", owner="o", table="t", environ=env) == "from-env"
    assert resolve_api_key(SecretStr(""), "K", owner="o", table="t", environ=env) == "from-env"


def test_a_missing_key_says_what_to_set_and_where_and_never_leaks():
    with pytest.raises(MissingKeyError) as info:
        resolve_api_key(None, "MY_KEY", owner="backend search.x", table="backends.search.x", environ={"OTHER": "s3cret"})
    msg = str(info.value)
    assert isinstance(info.value, ConfigError)
    assert "backend search.x needs an API key" in msg and "export MY_KEY=" in msg
    assert "[backends.search.x]" in msg and "s3cret" not in msg
    with pytest.raises(MissingKeyError, match=r"api_key_env"):
        resolve_api_key(None, "", owner="judge", table="llm_judge", environ={})


def test_not_required_gives_none():
    assert resolve_api_key(None, "MY_KEY", owner="o", table="t", required=False, environ={}) is None
    assert resolve_api_key(None, "", owner="o", table="t", required=False) is None
