"""The published numbers the book sets its own beside (cited, not computed).

From Miao et al., "Prior Knowledge-Guided Attention in Self-Supervised
Vision Transformers" (SPAN), as digested in the project's notes. Values in
percent. "DINO" there is the ImageNet DINO checkpoint, not trained on chest
films. The book's ``dino_start`` (its shared pretrained start, frozen) plays
that part: DINO trained on the book's pooled generated sets, chest phantoms
included, so unlike the paper's checkpoint it has seen chest films. ``random``
(an untrained network) is the paper's "random init" of its linear-probe
table. ``span_coverage`` is the book's extension and has no paper row.
"""

from __future__ import annotations

# Our regimen name -> the paper's row name.
REGIMEN_NAMES = {
    "random": "random init",
    "dino_start": "DINO",
    "dino": "DINO (CheX)",
    "dino_cxr": "DINO (CheX augm.)",
    "span_triangular": "SPAN triangular",
    "span_global": "SPAN global average",
    "span_deformable": "SPAN deformable",
}

# Table 1: attention mAP (pixel-wise AP of the assigned head; baselines: best head).
ATTENTION_MAP_JSRT = {
    "heart": {"DINO": 19.1, "DINO (CheX)": 5.7, "DINO (CheX augm.)": 26.4, "SPAN triangular": 54.5,
              "SPAN global average": 71.6, "SPAN deformable": 89.9},
    "left_lung": {"DINO": 30.1, "DINO (CheX)": 22.0, "DINO (CheX augm.)": 25.1, "SPAN triangular": 59.2,
                  "SPAN global average": 71.3, "SPAN deformable": 88.3},
    "right_lung": {"DINO": 46.3, "DINO (CheX)": 27.0, "DINO (CheX augm.)": 36.5, "SPAN triangular": 45.6,
                   "SPAN global average": 82.5, "SPAN deformable": 87.3},
}
ATTENTION_MAP_MONTGOMERY = {
    "left_lung": {"DINO": 43.2, "DINO (CheX)": 16.5, "DINO (CheX augm.)": 40.7, "SPAN triangular": 40.0,
                  "SPAN global average": 84.1, "SPAN deformable": 90.0},
    "right_lung": {"DINO": 35.0, "DINO (CheX)": 15.8, "DINO (CheX augm.)": 27.6, "SPAN triangular": 54.8,
                   "SPAN global average": 50.3, "SPAN deformable": 88.4},
}

# Table 2: linear probe mAUC over six labels, held-out test set of 200.
LINEAR_MAUC = {"random init": 69.9, "DINO": 83.8, "DINO (CheX)": 60.4, "DINO (CheX augm.)": 84.3,
               "SPAN triangular": 84.8, "SPAN global average": 86.2, "SPAN deformable": 86.5}

# Figure 6: only a plot is published; the text gives SPAN's lead at 4 labels.
FEWSHOT_GAP_AT_4 = 11.2


def paper_row(regimen: str) -> str | None:
    """The paper's name for one of our regimens."""
    return REGIMEN_NAMES.get(regimen)
