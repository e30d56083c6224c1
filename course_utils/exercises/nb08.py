"""Exercises of notebook 08 (instruction tuning)."""

from course_utils.core.train import IGNORE_INDEX
from course_utils.exercises import Exercise, Incorrect, expect_number
from course_utils.lessons.instruction_tuning import alpaca_to_messages

# --------------------------------------------------------------------------- Q1: Alpaca row → messages
Q1_ROW = {"instruction": "다음 식을 계산하세요. 답은 숫자만 쓰세요.", "input": "96 - 38", "output": "58"}


def _check_q1(messages) -> None:
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise Incorrect("expected a list of dicts like {'role': 'user', 'content': '…'}")
    roles = [m.get("role") for m in messages]
    if roles != ["user", "assistant"]:
        raise Incorrect(f"expected the roles ['user', 'assistant'] in that order, got {roles}")
    want = alpaca_to_messages(Q1_ROW)["messages"]
    if messages[1].get("content") != want[1]["content"]:
        raise Incorrect("the assistant's content should be the row's output, exactly")
    user = messages[0].get("content", "")
    if Q1_ROW["input"] not in user:
        raise Incorrect("the user turn lost the input: the model would be asked to compute nothing")
    if user != want[0]["content"]:
        raise Incorrect("join instruction and input with one blank line ('\\n\\n'), the rule of the data card")


q1 = Exercise(
    name="Q1 🐢 an Alpaca row as chat messages",
    checker=_check_q1,
    hint_text="Two messages: the user's content is the instruction, a blank line (`\"\\n\\n\"`), then the input; "
              "the assistant's content is the output.",
    solution_text="```python\nmy_messages = [\n    {\"role\": \"user\", \"content\": row[\"instruction\"] + \"\\n\\n\" + "
                  "row[\"input\"]},\n    {\"role\": \"assistant\", \"content\": row[\"output\"]},\n]\n"
                  "# the same as alpaca_to_messages(row)[\"messages\"]\n```",
    solution_answer=lambda: (alpaca_to_messages(Q1_ROW)["messages"],),
    wrong_answer=lambda: ([{"role": "user", "content": Q1_ROW["instruction"]},
                           {"role": "assistant", "content": Q1_ROW["output"]}],),
)


# --------------------------------------------------------------------------- Q2: which tokens carry loss
def _n_trained(example: dict) -> int:
    return sum(int(lab) != IGNORE_INDEX for lab in example["labels"])


def _check_q2(n_trained, example) -> None:
    if isinstance(n_trained, bool):
        raise Incorrect("expected a number of tokens, not a bool")
    if n_trained == len(example["labels"]):
        raise Incorrect("that is every token: the prompt's labels are −100 and carry no loss")
    if n_trained == len(example["labels"]) - _n_trained(example):
        raise Incorrect("that counts the tokens *without* loss (label −100); count the others")
    expect_number(n_trained, _n_trained(example), rel=0, what="n_trained")


_TOY = {"input_ids": [1, 9690, 198, 2683, 13, 2, 1, 520, 9531, 198, 5248, 2, 198],
        "labels": [IGNORE_INDEX] * 10 + [5248, 2, 198]}

q2 = Exercise(
    name="Q2 🐕 how many tokens carry loss?",
    checker=_check_q2,
    hint_text="A token carries loss when its label is not −100 (`IGNORE_INDEX`). Count them in "
              "`example[\"labels\"]`.",
    solution_text="```python\nn_trained = sum(label != -100 for label in example[\"labels\"])\n```",
    solution_answer=lambda: (_n_trained(_TOY), _TOY),
    wrong_answer=lambda: (len(_TOY["labels"]), _TOY),
)


# --------------------------------------------------------------------------- Q3: generation markers
# A stripped-down ChatML template (no default system prompt) for the learner to mark up.
Q3_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_Q3_CHAT = [{"role": "user", "content": "2 + 3"}, {"role": "assistant", "content": "5"},
            {"role": "user", "content": "4 + 4"}, {"role": "assistant", "content": "8"}]
Q3_SOLUTION = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endgeneration %}"
    "{% else %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _render(template: str, with_mask: bool):
    from transformers.utils.chat_template_utils import render_jinja_template

    return render_jinja_template([_Q3_CHAT], chat_template=template, return_assistant_tokens_mask=with_mask)


def _check_q3(template) -> None:
    import re

    if not isinstance(template, str):
        raise Incorrect(f"expected the template as a string, got {type(template).__name__}")
    if not re.search(r"\{%-?\s*generation\s*-?%\}", template) or "endgeneration" not in template:
        raise Incorrect("no `{% generation %}` … `{% endgeneration %}` markers in the template")
    try:
        (text,), (spans,) = _render(template, True)
    except Exception as e:  # a Jinja syntax error is a wrong answer, not a crash
        raise Incorrect(f"the template does not render: {e}") from None
    if text != _render(Q3_TEMPLATE, False)[0][0]:
        raise Incorrect("the marked template must render exactly the same text as the original")
    marked = [text[s:e].rstrip("\n") for s, e in spans]
    if marked != ["5<|im_end|>", "8<|im_end|>"]:
        raise Incorrect(f"the markers should cover each answer and its <|im_end|> (so the model learns to stop), "
                        f"they cover {marked}")


q3 = Exercise(
    name="Q3 🦁 add generation markers to a chat template",
    checker=_check_q3,
    hint_text="Render assistant turns separately: `{% if message['role'] == 'assistant' %}` write "
              "`'<|im_start|>assistant\\n'` outside the markers and `message['content'] + '<|im_end|>' + '\\n'` "
              "inside `{% generation %}…{% endgeneration %}`; other roles as before.",
    solution_text=f"```python\nmy_template = {Q3_SOLUTION!r}\n```",
    solution_answer=lambda: (Q3_SOLUTION,),
    wrong_answer=lambda: (Q3_TEMPLATE.replace("{{'<|im_start|>' + message['role'] + '\n' + message['content']",
                                              "{% generation %}{{'<|im_start|>' + message['role'] + '\n' + "
                                              "message['content']").replace("{% endfor %}",
                                                                            "{% endgeneration %}{% endfor %}", 1),),
)
