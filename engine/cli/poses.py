"""`facechain poses`: the preset poses (poses/*.toml), listed, and one shown with its skeleton."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from engine.cli.common import command, console, print_json, report
from engine.config import Settings
from engine.errors import FaceChainError


def cmd_poses_list(args: argparse.Namespace, settings: Settings) -> int:
    from engine.generation.poses import load_poses

    catalogue = load_poses()
    if args.json:
        print_json([{**pose.model_dump(mode="json", exclude={"points", "partner"}), "people": len(pose.people)}
                    for pose in catalogue.poses.values()])
        return 0
    table = Table(title=f"{len(catalogue.poses)} poses")
    for column in ("id", "name", "framing", "people", "description"):
        table.add_column(column)
    for pose in catalogue.poses.values():
        table.add_row(pose.id, pose.name, "upper body" if pose.framing == "upper" else "full body",
                      str(len(pose.people)), pose.description)
    console.print(table)
    for problem in catalogue.problems:
        console.print(f"[red]{problem}[/red]", soft_wrap=True)
    return 0


def cmd_poses_show(args: argparse.Namespace, settings: Settings) -> int:
    from engine.generation.pose_drawing import preview, skeleton
    from engine.generation.poses import find_pose, load_poses

    pose = find_pose(load_poses(), args.pose, people=None)
    written = {}
    if args.out:
        out = Path(args.out)
        if out.suffix.lower() != ".png":
            raise FaceChainError(f"--out {out}: write the skeleton as a .png file.")
        out.parent.mkdir(parents=True, exist_ok=True)
        skeleton(pose).save(out)
        preview(pose).save(out.with_name(out.stem + "-preview.png"))
        written = {"skeleton": str(out), "preview": str(out.with_name(out.stem + "-preview.png"))}
    report(args, {**pose.model_dump(mode="json"), **written},
           f"{pose.name} ({pose.framing} body): {pose.description} {len(pose.points)} body points"
           + (f"; skeleton at {written['skeleton']}, preview at {written['preview']}." if written else "."))
    return 0


def register(commands) -> None:
    poses = commands.add_parser("poses", help="the preset poses").add_subparsers(
        dest="poses_command", required=True, metavar="ACTION")
    command(poses, "list", cmd_poses_list, "list the preset poses")
    show = command(poses, "show", cmd_poses_show, "a pose's body points, and its skeleton and preview with --out")
    show.add_argument("pose", metavar="NAME")
    show.add_argument("--out", metavar="FILE.png", help="write the skeleton there (and FILE-preview.png)")
