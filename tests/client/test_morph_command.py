"""`latentmix morph` refuses what it cannot do before it talks to a service."""

import pytest

from latentmix.client import morph
from latentmix.client.errors import LatentMixError
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


@pytest.mark.parametrize(
    ("options", "inverted_at"),
    [
        ([], None),  # the model's default both ways
        (["--guidance-scale", "1"], 1.0),
        (["--guidance-scale", "1", "--inversion-guidance-scale", "7.5"], 7.5),
    ],
)
def test_keyframes_are_inverted_at_the_morph_s_guidance_unless_told_otherwise(
    options, inverted_at, monkeypatch, capsys
):
    """A keyframe comes back only when generated at the guidance it was inverted at."""
    calls = []

    class RecordingClient:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def invert(self, images, **kwargs):
            calls.append(kwargs)
            raise LatentMixError("recorded")

    monkeypatch.setattr(morph, "LatentMixClient", RecordingClient)
    assert main(["a.png", "b.png", "--frames", "5", "--out", "m.gif", *options]) == 1
    assert "recorded" in capsys.readouterr().err
    assert [call["guidance_scale"] for call in calls] == [inverted_at]
