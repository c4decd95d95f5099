"""Our jinja2 chat-template renderer: transformers' semantics and clear errors."""

from __future__ import annotations

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from qwq.errors import InvalidRequestError, ModelLoadError
from qwq.tokenizer.chat_template import render_chat_template

TEMPLATE = (
    "{%- for m in messages %}\n"
    "    {%- if m.role not in ['user', 'assistant', 'system'] %}"
    "{{ raise_exception('bad role ' + m.role) }}{% endif %}\n"
    "<{{ m.role }}>{{ m.content | trim }}</{{ m.role }}>\n"
    "{%- endfor %}\n"
    "{% if tools %}{{ tools | tojson }}{% endif %}"
    "{%- if add_generation_prompt %}<assistant>{% endif %}"
)
MESSAGES = [{"role": "system", "content": " Be nice. "}, {"role": "user", "content": "héllo 你好 😀"}]


def test_rendering_matches_transformers():
    tools = [{"name": "f", "description": "ünïcode"}]
    for add_prompt in (True, False):
        ours = render_chat_template(TEMPLATE, MESSAGES, add_generation_prompt=add_prompt, tools=tools)
        theirs = render_jinja_template(
            conversations=[MESSAGES], chat_template=TEMPLATE, add_generation_prompt=add_prompt, tools=tools
        )[0][0]
        assert ours == theirs


def test_template_raise_exception_becomes_a_request_error():
    with pytest.raises(InvalidRequestError, match="bad role tool"):
        render_chat_template(TEMPLATE, [{"role": "tool", "content": "x"}])


def test_template_syntax_error_is_a_load_error():
    with pytest.raises(ModelLoadError, match="chat template does not compile"):
        render_chat_template("{% for %}", MESSAGES)


def test_sandbox_blocks_attribute_escapes():
    with pytest.raises(InvalidRequestError, match="chat template failed"):
        render_chat_template("{{ messages.__class__.__mro__[1].__subclasses__() }}", MESSAGES)
