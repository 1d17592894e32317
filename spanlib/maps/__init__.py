"""Knowledge maps: heuristic, on-disk store, Dice, registration (torch and SimpleITK), segmentation, the builder."""
