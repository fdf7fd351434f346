"""Draw & Predict: draw or upload a digit and see a few-shot prediction, or teach the lab new symbols."""

import html
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st
from streamlit_drawable_canvas import st_canvas

from lab import runs, zoo
from lab.algorithms import REGISTRY
from lab.data import dataset_status
from lab.predict import MAX_K_SHOT, Predictor, digit_support, load_digit_bank, load_predictor
from lab.taught import MAX_CLASSES, MAX_EXAMPLES, MIN_CLASSES, BadTaughtSet, TaughtSet, montage
from lab.preprocess import MAX_UPLOAD_BYTES, BadImage, BlankImage, prepare_bytes, to_png
from ui.explain import show_explanation

UPLOAD_TYPES = ["png", "jpg", "jpeg", "bmp", "gif", "webp"]
UPLOAD_MB = MAX_UPLOAD_BYTES // 2**20  # the server takes bigger files (.streamlit/config.toml) so they get a message
SYMBOLS = ["circle", "cross", "triangle", "wave", "star", "heart", "spiral", "arrow", "check", "square"]
MAX_SHOWN_NAME = 20  # a symbol's name is at most this long here, so a prediction fits on one line
PAD = 280
state = st.session_state


@st.cache_resource(show_spinner="Loading the model…")
def get_predictor(source: str) -> tuple[dict, Predictor]:
    config, predictor = load_predictor(source, device="cpu")
    predictor.warm_up()
    return config.to_dict(), predictor


@st.cache_resource(show_spinner="Loading the digits…")
def get_bank(source: str):
    return load_digit_bank(source)


def model_choices() -> dict[str, str]:
    """Label -> source: the default model, the zoo's other models, the model shipped in assets/ when it is
    not the default, then every run that has a checkpoint."""
    models = zoo.shipped()
    drawing = next((z for z in models if z["name"] == runs.drawing_model()), None)
    if drawing:
        choices = {f"Default: {drawing['label'].removeprefix('Zoo: ')}": "default"}
        choices.update({z["label"]: z["source"] for z in models if z is not drawing})
        choices["Shipped: Prototypical Network meta-trained on Omniglot (assets/)"] = str(runs.DEFAULT_MODEL)
    else:
        choices = {"Shipped: Prototypical Network meta-trained on Omniglot": "default"}
        choices.update({z["label"]: z["source"] for z in models})
    for r in runs.list_runs(runs.default_runs_dir()):
        folder = Path(r["path"])
        if (folder / "best.pt").exists() or (folder / "last.pt").exists():
            choices[f"Run {r['name']} ({r['algorithm']}, {r['dataset']})"] = r["path"]
    return choices


def image_input(key: str, hint: str) -> tuple[bytes | None, str, str]:
    """A drawing pad or an upload: the image's bytes (None while there is none), what to ask for meanwhile,
    and where the image came from ("pad" or "upload")."""
    how = st.radio("Input", ["Draw", "Upload"], horizontal=True, key=f"{key}-how", label_visibility="collapsed")
    if how == "Upload":
        file = st.file_uploader(f"Upload {hint} (PNG, JPEG, BMP, GIF or WebP, at most {UPLOAD_MB} MB)",
                                type=UPLOAD_TYPES, key=f"{key}-upload")
        return (file.getvalue() if file is not None else None), f"Upload {hint} first.", "upload"
    clears = state.setdefault(f"{key}-clears", 0)
    result = st_canvas(stroke_width=state.get(f"{key}-stroke", 20), stroke_color="#111111",
                       background_color="#ffffff", width=PAD, height=PAD, drawing_mode="freedraw",
                       return_image_data=True, key=f"{key}-canvas-{clears}")
    stroke, clear = st.columns([1.5, 1], vertical_alignment="bottom")
    stroke.slider("Stroke width", 6, 40, 20, key=f"{key}-stroke")
    if clear.button("Clear", key=f"{key}-clear", icon=":material/ink_eraser:", width="stretch"):
        clear_pad(key)
        st.rerun()
    objects = (result.json_data or {}).get("objects") or []
    return (result.image_bytes if objects else None), "Draw something first: the pad is blank.", "pad"


def refuse(err: BadImage, kind: str, where=st) -> None:
    """Say in one line why an image cannot be used."""
    if isinstance(err, BlankImage) and kind == "pad":
        where.info("Draw something first: the pad is blank.", icon=":material/draw:")
    elif isinstance(err, BlankImage):
        where.error("That image is blank: no ink or pen stroke was found on it.", icon=":material/broken_image:")
    else:
        where.error(f"That image cannot be used: {err}.", icon=":material/broken_image:")


def shown_name(name: str) -> str:
    return name if len(name) <= MAX_SHOWN_NAME else name[: MAX_SHOWN_NAME - 1] + "…"


def clear_pad(key: str) -> None:
    state[f"{key}-clears"] = state.get(f"{key}-clears", 0) + 1


