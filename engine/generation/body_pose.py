"""A pose from a photo a member brings: DWPose's two ONNX models on onnxruntime, as ControlNet's
preprocessors run them (controlnet_aux's DwposeDetector), without their packages' OpenCV-with-GUI
dependencies.

A YOLOX detector finds the people (640x640 letterboxed input, 8400 anchors of 80 classes out);
RTMPose reads the largest one's 133 COCO-WholeBody points from a 288x384 crop (SimCC: a score per
half pixel along x and along y). The 17 body points become the 18 OpenPose points a pose ControlNet
reads (the neck between the shoulders), framed 2 wide by 3 high around the body.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from engine.config import Settings
from engine.errors import FaceChainError, ModelUnavailable
from engine.generation.poses import Pose
from engine.models.references import hub_file, parse_model_reference

POSE_DETECTOR_SETTING = "FACECHAIN_POSE_DETECTOR"
POSE_DETECTOR_PROBLEM = "pose detector"  # its setup-problem key
DETECTOR_FILE, KEYPOINTS_FILE = "yolox_l.onnx", "dw-ll_ucoco_384.onnx"
DETECTOR_SIZE = 640
STRIDES = (8, 16, 32)
PERSON_SCORE, NMS_IOU = 0.3, 0.45
KEYPOINTS_SIZE = (288, 384)  # width, height
SIMCC_SPLIT = 2.0  # SimCC scores every half pixel
BOX_PADDING = 1.25
MEAN, STD = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
POINT_SCORE = 0.3
# COCO's 17 body points in its order, named as poses.POINTS names them (the neck is made).
COCO_BODY = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
             "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
             "right_knee", "left_ankle", "right_ankle")
FRAME_MARGIN = 0.12  # of the body's height, around it, in the portrait's frame
NO_BODY = ("No body was found in that photo: send one where a person is clearly visible from the shoulders "
           "down, or choose one of the preset poses.")


@dataclass
class Person:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the photo
    score: float


class BodyPoseDetector:
    def __init__(self, folder: Path) -> None:
        import onnxruntime

        self.folder = Path(folder)
        missing = [name for name in (DETECTOR_FILE, KEYPOINTS_FILE) if not (self.folder / name).is_file()]
        if missing:
            raise ModelUnavailable(f"The pose detector in {self.folder} lacks {' and '.join(missing)}: run "
                                   "`facechain models pull`, or fix FACECHAIN_POSE_DETECTOR.", POSE_DETECTOR_PROBLEM)
        try:
            self.detector = onnxruntime.InferenceSession(str(self.folder / DETECTOR_FILE),
                                                         providers=["CPUExecutionProvider"])
            self.keypoints = onnxruntime.InferenceSession(str(self.folder / KEYPOINTS_FILE),
                                                          providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - a damaged file fails in onnxruntime's own ways
            raise ModelUnavailable(f"The pose detector in {self.folder} could not be loaded ({type(error).__name__}): "
                                   "re-download it with `facechain models pull`.", POSE_DETECTOR_PROBLEM) from None

    def people(self, image: np.ndarray) -> list[Person]:
        """The people in an RGB photo, surest first."""
        ratio = min(DETECTOR_SIZE / image.shape[0], DETECTOR_SIZE / image.shape[1])
        resized = cv2.resize(image[..., ::-1], (int(image.shape[1] * ratio), int(image.shape[0] * ratio)))
        padded = np.full((DETECTOR_SIZE, DETECTOR_SIZE, 3), 114, np.uint8)  # YOLOX's letterbox grey, BGR
        padded[:resized.shape[0], :resized.shape[1]] = resized
        batch = np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32)
        output = self.detector.run(None, {self.detector.get_inputs()[0].name: batch})[0][0]
        grids, strides = _anchor_grid()
        centres = (output[:, :2] + grids) * strides
        sizes = np.exp(np.clip(output[:, 2:4], -20, 20)) * strides
        scores = output[:, 4] * output[:, 5]  # objectness x the person class
        keep = scores > PERSON_SCORE
        boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)[keep] / ratio
        chosen = cv2.dnn.NMSBoxes([[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in boxes.tolist()],
                                  scores[keep].tolist(), PERSON_SCORE, NMS_IOU)
        people = [Person(tuple(boxes[i].tolist()), float(scores[keep][i])) for i in np.array(chosen).flatten()]
        return sorted(people, key=lambda person: person.score, reverse=True)

    def body_points(self, image: np.ndarray, person: Person) -> dict[str, tuple[float, float]]:
        """The person's body points seen with confidence, in photo pixels, by COCO name."""
        crop, centre, scale = _crop_for_keypoints(image, person.box)
        batch = ((crop[..., ::-1] - MEAN) / STD).transpose(2, 0, 1)[None].astype(np.float32)
        simcc_x, simcc_y = self.keypoints.run(None, {self.keypoints.get_inputs()[0].name: batch})
        x, y = simcc_x[0].argmax(axis=1) / SIMCC_SPLIT, simcc_y[0].argmax(axis=1) / SIMCC_SPLIT
        confidence = np.minimum(simcc_x[0].max(axis=1), simcc_y[0].max(axis=1))
        size = np.array(KEYPOINTS_SIZE, np.float32)
        points = np.stack([x, y], axis=1) / size * scale + centre - scale / 2
        return {name: (float(points[i, 0]), float(points[i, 1])) for i, name in enumerate(COCO_BODY)
                if confidence[i] > POINT_SCORE}

    def pose(self, image: np.ndarray) -> Pose:
        """The pose of the photo's surest person, framed for a portrait; FaceChainError when there is none."""
        return self.pose_in_frame(image)[0]

    def pose_in_frame(self, image: np.ndarray) -> tuple[Pose, tuple[float, float, float, float]]:
        """The pose, and the frame of the photo (left, top, width, height) its points are shares of."""
        people = self.people(image)
        if not people:
            raise FaceChainError(NO_BODY)
        points = self.body_points(image, people[0])
        if "left_shoulder" in points and "right_shoulder" in points:
            (lx, ly), (rx, ry) = points["left_shoulder"], points["right_shoulder"]
            points["neck"] = ((lx + rx) / 2, (ly + ry) / 2)
        if not {"nose", "neck"} <= set(points):
            raise FaceChainError(NO_BODY)
        full = any(name in points for name in ("left_knee", "right_knee", "left_ankle", "right_ankle"))
        frame = body_frame(points)
        return Pose(id="photo", name="your photo", description="the pose of the person in your photo",
                    framing="full" if full else "upper", points=framed(points, frame)), frame



