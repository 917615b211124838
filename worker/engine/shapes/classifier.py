"""The shapes world's classifier: a small CNN with one head per attribute (shape, colour,
background). Its pooled features are this world's stand-in for CLIP and Inception features
in the offline quality metrics; results computed with them say "shapes-classifier features".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from latentmix.worker.engine.shapes import world

FEATURE_DIM = 128
HEADS: dict[str, tuple[str, ...]] = {
    "shape": world.SHAPES,
    "colour": world.COLOUR_NAMES,
    "background": world.BACKGROUND_NAMES,
}


class ShapesClassifier(nn.Module):
    """[N, 3, 64, 64] images in [0, 1] -> logits per head; `features` gives the pooled
    FEATURE_DIM-vector the heads read."""

    def __init__(self) -> None:
        super().__init__()
        # (width, stride): 64 -> 32, 16, 8, 4, 4 px; the last sees the whole image.
        plan = ((32, 2), (64, 2), (64, 2), (FEATURE_DIM, 2), (FEATURE_DIM, 1))
        layers: list[nn.Module] = []
        in_channels = 3
        for width, stride in plan:
            layers += [
                nn.Conv2d(in_channels, width, 3, stride=stride, padding=1),
                nn.GroupNorm(8, width),
                nn.SiLU(),
            ]
            in_channels = width
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleDict(
            {name: nn.Linear(FEATURE_DIM, len(classes)) for name, classes in HEADS.items()}
        )

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Max-pooled over positions: a small shape anywhere counts as much as a large one."""
        return self.trunk(images * 2 - 1).amax(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(images)
        return {name: head(features) for name, head in self.heads.items()}


@dataclass(frozen=True)
class Prediction:
    """Per image: the most likely class of each head, and the probabilities [N, classes]."""

    labels: dict[str, list[str]]
    probabilities: dict[str, torch.Tensor]

    def top(self, head: str, k: int) -> list[list[str]]:
        """The `k` most likely classes of `head` for each image, best first."""
        order = self.probabilities[head].argsort(dim=1, descending=True)[:, :k]
        return [[HEADS[head][int(j)] for j in row] for row in order]


@torch.no_grad()
def classify(classifier: ShapesClassifier, images: torch.Tensor) -> Prediction:
    """Classify [N, 3, 64, 64] images in [0, 1]."""
    logits = classifier(images.float())
    probabilities = {name: value.softmax(dim=1) for name, value in logits.items()}
    labels = {
        name: [HEADS[name][int(i)] for i in p.argmax(dim=1)] for name, p in probabilities.items()
    }
    return Prediction(labels, probabilities)


def judge(classifier: ShapesClassifier, images: torch.Tensor) -> list[tuple[str, float]]:
    """Each image's class as augmentation names it, "{colour} {shape}" (the judge labels of
    the model's card), and the probability of that reading (colour's times shape's)."""
    prediction = classify(classifier, images)
    colour, shape = prediction.probabilities["colour"], prediction.probabilities["shape"]
    return [
        (f"{c} {s}", float(colour[i].max() * shape[i].max()))
        for i, (c, s) in enumerate(
            zip(prediction.labels["colour"], prediction.labels["shape"], strict=True)
        )
    ]


def load_classifier(path: Path) -> ShapesClassifier:
    """The classifier saved at `path` (safetensors), in eval mode, float32."""
    from safetensors.torch import load_file

    classifier = ShapesClassifier()
    state = {name: value.float() for name, value in load_file(str(path)).items()}
    classifier.load_state_dict(state)
    return classifier.eval()
