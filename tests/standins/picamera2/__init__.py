"""STAND-IN for the Picamera2 library (no camera module can exist on a CI machine).

It implements only the documented calls the daemon's Picamera2 source uses (The Picamera2 Library
manual: Picamera2(camera_num), create_video_configuration(main=..., controls=...), configure,
start, capture_array("main"), stop, close) with the documented shapes: an "RGB888" main stream
gives H x W x 3 uint8 arrays in B, G, R order. Frames come from a video file
($PICAMERA2_STANDIN_VIDEO, looped); $PICAMERA2_STANDIN_CAMERAS cameras exist (default 1); every
call is appended to $PICAMERA2_STANDIN_LOG as a JSON line, so a test can check what was asked.
"""
import json
import os
import time

import cv2

STANDIN = True


def _log(call, **kw):
    path = os.environ.get("PICAMERA2_STANDIN_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"call": call, **kw}) + "\n")


class Picamera2:
    def __init__(self, camera_num=0):
        if camera_num >= int(os.environ.get("PICAMERA2_STANDIN_CAMERAS", "1")):
            _log("init-failed", camera_num=camera_num)
            raise IndexError("list index out of range")  # what Picamera2 raises for a missing camera
        self.camera_num, self.config, self.started, self.cap = camera_num, None, False, None
        _log("init", camera_num=camera_num)

    def create_video_configuration(self, main=None, controls=None, **kw):
        main = {"format": "XBGR8888", "size": (1280, 720), **(main or {})}
        return {"use_case": "video", "main": main, "controls": dict(controls or {})}

    def configure(self, config):
        self.config = config
        _log("configure", main={"format": config["main"]["format"], "size": list(config["main"]["size"])},
             controls=config["controls"])

    def start(self):
        self.cap = cv2.VideoCapture(os.environ["PICAMERA2_STANDIN_VIDEO"])
        self.started = True
        _log("start")

    def capture_array(self, name="main"):
        if not self.started:
            raise RuntimeError("Camera must be started before capture")
        fps = self.config["controls"].get("FrameRate")
        if fps:
            time.sleep(1.0 / fps)
        ok, img = self.cap.read()
        if not ok:  # loop the file, like a camera that never ends
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, img = self.cap.read()
        w, h = self.config["main"]["size"]
        return cv2.resize(img, (w, h))  # RGB888 is B, G, R in memory: as OpenCV's frames

    def stop(self):
        self.started = False
        _log("stop")

    def close(self):
        if self.cap is not None:
            self.cap.release()
        _log("close")
