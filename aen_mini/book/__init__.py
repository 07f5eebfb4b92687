"""The book's code: figures, widgets, exercises, exact 2-D geometry, student editions, links."""
