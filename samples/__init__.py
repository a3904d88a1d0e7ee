"""Worked examples built on mrcnn (``samples.nucleus``: the DSB2018 nuclei command line)."""
