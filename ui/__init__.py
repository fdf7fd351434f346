"""Streamlit building blocks shared by the pages: the training form, the live run view, chart
builders and the Runs page's sections. The engine (``lab``) never imports from here."""
