"""tinyssd: the Single Shot MultiBox Detector of d2l's chapter, as a practical tool.

Shape vocabulary used in every docstring:
    B batch, A anchors per image, a anchors per feature-map cell,
    K classes including background (index 0), C = K - 1 object classes,
    M ground-truth boxes per image, S input image side.
Boxes are xyxy; normalised to [0, 1] in the chapter API, pixels at the user edges.
"""

__version__ = "0.1.0"
