"""The book's figures: one style, attention, training, maps, samples, tables."""