def show_prediction(predictor: Predictor, data: bytes | None, kind: str, support, waiting: str) -> None:
    if data is None:
        st.info(waiting, icon=":material/draw:")
        return
    try:
        p = predictor.predict_bytes(data, support)
    except BadImage as err:
        refuse(err, kind)
        return
    seen, top = st.columns([1, 2])
    seen.image(to_png(p.image, scale=5), caption="What the model sees (28×28)")
    name = shown_name(p.top)
    size = 5.5 if len(name) <= 3 else 3.2 if len(name) <= 8 else 2.0
    style = (f"font-size:{size}rem;font-weight:700;line-height:1.1;white-space:nowrap;overflow:hidden;"
             f"text-overflow:ellipsis;color:{'#9ca3af' if p.unsure else 'inherit'}")
    if p.unsure:
        top.markdown("<div class='dp-unsure' style='font-size:2.2rem;font-weight:700;color:#b45309;line-height:1.2'>"
                     "Not sure</div>", unsafe_allow_html=True)
        top.markdown(f"<div class='dp-top' title='{html.escape(p.top)}' style='{style}'>{html.escape(name)}</div>",
                     unsafe_allow_html=True)
        top.markdown(f"a best guess, not an answer: {p.doubt}")
    else:
        top.markdown(f"<div class='dp-top' title='{html.escape(p.top)}' style='{style}'>{html.escape(name)}</div>",
                     unsafe_allow_html=True)
        top.markdown(f"**{p.confidence:.0%}** sure · prediction")
    adapt = f"adapt {p.adapt_ms:.1f} ms" if p.adapt_ms else "adaptation cached"
    top.caption(f":material/timer: {p.preprocess_ms + p.predict_ms:.1f} ms (preprocess {p.preprocess_ms:.1f} ms, "
                f"predict {p.predict_ms:.1f} ms) · {adapt}")
    for note in p.notes:
        st.info(f"Note: {note}.", icon=":material/info:")
    names = [shown_name(n) for n in p.class_names]
    colours = [("#d1d5db" if p.unsure else "#4f46e5") if n == p.top else "#c7d2fe" for n in p.class_names]
    fig = go.Figure(go.Bar(x=list(p.probabilities), y=names, orientation="h", marker_color=colours,
                           text=[f"{v:.0%}" if v >= 0.005 else "" for v in p.probabilities], textposition="outside",
                           cliponaxis=False))
    fig.update_layout(height=60 + 28 * len(p.class_names), margin=dict(l=10, r=40, t=10, b=10), bargap=0.3,
                      xaxis=dict(range=[0, 1], tickformat=".0%", title="probability"),
                      yaxis=dict(type="category", autorange="reversed"), plot_bgcolor="rgba(0,0,0,0)")
    st.plotly_chart(fig, config={"displayModeBar": False}, key=f"bars-{support.source}")
    if st.toggle("Why? Explain this prediction", key="why",
                 help="The nearest examples, where the model looked, and (gradient-based learners) each inner step"):
        show_explanation(predictor, p, support, shown_name)


# --------------------------------------------------------------------------- page

st.title("Draw & Predict")
choices = model_choices()
with st.sidebar:
    mode = st.radio("Mode", ["Digits", "Teach"], captions=["recognise 0–9 from K examples each",
                                                            "teach new symbols from a few drawings"])
    label = st.selectbox("Model", list(choices))
try:
    config, predictor = get_predictor(choices[label])
except ValueError as err:
    st.error(f"This model cannot be loaded: {err}")
    st.stop()
st.sidebar.caption(f"{REGISTRY[config['algorithm']].summary} Meta-trained on {config['dataset']} "
                   f"({config['n_way']}-way {config['k_shot']}-shot tasks); here it only adapts to the examples "
                   "it is shown, it is never retrained.")

if mode == "Digits":
    st.caption("The model never saw a digit while it was meta-trained: it recognises yours from K examples of "
               "each digit, the way it learned to on other alphabets' characters.")
    sources = ["mnist", "digits"] if dataset_status()["mnist"]["available"] else ["digits"]
    k_col, src_col, again_col = st.columns([3, 2, 1], vertical_alignment="bottom")
    k_shot = k_col.slider("Examples per digit (K)", 1, MAX_K_SHOT, 5)
    source = src_col.radio("Examples from", sources, horizontal=True,
                           format_func={"mnist": "MNIST training set", "digits": "bundled digits"}.get)
    if again_col.button("Resample", icon=":material/shuffle:", width="stretch"):
        state["digit-seed"] = state.get("digit-seed", 0) + 1
    support = digit_support(get_bank(source), k_shot, state.get("digit-seed", 0))
    pad, result = st.columns([1, 1.4], gap="large")
    with pad:
        data, waiting, kind = image_input("digit", "a photo or scan of a digit")
    with result:
        show_prediction(predictor, data, kind, support, waiting)
    st.subheader("The support set")
    st.caption(f"{k_shot} example(s) of each digit, one row per digit 0–9, from {support.source}: all the model "
               "is shown of digits.")
    st.image(to_png(montage(support.images, rows=10), scale=2))
    st.stop()

# --------------------------------------------------------------------------- teach mode

st.caption("Invent 2 to 10 symbols, draw one to five examples of each, adapt, then draw a new one: the model "
           "recognises it from your examples alone.")