def body_frame(points: dict[str, tuple[float, float]]) -> tuple[float, float, float, float]:
    """A 2-wide-by-3-high frame around the points (with a margin): left, top, width, height in photo pixels."""
    xs, ys = [x for x, _ in points.values()], [y for _, y in points.values()]
    height = max(ys) - min(ys) or 1.0
    top, bottom = min(ys) - FRAME_MARGIN * height, max(ys) + FRAME_MARGIN * height
    frame_height = max(bottom - top, 1.5 * (max(xs) - min(xs)) * (1 + 2 * FRAME_MARGIN))
    frame_width = frame_height / 1.5
    return (min(xs) + max(xs)) / 2 - frame_width / 2, (top + bottom) / 2 - frame_height / 2, frame_width, frame_height


def framed(points: dict[str, tuple[float, float]],
           frame: tuple[float, float, float, float]) -> dict[str, tuple[float, float]]:
    """Points in photo pixels as shares of the frame."""
    left, top, width, height = frame
    return {name: (float(np.clip((x - left) / width, 0, 1)), float(np.clip((y - top) / height, 0, 1)))
            for name, (x, y) in points.items()}


def _anchor_grid() -> tuple[np.ndarray, np.ndarray]:
    """YOLOX's anchor centres (in cells) and strides, in its output's order: 80x80, 40x40, 20x20."""
    grids, strides = [], []
    for stride in STRIDES:
        cells = DETECTOR_SIZE // stride
        xs, ys = np.meshgrid(np.arange(cells), np.arange(cells))
        grids.append(np.stack([xs, ys], axis=2).reshape(-1, 2))
        strides.append(np.full((cells * cells, 1), stride))
    return np.concatenate(grids).astype(np.float32), np.concatenate(strides).astype(np.float32)


def _crop_for_keypoints(image: np.ndarray, box: tuple[float, float, float, float]):
    """The box, padded and widened to RTMPose's 3:4, warped to 288x384; with its centre and size."""
    x1, y1, x2, y2 = box
    centre = np.array([(x1 + x2) / 2, (y1 + y2) / 2], np.float32)
    width, height = (x2 - x1) * BOX_PADDING, (y2 - y1) * BOX_PADDING
    aspect = KEYPOINTS_SIZE[0] / KEYPOINTS_SIZE[1]
    width, height = (width, width / aspect) if width > height * aspect else (height * aspect, height)
    scale = np.array([width, height], np.float32)
    source = np.float32([centre - scale / 2, [centre[0] + scale[0] / 2, centre[1] - scale[1] / 2],
                         [centre[0] - scale[0] / 2, centre[1] + scale[1] / 2]])
    target = np.float32([[0, 0], [KEYPOINTS_SIZE[0], 0], [0, KEYPOINTS_SIZE[1]]])
    crop = cv2.warpAffine(image, cv2.getAffineTransform(source, target), KEYPOINTS_SIZE, flags=cv2.INTER_LINEAR)
    return crop.astype(np.float32), centre, scale


@lru_cache(maxsize=2)
def get_body_pose_detector(reference: str) -> BodyPoseDetector:
    """The detector FACECHAIN_POSE_DETECTOR names (a folder with both files, a Hugging Face id or
    modelscope:<id>), loaded once; ModelUnavailable when it is not set or not to be had."""
    if not reference.strip():
        raise ModelUnavailable(f"A pose from a photo was asked for but {POSE_DETECTOR_SETTING} is empty: set it to "
                               f"{Settings.default('pose_detector')} (or a local copy).", POSE_DETECTOR_PROBLEM)
    parsed = parse_model_reference(reference)
    if parsed.kind == "local":
        return BodyPoseDetector(Path(parsed.value).expanduser())
    try:
        folder = hub_file(parsed, DETECTOR_FILE, POSE_DETECTOR_SETTING).parent
        hub_file(parsed, KEYPOINTS_FILE, POSE_DETECTOR_SETTING)
    except ModelUnavailable as error:
        raise ModelUnavailable(str(error), POSE_DETECTOR_PROBLEM) from None
    return BodyPoseDetector(folder)


def read_pose_photo(settings, data: bytes):
    """The body pose in a photo's bytes (checked as a selfie is: size, format), and with FACECHAIN_POSE_DEPTH
    the photo's depth in the pose's frame (else None); FaceChainError in plain words."""
    from engine.preprocess.decode import decode_photo
    from engine.preprocess.reasons import ADVICE, PhotoRejected

    try:
        image = decode_photo(data, settings.max_photo_megapixels)
    except PhotoRejected as rejection:
        raise FaceChainError(f"That pose photo can't be used: {rejection.detail}. {ADVICE[rejection.reason]}.") from None
    pose, frame = get_body_pose_detector(settings.pose_detector).pose_in_frame(image)
    if not settings.pose_depth:
        return pose, None
    from engine.generation.depth import depth_in_frame

    return pose, depth_in_frame(settings.depth_estimator, image, frame)
