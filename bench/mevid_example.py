"""The person crops of the MEVID example picture: 3 identities, enrolment photos and crops from several MEVA cameras.

The picture (reid/mevid_example.png, 1066x705) holds three identities side by side (yellow, green,
red boxes). Its top row holds each identity's enrolment photos (in several outfits), rows 2-3 its
crops from MEVA cameras, each in a coloured box.

How the coordinates below were measured: the enrolment columns from the strongest vertical colour
edges of the top row (mean absolute difference of neighbouring columns over rows 0..225), checked
on a 1.6x enlargement with a pixel ruler in the image viewer; the camera boxes as the connected
components of each box colour (yellow R, G > 200, B < 90; green G > 200, R, B < 130; red R > 190,
G, B < 70) below row 232, the one green box that touches its neighbour above measured by hand on
a 3x enlargement. Crops are cut ``BORDER`` pixels inside each box, so the coloured line is left out.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

PICTURE = "reid/mevid_example.png"
BORDER = 4
ENROLMENT_ROWS = (2, 226)
# Enrolment photos per identity: (x0, x1) columns of the top row.
ENROLMENT = {
    0: ((1, 59), (59, 126), (126, 187), (187, 247), (247, 312), (312, 371)),
    1: ((378, 446), (446, 505), (505, 564), (564, 620), (620, 686), (686, 742)),
    2: ((749, 812), (812, 873), (873, 941), (941, 1000), (1000, 1060)),
}
# Camera crops per identity: the outer (x, y, w, h) of each coloured box.
CAMERA_BOXES = {
    0: ((7, 237, 66, 247), (89, 254, 88, 224), (201, 287, 66, 159), (295, 271, 62, 178),
        (7, 490, 67, 202), (89, 513, 72, 167), (187, 502, 63, 200), (284, 502, 67, 190)),
    1: ((382, 244, 74, 225), (481, 236, 82, 242), (578, 237, 83, 241), (674, 262, 68, 215),
        (392, 513, 63, 184), (475, 483, 69, 219), (553, 484, 75, 217), (637, 484, 104, 218)),
    2: ((750, 247, 87, 225), (859, 259, 57, 201), (951, 248, 102, 224),
        (764, 490, 67, 178), (872, 490, 73, 190), (980, 513, 63, 189)),
}


def mevid_crops(shared: Path) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """RGB crops of the picture, their identities [N] and whether each is an enrolment photo [N] (enrolment first)."""
    picture = cv2.cvtColor(cv2.imread(str(shared / PICTURE)), cv2.COLOR_BGR2RGB)
    top, bottom = ENROLMENT_ROWS
    crops, labels, enrolment = [], [], []
    for person, columns in ENROLMENT.items():
        for x0, x1 in columns:
            crops.append(picture[top:bottom, x0:x1].copy())
            labels.append(person)
            enrolment.append(True)
    for person, boxes in CAMERA_BOXES.items():
        for x, y, w, h in boxes:
            crops.append(picture[y + BORDER:y + h - BORDER, x + BORDER:x + w - BORDER].copy())
            labels.append(person)
            enrolment.append(False)
    return crops, np.array(labels), np.array(enrolment)
