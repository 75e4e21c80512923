"""`facechain together`: two users in one picture, with the same consent the bot asks for."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from engine.cli.common import command, open_store, read_photo, report
from engine.config import Settings
from engine.errors import FaceChainError
from engine.provenance import save_marked


@dataclass
class ConsoleContext:
    """A JobContext for a drawing run here: progress shown on a bar, never cancelled."""

    show: object = field(default=lambda progress, text: None)

    def update(self, progress: float, text: str) -> None:
        self.show(progress, text)

    def cancelled(self) -> bool:
        return False

    def should_stop(self) -> bool:
        return False

    def save_checkpoint(self, data: bytes) -> None:
        pass


def parse_faces(text: str | None) -> tuple[int, int] | None:
    """`--faces 1,2`: which face is the user's and which the other's, numbered left to right."""
    if text is None:
        return None
    try:
        first, second = (int(part) for part in text.split(","))
    except ValueError:
        raise FaceChainError(f"--faces takes two face numbers, the user's then the other's (like 1,2), not {text!r}.") \
            from None
    return first, second


def cmd_together(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    from engine.generation.portrait import picture_path
    from engine.jobs.together_runner import draw_together, together_inputs
    from engine.models.loaded import LoadedModels
    from engine.store.together import may_draw

    store = open_store(settings)
    if args.faces and not args.photo:
        raise FaceChainError("--faces chooses faces on a photo: give --photo too.")
    if store.get_user(args.partner) is None:
        raise FaceChainError(f"User {args.partner} is not enrolled.")
    if not may_draw(store, args.user, args.partner, None):
        raise FaceChainError(f"{args.partner} has not allowed pictures with {args.user}: they choose in /facechain me "
                             f"(here: `facechain users set {args.partner} --together always`).")
    photo = read_photo(args.photo) if args.photo else None
    inputs = together_inputs(store, settings, args.user, args.partner, photo=photo, faces=parse_faces(args.faces),
                             style_id=args.style, pose_id=args.pose, seed=args.seed)
    with Progress(TextColumn("{task.description}"), BarColumn(), console=Console(stderr=True),
                  disable=args.json) as bar:
        task = bar.add_task("loading the models", total=1.0)
        outputs = draw_together(LoadedModels(settings), inputs, ConsoleContext(
            lambda share, text: bar.update(task, completed=share, description=text)))
    if outputs.choose:
        raise FaceChainError(f"This photo shows {outputs.choose} faces: choose whose is whose with --faces "
                             f"(like 1,2: {args.user}'s, then {args.partner}'s; numbered left to right).")
    best = picture_path(Path(args.out), f"together-{args.user}-{args.partner}.png")
    best.parent.mkdir(parents=True, exist_ok=True)
    results = []
    for index, picture in enumerate(outputs.drawn.portraits, start=1):
        path = best if index == 1 else best.with_name(f"{best.stem}-{index}{best.suffix}")
        save_marked(picture.image, path, settings.data_dir)
        results.append({"path": str(path), "likeness": picture.similarity, "seed": picture.seed,
                        "pasted": [[args.user, args.partner][index] for index in picture.pasted]})
    score = results[0]["likeness"] if results else None
    report(args, {"path": results[0]["path"] if results else None, "results": results, "faces": outputs.faces,
                  "faces_found": outputs.faces_found, "pose": inputs.pose.id if inputs.pose else None,
                  "style": inputs.style.id if inputs.style else None, "notice": outputs.drawn.notice},
           f"Wrote {len(results)} pictures of {args.user} and {args.partner}, best first, the best at {best}"
           + (f" (the lower likeness {score:.0%})." if score is not None else " (not ranked).")
           + (f" {outputs.drawn.notice}" if outputs.drawn.notice else ""))
    return 0


def register(commands) -> None:
    together = command(commands, "together", cmd_together,
                       "two users in one picture, each face redrawn by its own face model: on a photo, or in a "
                       "scene of a style (the other user must allow it: `users set USER --together`)")
    together.add_argument("--user", required=True, help="the user who asks (on the left in a scene)")
    together.add_argument("--with", dest="partner", required=True, metavar="USER", help="the other user")
    together.add_argument("--style", help="the scene's style, without --photo (default: polaroid)")
    together.add_argument("--pose", help="a pose for two people, without --photo (`facechain poses list`; default "
                                         "side-by-side)")
    together.add_argument("--photo", metavar="PHOTO", help="a photo of two or more people to redraw instead of a scene")
    together.add_argument("--faces", metavar="A,B", help="on a photo: the user's face number, then the other's "
                                                         "(left to right; needed when it shows more than two)")
    together.add_argument("--seed", type=int, help="the first seed")
    together.add_argument("--out", required=True, metavar="OUT",
                          help="a file ending in .png, .jpg or .webp, or a folder to write them in")
