"""Request and Sampling: values with a JSON form."""

from __future__ import annotations

import json

import pytest

from llmi.config import LLMSettings
from llmi.images import ImageData
from llmi.request import Request, Sampling

from .helpers import make_png


def test_a_request_round_trips_through_json_with_its_images():
    img = ImageData.from_bytes(make_png(20, 10, (1, 2, 3)))
    req = Request("Draw it", images=[img], history=[{"role": "user", "content": "hi"},
                                                    {"role": "assistant", "content": "hello"}],
                  sampling=Sampling(temperature=0.3, seed=9, extra_body={"top_k": 5}), system_prompt="SYS",
                  image_num=2, tools=["code", "search"])
    assert isinstance(req.images, tuple) and isinstance(req.tools, tuple)  # lists become tuples
    back = Request.from_dict(json.loads(json.dumps(req.to_dict())))
    assert back == req
    assert back.images[0].data == img.data and back.run_id == req.run_id


def test_of_accepts_a_prompt_or_a_request_and_run_ids_differ():
    a, b = Request.of("x"), Request.of("x")
    assert a.prompt == "x" and a.run_id != b.run_id and len(a.run_id) == 12
    assert Request.of(a) is a
    assert Request.of(a, sampling=Sampling(seed=1)).sampling.seed == 1
    with pytest.raises(TypeError):
        Request.of(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad, why", [
    ({}, "prompt"),
    ({"prompt": "p", "history": [{"role": "user", "content": ["parts"]}]}, "history"),
    ({"prompt": "p", "tools": "code"}, "tools"),
    ({"prompt": "p", "image_num": True}, "image_num"),
    ({"prompt": "p", "sampling": {"seed": "7"}}, "seed"),
    ({"prompt": "p", "sampling": {"temprature": 1}}, "temprature"),
    ({"prompt": "p", "images": [{"mime": "image/png"}]}, "data_base64"),
])
def test_a_malformed_request_is_a_value_error_naming_the_field(bad, why):
    with pytest.raises(ValueError, match=why):
        Request.from_dict(bad)


def test_sampling_over_settings_takes_only_what_is_unset():
    s = LLMSettings(temperature=0.7, top_p=0.9, max_tokens=100, extra_body={"top_k": 5, "min_p": 0.1})
    got = Sampling(temperature=0.0, extra_body={"top_k": 20}).over(s)
    assert got == Sampling(temperature=0.0, top_p=0.9, max_tokens=100, seed=None,
                           extra_body={"top_k": 20, "min_p": 0.1})
    assert Sampling().over(s).temperature == 0.7
    assert Sampling(seed=3).to_dict() == {"seed": 3} and Sampling.from_dict(None) == Sampling()
