"""The book's figures: one style (style), attention, training, maps, samples, result charts (results), and the
chapters' tables and readings (tables, probes, shapes)."""
