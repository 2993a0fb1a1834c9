"""The book's helpers: figures, widgets, small experiments and the tables chapters show.

Nothing in the library imports from here, and nothing here decides a trained result, so that
``runtime.results_digest`` (which says when trained runs are stale) leaves this folder out:
editing a figure re-executes the book's notebooks but does not retrain its models.
"""
