"""What the flow-matching families share (Flux, SD 3.5, Qwen-Image, Z-Image, Flux.2): a
transformer, FlowMatch schedulers, and the `shift` / `dynamic_shift` keys of their schedule."""

from __future__ import annotations

from typing import Any

from sweeper.rendering.families import FLOW, Family, sigma_kwargs


class FlowFamily(Family):
    schedulers = FLOW
    default_scheduler = "flow_euler"

    def scheduler_kwargs(self, spec: Any) -> dict[str, Any]:
        """sigmas, shift (FlowMatchEulerDiscreteScheduler's `shift`) and dynamic_shift (its `use_dynamic_shifting`)."""
        own = sigma_kwargs(spec.sigmas)
        if spec.shift is not None:
            own["shift"] = spec.shift
        if spec.dynamic_shift is not None:
            own["use_dynamic_shifting"] = spec.dynamic_shift
        return own
