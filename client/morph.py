"""`latentmix morph a.png b.png c.png --frames 24 --spacing beta --attention fused --out
morph.mp4`: invert the keyframe images, morph through them, save the animation (and, with
--frames-dir, every frame as it finishes). Talks HTTP only."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from latentmix.client.api import (
    DEFAULT_METHOD,
    LatentMixClient,
    add_service_arguments,
    write_atomic,
)
from latentmix.client.errors import LatentMixError

FORMATS = (".webp", ".gif", ".mp4")
FRAME_NAME = "frame-{index:03}.png"  # --frames-dir: in the animation's order


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `morph` command to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "morph",
        help="morph through images and save the animation",
        description="Invert the images (the keyframes, in order), generate the frames between "
        "them and save the animation; the format follows --out (.webp, .gif or .mp4).",
    )
    parser.add_argument("images", type=Path, nargs="+", help="2 or more keyframe images")
    parser.add_argument("--out", type=Path, required=True, help="animation file (.webp/.gif/.mp4)")
    parser.add_argument("--frames", type=int, required=True, help="frames, keyframes included")
    parser.add_argument("--path", choices=("chain", "loop"), default="chain")
    parser.add_argument("--spacing", choices=("linear", "beta", "perceptual"), default="linear")
    parser.add_argument("--alpha", type=float, default=None, help="Beta spacing alpha (6)")
    parser.add_argument("--beta", type=float, default=None, help="Beta spacing beta (3)")
    parser.add_argument("--attention", choices=("none", "inner", "outer", "fused"), default="none")
    parser.add_argument("--method", default=DEFAULT_METHOD, help="mixing (default %(default)s)")
    parser.add_argument(
        "--prompt", action="append", default=None, help="once for all keyframes, or once each"
    )
    parser.add_argument("--guide-prompt", default=None, help="PAID: inner frames' prompt")
    parser.add_argument("--steps", type=int, default=None, help="generation steps")
    parser.add_argument("--inversion-steps", type=int, default=None, help="inversion steps")
    parser.add_argument(
        "--guidance-scale", type=float, default=None, help="CFG scale (default: the model's)"
    )
    parser.add_argument(
        "--inversion-guidance-scale",
        type=float,
        default=None,
        help="the keyframes' inversion CFG scale (default: --guidance-scale, as a keyframe "
        "only comes back when it is generated at the guidance it was inverted at)",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--fps", type=float, default=8.0, help="default %(default)s")
    parser.add_argument("--bounce", action="store_true", help="play forward, then backward")
    parser.add_argument("--frames-dir", type=Path, default=None, help="also save each frame")
    parser.add_argument("--model", default=None, help="model (default: the service's)")
    add_service_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run `morph`; returns the exit status (0 done, 1 failed, 2 usage)."""
    fmt = args.out.suffix.lower()
    if fmt not in FORMATS:
        return _fail(f"--out must end in {', '.join(FORMATS)}, got {args.out.name!r}", 2)
    if len(args.images) < 2:
        return _fail("a morph needs at least 2 images", 2)
    prompts = args.prompt[0] if args.prompt and len(args.prompt) == 1 else args.prompt
    progress = not args.no_progress
    try:
        with LatentMixClient(args.url, api_key=args.api_key) as lm:
            keyframes = lm.invert(
                args.images,
                prompt=prompts,
                model=args.model,
                inversion_steps=args.inversion_steps,
                guidance_scale=(
                    args.guidance_scale
                    if args.inversion_guidance_scale is None
                    else args.inversion_guidance_scale
                ),
                progress=progress,
            )
            job = lm.morph(
                keyframes,
                args.frames,
                path=args.path,
                spacing=args.spacing,
                alpha=args.alpha,
                beta=args.beta,
                method=args.method,
                attention=args.attention,
                prompts=prompts,
                guide_prompt=args.guide_prompt,
                guidance_scale=args.guidance_scale,
                steps=args.steps,
                seed=args.seed,
            )
            if args.frames_dir is not None:
                lm.download(job, args.frames_dir, progress=progress, name=FRAME_NAME)
            job = lm.wait(job, progress=progress)
            data = lm.animation(job, fmt.removeprefix("."), fps=args.fps, bounce=args.bounce)
    except LatentMixError as exc:
        return _fail(str(exc), 1)
    write_atomic(args.out, data)
    metrics = (job.result or {}).get("metrics") or {}
    print(
        f"{args.out}: {len(job.images)} frames; smoothness {metrics.get('smoothness')}, "
        f"consistency {metrics.get('consistency')} (distance: {metrics.get('distance')})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m latentmix.client.morph ...`: the command without the `latentmix` front."""
    parser = argparse.ArgumentParser(prog="latentmix")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(["morph", *(sys.argv[1:] if argv is None else argv)]))


def _fail(message: str, status: int) -> int:
    print(f"latentmix morph: error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
