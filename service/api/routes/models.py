"""GET /models: the models served, with their cards."""

from fastapi import APIRouter
from pydantic import BaseModel, Field

from latentmix.service.api.deps import RedisDep, SettingsDep
from latentmix.service.core.model_card import ModelCard
from latentmix.service.core.model_cards import model_cards, served_models

router = APIRouter(tags=["models"])


class ModelPublic(BaseModel):
    name: str
    workers: int = Field(description="live workers with this model loaded")
    default: bool = Field(description="requests that name no model run on this one")
    card: ModelCard | None = Field(description="None until a worker has loaded the model")


class ModelList(BaseModel):
    models: list[ModelPublic]


@router.get("/models", response_model=ModelList)
def list_models(redis: RedisDep, settings: SettingsDep) -> ModelList:
    """The configured model and every model a live worker serves, with their cards."""
    served, cards = served_models(redis), model_cards(redis)
    names = sorted({settings.model, *served})
    return ModelList(
        models=[
            ModelPublic(
                name=name,
                workers=served.get(name, 0),
                default=name == settings.model,
                card=cards.get(name),
            )
            for name in names
        ]
    )
