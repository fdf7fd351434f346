"""Meta-Learning Lab: the entry point. ``streamlit run app.py``"""

import streamlit as st

st.set_page_config(page_title="Meta-Learning Lab", page_icon="🧪", layout="wide")

pages = [
    st.Page("views/home.py", title="Home", icon="🏠", default=True),
    st.Page("views/meta_train.py", title="Meta-Train", icon=":material/rocket_launch:"),
    st.Page("views/runs.py", title="Runs", icon=":material/monitoring:"),
    st.Page("views/sweeps.py", title="Sweeps", icon=":material/tune:"),
    st.Page("views/clusters.py", title="Task Clusters", icon=":material/bubble_chart:"),
    st.Page("views/draw.py", title="Draw & Predict", icon="✏️"),
]
st.navigation(pages).run()
