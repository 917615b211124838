"""The text condition the API plans for a mix (service/core/mix_planning.py)."""

from latentmix.service.core.mix_planning import text_condition


def test_a_prompt_asked_for_is_every_rows_prompt_even_the_empty_one():
    assert text_condition("a fox", ["a cat", "a dog"]) == {"prompt": "a fox"}
    assert text_condition("", ["a cat", "a dog"]) == {"prompt": ""}


def test_inputs_inverted_with_one_prompt_give_it_to_their_mixes():
    assert text_condition(None, ["a cat", "a cat"]) == {"prompt": "a cat"}
    assert text_condition(None, [None, None]) == {"prompt": ""}  # uploads carry no prompt


def test_inputs_inverted_with_different_prompts_have_them_mixed_row_by_row():
    assert text_condition(None, ["a cat", "a dog"]) == {
        "prompt": None,
        "prompts": ["a cat", "a dog"],
    }
    assert text_condition(None, ["a cat", None]) == {"prompt": None, "prompts": ["a cat", ""]}
