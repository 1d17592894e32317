"""Knowledge maps: heuristic, store (on-disk format), quality (Dice), bspline + registration (torch), registration_sitk, segmentation, build + workers (the builder), cli."""