examples = state.setdefault("teach-examples", [[] for _ in range(MAX_CLASSES)])

saved = st.expander("Save or load a taught set", icon=":material/save:")
upload = saved.file_uploader("Load a taught set (.json)", type=["json"], key="teach-file")
if upload is not None and state.get("teach-file-seen") != upload.file_id:
    state["teach-file-seen"] = upload.file_id
    try:
        taught = TaughtSet.from_bytes(upload.getvalue())
    except BadTaughtSet as err:
        saved.error(f"That taught set cannot be loaded: {err}")
    else:
        state["teach-n"] = len(taught.class_names)
        for i, name in enumerate(taught.class_names):
            state[f"teach-name-{i}"] = name[:MAX_SHOWN_NAME].strip()
            examples[i] = list(taught.examples[i])
        saved.success(f"Loaded {len(taught.class_names)} classes.")
        long = [name for name in taught.class_names if len(name) > MAX_SHOWN_NAME]
        if long:
            saved.warning(f"Names here are at most {MAX_SHOWN_NAME} characters: {len(long)} were shortened "
                          f"(“{long[0]}” is now “{long[0][:MAX_SHOWN_NAME].strip()}”).")

state.setdefault("teach-n", MIN_CLASSES)
n_classes = st.columns([1, 2])[0].slider("How many symbols", MIN_CLASSES, MAX_CLASSES, key="teach-n")
name_cols = st.columns(min(n_classes, 5))
names = []
for i in range(n_classes):
    state.setdefault(f"teach-name-{i}", SYMBOLS[i])
    names.append(name_cols[i % 5].text_input(f"Symbol {i + 1}", key=f"teach-name-{i}", max_chars=MAX_SHOWN_NAME,
                                             help=f"at most {MAX_SHOWN_NAME} characters").strip())
if any(len(name) >= MAX_SHOWN_NAME for name in names):
    st.caption(f"A name is at most {MAX_SHOWN_NAME} characters, so that a prediction fits on one line.")

st.subheader("1 · Teach")
pad, shelf = st.columns([1, 1.4], gap="large")
with pad:
    which = st.radio("Draw an example of", range(n_classes), format_func=lambda i: names[i] or f"symbol {i + 1}",
                     horizontal=True, key="teach-which")
    drawing, waiting, kind = image_input("teach", "a drawing of the symbol")
    full = len(examples[which]) >= MAX_EXAMPLES
    add, preview = st.columns([2, 1], vertical_alignment="center")
    read = None
    if drawing is not None:
        try:
            read = prepare_bytes(drawing)
        except BadImage as err:
            refuse(err, kind)
        else:
            preview.image(to_png(read[0], scale=2), caption="as the model sees it")
            for note in read[1]:
                st.caption(f"Note: {note}.")
    if add.button(f"Add to “{names[which]}”", type="primary", icon=":material/add:", disabled=full, key="teach-add"):
        if drawing is None:
            st.warning(waiting)
        elif read is not None:  # else the reason is already on the page
            examples[which].append(read[0])
            clear_pad("teach")
            st.rerun()
    if full:
        st.caption(f"“{names[which]}” has {MAX_EXAMPLES} examples, the most a class takes.")
with shelf:
    for i in range(n_classes):
        st.markdown(f"**{html.escape(names[i] or f'symbol {i + 1}')}** · {len(examples[i])}/{MAX_EXAMPLES}")
        if not examples[i]:
            st.caption("no example yet")
        for j, (cell, shot) in enumerate(zip(st.columns(MAX_EXAMPLES), list(examples[i]))):
            cell.image(to_png(shot, scale=2))
            if cell.button("✕", key=f"teach-rm-{i}-{j}", help="remove this example", type="tertiary"):
                examples[i].pop(j)
                st.rerun()

st.subheader("2 · Adapt")
try:
    taught = TaughtSet(tuple(names), tuple(tuple(examples[i]) for i in range(n_classes)))
except BadTaughtSet as err:
    st.info(f"Not ready to adapt: {err}.")
    st.stop()
saved.download_button("Download this taught set", taught.to_bytes(), "taught-set.json", "application/json",
                      icon=":material/download:")
support = taught.support()
if st.button("Adapt to these examples", type="primary", icon=":material/bolt:", key="teach-adapt"):
    state["teach-adapted"] = support.key
    state["teach-adapt-ms"] = predictor.adapt(support)
if state.get("teach-adapted") != support.key:
    st.info("Press Adapt when your examples are ready." if "teach-adapted" not in state
            else "The examples changed since the last adaptation: adapt again.")
    st.stop()
adapt_ms = state.get("teach-adapt-ms", 0.0)
st.success(f"Adapted to {support.n_way} symbols from {len(support.labels)} drawings "
           f"({f'{adapt_ms:.1f} ms' if adapt_ms else 'cached'}).", icon=":material/check_circle:")

st.subheader("3 · Test")
pad, result = st.columns([1, 1.4], gap="large")
with pad:
    query, waiting, kind = image_input("query", "a drawing of one of your symbols")
with result:
    show_prediction(predictor, query, kind, support, waiting)
