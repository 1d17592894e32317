"""The book's figures: one style (style), attention, training, maps, samples, result charts (results), and the
chapters' tables (tables, inspection, probes, shapes;
the sentences read off them are in spanlib.book.readings)."""
