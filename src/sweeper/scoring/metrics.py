"""Per-image metrics on the field's models (transformers' CLIPModel and CLIPProcessor).

    clip       CLIP score as torchmetrics defines it: 100 * max(cos(image embedding, prompt embedding), 0)
    aesthetic  the LAION improved aesthetic predictor: an MLP 768 -> 1024 -> 128 -> 64 -> 16 -> 1 on the
               L2-normalised CLIP ViT-L/14 image embedding (the one the clip metric computed: nearly free)
    pickscore  PickScore (a CLIP-H fine-tune): logit_scale * cos(image embedding, prompt embedding)
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

METRICS = ("clip", "aesthetic", "pickscore")


class AestheticHead(nn.Module):
    """The MLP of christophschuhmann/improved-aesthetic-predictor (its state dict's keys: layers.0 ... layers.7)."""

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.layers(embedding)


def aesthetic_head(input_size: int) -> AestheticHead:
    return AestheticHead(input_size).eval()


def _features(output: Any) -> torch.Tensor:
    """get_image_features / get_text_features: a tensor, or (transformers 5) an output holding it as pooler_output."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _normalised(embedding: torch.Tensor) -> torch.Tensor:
    return embedding / embedding.norm(p=2, dim=-1, keepdim=True)


def image_tensors(images: Sequence[Any]) -> list[torch.Tensor]:
    """(H, W, 3) uint8 arrays -> (3, H, W) uint8 tensors, the form torchmetrics hands its processor."""
    return [torch.tensor(image).permute(2, 0, 1) for image in images]  # a copy: a PNG's array is read-only


class Scorer:
    """The models of some metrics, loaded once (models.load); score() gives each image its values."""

    def __init__(self, metrics: Sequence[str], models: dict[str, Any], device: str) -> None:
        self.metrics = tuple(metrics)
        self.models = models  # "clip": (model, processor), "aesthetic": head, "pickscore": (model, processor)
        self.device = device

    @torch.inference_mode()
    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> dict[str, list[float]]:
        """{metric: one value per image}; `images` are (H, W, 3) uint8 arrays, `prompts` their prompts."""
        values: dict[str, list[float]] = {}
        if "clip" in self.metrics or "aesthetic" in self.metrics:
            model, processor = self.models["clip"]
            image = _normalised(self._image_embedding(model, processor, images))
            if "clip" in self.metrics:
                text = _normalised(self._text_embedding(model, processor, prompts))
                values["clip"] = (100 * (image * text).sum(dim=-1)).clamp(min=0).tolist()
            if "aesthetic" in self.metrics:
                values["aesthetic"] = self.models["aesthetic"](image).squeeze(-1).tolist()
        if "pickscore" in self.metrics:
            model, processor = self.models["pickscore"]
            image = _normalised(self._image_embedding(model, processor, images))
            text = _normalised(self._text_embedding(model, processor, prompts))
            values["pickscore"] = (model.logit_scale.exp() * (image * text).sum(dim=-1)).tolist()
        return values

    def _image_embedding(self, model: Any, processor: Any, images: Sequence[Any]) -> torch.Tensor:
        pixels = processor(images=image_tensors(images), return_tensors="pt")["pixel_values"]
        return _features(model.get_image_features(pixel_values=pixels.to(self.device, model.dtype))).float()

    def _text_embedding(self, model: Any, processor: Any, prompts: Sequence[str]) -> torch.Tensor:
        tokens = processor(text=list(prompts), return_tensors="pt", padding=True, truncation=True)
        output = model.get_text_features(input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device))
        return _features(output).float()
