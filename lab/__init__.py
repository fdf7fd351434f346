"""Meta-Learning Lab engine: few-shot data, episodes, meta-learners, runs.

Usable from the command line (``python -m lab``), a notebook, or the Streamlit
pages. Nothing in this package imports streamlit.
"""

__version__ = "0.1.0"
