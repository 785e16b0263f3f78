"""Chat formats: our C renderer (src/chat.c through tests/c/tool_chat) against Jinja2 rendering real-looking
templates of each family, on random conversations (multi-turn, with and without system, unicode, stray
whitespace, reasoning blocks). The SmolLM2 template comes from the default model itself."""
from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

import pytest

jinja2 = pytest.importorskip("jinja2")
from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: E402

SEED = int(os.environ.get("TRI_TEST_SEED", time.time_ns() % 2**32))

# ---- templates, written after the real ones of each family ---------------------------------------------

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>'"
    " + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Qwen2-Instruct: ChatML with "You are a helpful assistant." when no system message is given.
QWEN2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
    "You are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>"
    "assistant\\n' }}{% endif %}"
)

QWEN25 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

QWEN3 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

LLAMA31 = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + message.tool_calls[0].function.name + '", ' }}
        {{- '"parameters": ' }}
        {{- message.tool_calls[0].function.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {{- message.content | tojson }}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

MISTRAL = r"""{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- '[INST] ' + system_message + '\n\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- '[INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

GEMMA2 = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)

GEMMA3 = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

DEEPSEEK_R1 = r"""{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='') %}{%- for message in messages %}{%- if message['role'] == 'system' %}{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}{%- if message['role'] == 'assistant' and message['content'] is none %}{%- set ns.is_tool = false -%}{%- for tool in message['tool_calls']%}{%- if not ns.is_first %}{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}{%- set ns.is_first = true -%}{%- else %}{{'\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}{%- endif %}{%- if message['role'] == 'assistant' and message['content'] is not none %}{%- if ns.is_tool %}{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- set ns.is_output_first = false %}{%- else %}{{'\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\n'}}{% endif %}"""

# The original R1 template: the generation prompt does not open the think block.
DEEPSEEK_R1_OLD = DEEPSEEK_R1.replace("{{'<｜Assistant｜><think>\\n'}}", "{{'<｜Assistant｜>'}}")

DS_BOS = "<｜begin▁of▁sentence｜>"

# name -> (template, detected format, bos, eos, alternating user/assistant required, system allowed)
FAMILIES = {
    "chatml": (CHATML, "chatml", "", "<|im_end|>", False, True),
    "qwen2": (QWEN2, "chatml", "", "<|im_end|>", False, True),
    "qwen2.5": (QWEN25, "qwen", "", "<|im_end|>", False, True),
    "qwen3": (QWEN3, "qwen3", "", "<|im_end|>", False, True),
    "llama3": (LLAMA3, "llama3", "<|begin_of_text|>", "<|eot_id|>", False, True),
    "llama3.1": (LLAMA31, "llama3", "<|begin_of_text|>", "<|eot_id|>", False, True),
    "llama2": (LLAMA2, "llama2", "<s>", "</s>", True, True),
    "mistral": (MISTRAL, "mistral", "<s>", "</s>", True, True),
    "gemma2": (GEMMA2, "gemma", "<bos>", "<eos>", True, False),
    "gemma3": (GEMMA3, "gemma", "<bos>", "<eos>", True, True),
    "deepseek-r1": (DEEPSEEK_R1, "deepseek-r1", DS_BOS, "<｜end▁of▁sentence｜>", False, True),
    "deepseek-r1-old": (DEEPSEEK_R1_OLD, "deepseek-r1", DS_BOS, "<｜end▁of▁sentence｜>", False, True),
}

# ---- helpers --------------------------------------------------------------------------------------------

WORDS = ["hello", "world", "Prove", "that", "sqrt(2)", "is", "irrational.", "ça", "va", "naïve", "中文", "日本語",
         "😀", "🦙", "｜", "<b>", "{{ x }}", "{% if %}", "back\\slash", "'quote'", '"dq"', "tab\there", "x=1;",
         "Ωmega", "ß", "[INST]", "<<SYS>>"]
SPACES = [" ", "\n", "\t", "\u3000", "\xa0", "\u2003", "\x0b", "\x1f", "\n\n", "  "]


def rand_text(rng: random.Random, allow_empty: bool = True) -> str:
    n = rng.randint(0 if allow_empty else 1, 12)
    parts = [rng.choice(WORDS) for _ in range(n)]
    text = ""
    for p in parts:
        text += p + (rng.choice(SPACES) if rng.random() < 0.3 else " ")
    text = text.rstrip(" ") if rng.random() < 0.5 else text
    if rng.random() < 0.3:
        text = rng.choice(SPACES) + text
    return text


def rand_assistant(rng: random.Random) -> str:
    text = rand_text(rng)
    r = rng.random()
    if r < 0.2:
        text = "<think>\n" + rand_text(rng) + "\n</think>\n\n" + text
    elif r < 0.3:
        text = rand_text(rng) + "</think>" + text
    return text


def rand_conversation(rng: random.Random, alternating: bool, system: bool) -> list[dict]:
    msgs = []
    if system and rng.random() < 0.5:
        msgs.append({"role": "system", "content": rand_text(rng)})
    turns = rng.randint(1, 6)
    for i in range(turns):
        if alternating:
            role = "user" if i % 2 == 0 else "assistant"
        else:
            role = rng.choice(["user", "user", "assistant", "system"]) if i > 0 else "user"
        msgs.append({"role": role, "content": rand_assistant(rng) if role == "assistant" else rand_text(rng)})
    return msgs


def render_jinja(template: str, messages, bos: str, eos: str, gen: bool) -> str:
    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, bos_token=bos, eos_token=eos,
                                            add_generation_prompt=gen)


def escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


@pytest.fixture(scope="module")
def tool_chat(request) -> Path:
    override = os.environ.get("TRI_TOOL_CHAT")
    if override:
        return Path(override)
    return request.getfixturevalue("c_tool")("tool_chat")


@pytest.fixture(scope="module")
def smollm_template(request) -> str:
    path = os.environ.get("PYTRIATTN_DEFAULT_MODEL")
    if not path:
        try:
            path = str(request.getfixturevalue("default_model"))
        except Exception:  # the fetch helper may not exist yet; fall back to the cached file
            path = os.path.expanduser("~/.cache/pytriattn/SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(path):
        pytest.skip("default model not available")
    from gguf import GGUFReader

    field = GGUFReader(path).fields["tokenizer.chat_template"]
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def run_tool(tool: Path, tmp_path: Path, template: str | None, messages, fmt="auto", bos="", gen=True):
    if template is None:
        tpath = "-"
    else:
        tpath = tmp_path / "template.jinja"
        tpath.write_text(template, encoding="utf-8")
    stdin = "".join(f"{m['role']}\t{escape(m['content']) if m['content'] is not None else '(null)'}\n"
                    for m in messages)
    p = subprocess.run([str(tool), str(tpath), fmt, bos, "1" if gen else "0"], input=stdin.encode("utf-8"),
                       capture_output=True)
    return p.returncode, p.stdout.decode("utf-8"), p.stderr.decode("utf-8", "replace")


def check_family(tool, tmp_path, template, fmt_expected, bos, eos, alternating, system, rng, n=40):
    mismatches = []
    for i in range(n):
        msgs = rand_conversation(rng, alternating, system)
        gen = rng.random() < 0.8
        try:
            want = render_jinja(template, msgs, bos, eos, gen)
        except jinja2.exceptions.TemplateError:
            want = None
        fmt = "auto" if i % 2 == 0 else fmt_expected
        rc, got, err = run_tool(tool, tmp_path, template, msgs, fmt, bos, gen)
        if want is None:
            if rc == 0:
                mismatches.append((msgs, "template raised, we rendered", got))
            continue
        if rc != 0 or got != want:
            mismatches.append((msgs, want, got if rc == 0 else err))
    assert not mismatches, f"seed {SEED}: {len(mismatches)} mismatches, first: {mismatches[0]!r}"


# ---- tests ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_matches_jinja(family, tool_chat, tmp_path):
    template, fmt, bos, eos, alternating, system = FAMILIES[family]
    rng = random.Random(f"{SEED}-{family}")
    rc, detected, _ = run_tool(tool_chat, tmp_path, template, [], "detect")
    assert rc == 0 and detected == fmt, f"{family}: detected {detected!r}, expected {fmt!r}"
    check_family(tool_chat, tmp_path, template, fmt, bos, eos, alternating, system, rng)
    if alternating:
        # Broken alternation: the template raises, so must we.
        check_family(tool_chat, tmp_path, template, fmt, bos, eos, False, system, rng, n=20)


def test_smollm2_template_from_model(tool_chat, tmp_path, smollm_template):
    assert "SmolLM" in smollm_template
    rc, detected, _ = run_tool(tool_chat, tmp_path, smollm_template, [], "detect")
    assert rc == 0 and detected == "chatml"
    rng = random.Random(f"{SEED}-smollm")
    check_family(tool_chat, tmp_path, smollm_template, "chatml", "", "<|im_end|>", False, True, rng, n=60)
    # The injected default system prompt, verbatim.
    rc, got, _ = run_tool(tool_chat, tmp_path, smollm_template, [{"role": "user", "content": "Hi"}])
    assert got == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                   "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_format_names_without_template(tool_chat, tmp_path):
    """A format name with no template behaves like the family's reference template."""
    rng = random.Random(f"{SEED}-names")
    cases = {"chatml": CHATML, "qwen": QWEN25, "qwen3": QWEN3, "llama3": LLAMA3, "llama2": LLAMA2,
             "mistral": MISTRAL, "gemma": GEMMA3, "deepseek-r1": DEEPSEEK_R1}
    for fmt, template in cases.items():
        _, _, bos, eos, alternating, _ = next(v for v in FAMILIES.values() if v[0] is template)
        for _ in range(10):
            msgs = rand_conversation(rng, alternating, True)
            want = render_jinja(template, msgs, bos, eos, True)
            rc, got, err = run_tool(tool_chat, tmp_path, None, msgs, fmt, bos, True)
            assert rc == 0 and got == want, f"seed {SEED} {fmt}: {msgs!r}\nwant {want!r}\ngot  {got or err!r}"


def test_errors(tool_chat, tmp_path):
    msgs = [{"role": "user", "content": "hi"}]
    rc, _, err = run_tool(tool_chat, tmp_path, "{{ messages }} unknown family", msgs)
    assert rc == 1 and "error 3" in err and "chatml" in err and "deepseek-r1" in err
    rc, _, err = run_tool(tool_chat, tmp_path, None, msgs)
    assert rc == 1 and "error 3" in err
    rc, _, err = run_tool(tool_chat, tmp_path, CHATML, msgs, "vicuna")
    assert rc == 1 and "error 3" in err and "vicuna" in err
    rc, _, err = run_tool(tool_chat, tmp_path, CHATML, [{"role": "wizard", "content": "x"}])
    assert rc == 1 and "error 4" in err and "wizard" in err
    rc, _, err = run_tool(tool_chat, tmp_path, CHATML, [{"role": "user", "content": None}])
    assert rc == 1 and "error 4" in err and "NULL content" in err
    rc, _, err = run_tool(tool_chat, tmp_path, MISTRAL, [{"role": "user", "content": "a"},
                                                         {"role": "user", "content": "b"}])
    assert rc == 1 and "error 4" in err and "alternate" in err


# ---- triattn-cli: chat wrapping, statistics, usage errors, benchmark output ------------------------------

@pytest.fixture(scope="module")
def model_path(request) -> str:
    path = os.environ.get("PYTRIATTN_DEFAULT_MODEL")
    if not path:
        try:
            path = str(request.getfixturevalue("default_model"))
        except Exception:
            path = os.path.expanduser("~/.cache/pytriattn/SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(path):
        pytest.skip("default model not available")
    return path


def test_cli_usage_errors(cli, model_path):
    rng = random.Random(f"{SEED}-cli")
    bad = [["-n", rng.choice(["abc", "1.5", "", "12x"])], ["--temp", "nan"], ["--top-k", "9" * 30],
           ["-t", "-%d" % rng.randint(1, 9)], ["--seed", "-1"], ["--no-such-option"], ["-c"]]
    for extra in bad:
        p = subprocess.run([str(cli), "-m", model_path, "-p", "hi", *extra], capture_output=True, text=True)
        assert p.returncode == 2, (extra, p.stderr)
        assert "triattn-cli" in p.stderr
    empty = {**os.environ, "PYTRIATTN_CACHE": f"/nonexistent/{rng.randint(0, 10**9)}"}  # no default model there
    p = subprocess.run([str(cli), "-p", "hi"], capture_output=True, text=True, env=empty)
    assert p.returncode == 2 and "model" in p.stderr
    p = subprocess.run([str(cli), "-m", f"/nonexistent/{rng.randint(0, 10**9)}.gguf", "-p", "hi"],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "cannot load model" in p.stderr
    p = subprocess.run([str(cli), "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "--kv-budget" in p.stdout and "--bench" in p.stdout


def test_cli_chat_generation(cli, model_path):
    words = ["France", "Paris", "numbers", "cats", "the sea", "rain"]
    prompt = "Tell me about " + random.Random(SEED).choice(words) + "."
    p = subprocess.run([str(cli), "-m", model_path, "-p", prompt, "--chat", "-n", "12", "--temp", "0", "-t", "1",
                        "-c", "256", "-v"], capture_output=True, timeout=600)
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode == 0, err
    assert "<|im_start|>user\n" + prompt + "<|im_end|>" in err  # the rendered prompt, shown with -v
    for key in ("prompt:", "decode:", "stop:", "kv cache:"):
        assert key in err
    assert p.stdout.decode("utf-8").strip()
    p = subprocess.run([str(cli), "-m", model_path, "-p", prompt, "--chat-format", "vicuna", "-n", "4", "-t", "1",
                        "-c", "256"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 1 and "chat format" in p.stderr


def test_cli_bench_json(cli, model_path):
    import json

    depth = random.Random(SEED).choice([16, 24, 40])
    p = subprocess.run([str(cli), "-m", model_path, "--bench", "-p", "16", "-n", "4", "-d", f"0,{depth}", "-r", "2",
                        "-t", "1", "--json"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert [r["test"] for r in rows] == ["pp16", "tg4 @ d0", f"pp16 @ d{depth}", f"tg4 @ d{depth}"]
    for r in rows:
        assert r["reps"] == 2 and r["tps_min"] <= r["tps_median"] <= r["tps_max"] and r["tps_min"] > 0
    assert rows[2]["kv_live_max"] == depth + 16 and rows[3]["kv_live_max"] == depth + 4


def test_cli_bench_parallel(cli, model_path):
    """-np: several sessions decode together (one forward step per token for all); every row reports them."""
    import json

    n = random.Random(SEED + 1).choice([2, 3])
    p = subprocess.run([str(cli), "-m", model_path, "--bench", "-p", "0", "-n", "4", "-d", "8", "-np", f"1,{n}",
                        "-r", "1", "-t", "1", "--json"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert [r["test"] for r in rows] == ["tg4 @ d8", f"tg4 @ d8 x{n}"]
    assert [r["parallel"] for r in rows] == [1, n]
    assert rows[1]["kv_live_max"] == 8 + 4 and rows[1]["kv_bytes"] == n * rows[0]["kv_bytes"]
    assert all(r["tps_median"] > 0 for r in rows)
    p = subprocess.run([str(cli), "-m", model_path, "-np", "2", "-p", "x"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--bench" in p.stderr
