"""Meta-Learning Lab: the entry point. ``streamlit run app.py``"""

import streamlit as st

st.set_page_config(page_title="Meta-Learning Lab", page_icon="🧪", layout="wide")

pages = [
    st.Page("pages/home.py", title="Home", icon="🏠", default=True),
    st.Page("pages/clusters.py", title="Task Clusters", icon=":material/bubble_chart:"),
]
st.navigation(pages).run()
