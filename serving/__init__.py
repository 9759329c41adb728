"""tuneloop.serving: the BentoML service that serves the champion model, logs every request
durably and hot-swaps to a newly promoted model. Importing this package loads nothing.
"""
