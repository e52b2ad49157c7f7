"""Write a small LoRA for a tiny model, to try `lora=` offline:

    python -m sweeper.make_lora loras/style.safetensors                       # for model=tiny (SDXL)
    python -m sweeper.make_lora loras/sd.safetensors --model tiny-sd --seed 3  # for model=tiny-sd (SD 1.x)

A random peft adapter (rank 4) on the UNet's attention projections, from a
fixed seed, saved with the pipeline's `save_lora_weights`: diffusers' own
format, as `load_lora_weights` reads it. Random weights change the picture
visibly, which is all a tiny model can show.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sweeper.planning.lora_files import SUFFIX

MODELS = {"tiny": "tiny-sdxl", "tiny-sd": "tiny-sd"}  # model= option -> tiny model
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def make_lora(path: Path, model: str = "tiny", seed: int = 0, rank: int = 4) -> Path:
    """Write the adapter to `path` (a .safetensors file) and return it."""
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from sweeper.rendering.tiny import tiny_model_dir

    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir(MODELS[model]) / "unet")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False, target_modules=TARGETS))
    pipeline = StableDiffusionXLPipeline if MODELS[model] == "tiny-sdxl" else StableDiffusionPipeline
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pipeline.save_lora_weights(path.parent, unet_lora_layers=get_peft_model_state_dict(unet), weight_name=path.name)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweeper.make_lora", description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help=f"the LoRA file to write ({SUFFIX})")
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny", help="the tiny model it is for (default: tiny, the SDXL one)")
    parser.add_argument("--seed", type=int, default=0, help="the seed of its random weights (another seed, another adapter)")
    parser.add_argument("--rank", type=int, default=4, help="the adapter's rank (default 4)")
    args = parser.parse_args(argv)
    if args.output.suffix != SUFFIX:
        print(f"sweeper: error: invalid output {args.output}: must end in {SUFFIX}", file=sys.stderr)
        return 2
    if args.rank < 1:
        print(f"sweeper: error: invalid --rank {args.rank}: must be an integer >= 1", file=sys.stderr)
        return 2
    print(make_lora(args.output, args.model, args.seed, args.rank))
    return 0


if __name__ == "__main__":
    sys.exit(main())
