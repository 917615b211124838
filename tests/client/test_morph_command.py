"""`latentmix morph` refuses what it cannot do before it talks to a service."""

import pytest

from latentmix.client.morph import main


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["a.png", "b.png", "--frames", "5", "--out", "morph.avi"], "--out must end in"),
        (["a.png", "--frames", "5", "--out", "morph.gif"], "at least 2 images"),
    ],
)
def test_bad_morph_commands_say_why_without_a_service(argv, phrase, capsys):
    assert main([*argv, "--url", "http://127.0.0.1:9"]) == 2
    assert phrase in capsys.readouterr().err


def test_unknown_choices_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(["a.png", "b.png", "--frames", "5", "--out", "m.gif", "--spacing", "cosine"])
    assert "invalid choice: 'cosine'" in capsys.readouterr().err
