"""Preset poses as data, like styles: one TOML file each in `poses/` (body points and a framing).
`pose_drawing` draws them; this module only reads them, so the bot can offer them without OpenCV."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.errors import FaceChainError

POSES_DIR = Path(__file__).resolve().parent.parent.parent / "poses"
# OpenPose's body points in its order: the index is what the skeleton's colours and limbs refer to.
POINTS = ("nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
          "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
          "right_eye", "left_eye", "right_ear", "left_ear")


class Pose(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")
    name: str = Field(min_length=1, max_length=60)
    description: str = Field(min_length=1, max_length=200)
    framing: Literal["upper", "full"]  # upper body or full body, FaceChain's two framings
    points: dict[Literal[POINTS], tuple[float, float]]
    # A second person, on the picture's right: a pose for two members (/facechain together), drawn 3 wide
    # by 2 high; `points` is then the person on the left.
    partner: dict[Literal[POINTS], tuple[float, float]] | None = None
    file: Path | None = Field(default=None, exclude=True)

    def model_post_init(self, context) -> None:
        for person in self.people:
            outside = [name for name, (x, y) in person.items() if not (0 <= x <= 1 and 0 <= y <= 1)]
            if outside:
                raise ValueError(f"points outside the picture (x and y go from 0 to 1): {', '.join(outside)}")
            if missing := {"nose", "neck"} - set(person):
                raise ValueError(f"a pose needs at least the {' and the '.join(sorted(missing))} of each person")

    @property
    def people(self) -> list[dict[str, tuple[float, float]]]:
        """Each person's points, left to right."""
        return [self.points] + ([self.partner] if self.partner else [])


@dataclass
class PoseCatalogue:
    poses: dict[str, Pose]
    problems: list[str]

    def get(self, pose_id: str) -> Pose | None:
        return self.poses.get(pose_id)


def load_poses(folder: Path | None = None) -> PoseCatalogue:
    """Every pose file in the folder; a broken one is reported by file and reason, the others load."""
    poses, problems = {}, []
    for path in sorted(Path(folder or POSES_DIR).glob("*.toml")):
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
            pose = Pose.model_validate({"id": path.stem, **data}).model_copy(update={"file": path})
        except ValidationError as error:
            problems += [f"{path}: {_where(item['loc'])}{item['msg'].removeprefix('Value error, ')}"
                         for item in error.errors()]
            continue
        except (tomllib.TOMLDecodeError, OSError) as error:
            problems.append(f"{path}: not a readable TOML file ({error})")
            continue
        poses[pose.id] = pose
    return PoseCatalogue(poses, problems)


def _where(location: tuple) -> str:
    return f"{'.'.join(map(str, location))}: " if location else ""


def find_pose(catalogue: PoseCatalogue, pose_id: str, people: int | None = 1) -> Pose:
    """The preset `pose_id` for `people` people (1: portraits, 2: two members together, None: any)."""
    pose = catalogue.get(pose_id)
    if pose is None or people not in (None, len(pose.people)):
        fitting = [pose.id for pose in catalogue.poses.values() if people in (None, len(pose.people))]
        raise FaceChainError(f"Unknown pose {pose_id!r}" + (" for two people" if people == 2 else "")
                             + f": one of {', '.join(fitting)}.")
    return pose
