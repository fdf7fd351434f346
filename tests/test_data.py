import numpy as np
import pytest
import torch
from PIL import Image

from lab.data import DatasetUnavailable, load_dataset
from lab.preprocess import normalise_digit


def test_omniglot_has_964_and_659_characters_with_19280_and_13180_images(omniglot):
    parts = np.array([omniglot.label_names.index(n) for n in omniglot.label_names])
    assert omniglot.n_labels == 964 + 659
    assert len(omniglot.images) == 19280 + 13180
    assert omniglot.images.dtype == torch.uint8 and omniglot.images.shape[1:] == (1, 28, 28)
    counts = np.bincount(omniglot.labels)
    assert counts[:964].sum() == 19280 and counts[964:].sum() == 13180 and len(parts) == 1623


def test_omniglot_ink_is_bright_on_a_dark_ground(omniglot):
    x = omniglot.images[:200].float()
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], -1)
    assert border.mean() < 10 and x.amax(dim=(1, 2, 3)).min() > 150


def test_vinyals_split_has_1028_172_423_characters_at_four_rotations(omniglot):
    sizes = {s: len(omniglot.splits[s]) for s in ("train", "val", "test")}
    assert sizes == {"train": 1028 * 4, "val": 172 * 4, "test": 423 * 4}
    for split in ("train", "val", "test"):
        chars = {int(label) for label, _ in omniglot.splits[split]}
        assert len(chars) == sizes[split] // 4


@pytest.mark.parametrize("scheme", ["vinyals", "background", "small1", "small2"])
def test_omniglot_splits_never_share_a_class_or_a_character(scheme):
    from tests.conftest import require

    ds = load_dataset("omniglot", require("omniglot-py"), scheme)
    chars = {s: {int(label) for label, _ in ds.splits[s]} for s in ("train", "val", "test")}
    assert not chars["train"] & chars["val"] and not chars["train"] & chars["test"] and not chars["val"] & chars["test"]
    assert all(chars.values())


def test_small1_trains_on_exactly_its_five_alphabets():
    from tests.conftest import require

    ds = load_dataset("omniglot", require("omniglot-py"), "small1")
    alphabets = {ds.label_groups[label] for label, _ in ds.splits["train"]}
    assert alphabets == {"Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"}


def test_turned_classes_take_each_training_character_at_four_quarter_turns_and_keep_the_others_out():
    from tests.conftest import require

    ds = load_dataset("omniglot", require("omniglot-py"), "small1")
    plain, turned = ds.pool("train"), ds.pool("train", turned=True)
    assert len(turned) == 4 * len(plain)
    assert {tuple(c) for c in turned.classes} == {(int(label), t) for label, _ in plain.classes for t in range(4)}
    i = next(i for i, (_, t) in enumerate(turned.classes) if t == 1)
    j = next(j for j, (label, t) in enumerate(plain.classes) if label == turned.classes[i, 0])
    assert torch.equal(turned.class_images(i), torch.rot90(plain.class_images(j), 1, dims=(2, 3)))
    assert turned.class_names[i].endswith("/rot090")
    # A split that has its turns already (Vinyals') keeps each once.
    vinyals = load_dataset("omniglot", require("omniglot-py"), "vinyals")
    assert len(vinyals.pool("train", turned=True)) == len(vinyals.pool("train"))


def test_mnist_has_60000_plus_10000_digits(mnist):
    assert len(mnist.images) == 70_000
    assert np.bincount(mnist.labels).sum() == 70_000 and mnist.n_labels == 10
    assert mnist.images.shape[1:] == (1, 28, 28)


def test_digits_has_1797_images_scaled_to_28_by_28(digits):
    assert len(digits.images) == 1797
    assert digits.images.shape[1:] == (1, 28, 28) and digits.images.dtype == torch.uint8
    assert digits.images[:, :, :4].max() == 0  # fitted into the central 20x20, like MNIST


@pytest.mark.parametrize("name", ["digits", "mnist"])
def test_digit_splits_are_class_disjoint_and_all_holds_the_ten_digits(name):
    from tests.conftest import require

    ds = load_dataset(name, require("MNIST/raw") if name == "mnist" else None)
    digits = {s: {int(label) for label, _ in ds.splits[s]} for s in ("train", "val", "test")}
    assert digits == {"train": {0, 1, 2, 3, 4}, "val": {5, 6}, "test": {7, 8, 9}}
    assert len(ds.pool("all")) == 10


def test_a_second_load_comes_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    first = load_dataset("digits")
    assert len(list(tmp_path.glob("digits-*.pt"))) == 1
    second = load_dataset("digits")
    assert torch.equal(first.images, second.images)


def test_a_damaged_cache_file_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    load_dataset("digits")
    cache = next(tmp_path.glob("digits-*.pt"))
    cache.write_bytes(b"not a tensor file")
    assert len(load_dataset("digits").images) == 1797


def test_normalised_strokes_redraw_every_image_as_a_drawing_and_keep_classes_and_splits(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    drawn, normalised = load_dataset("digits"), load_dataset("digits", strokes="normalised")
    assert normalised.images.shape == drawn.images.shape and normalised.images.dtype == torch.uint8
    assert np.array_equal(normalised.labels, drawn.labels) and normalised.splits.keys() == drawn.splits.keys()
    for i in (0, 500, 1796):
        assert np.array_equal(normalised.images[i, 0].numpy(), normalise_digit(drawn.images[i, 0].numpy()))
    assert (normalised.images != drawn.images).any(dim=(1, 2, 3)).float().mean() > 0.9
    assert len(list(tmp_path.glob("strokes-*.pt"))) == 1  # cached by the originals' content
    assert torch.equal(load_dataset("digits", strokes="normalised").images, normalised.images)


def test_a_missing_dataset_with_no_network_gives_a_clear_error(tmp_path):
    with pytest.raises(DatasetUnavailable, match="Omniglot is not under"):
        load_dataset("omniglot", tmp_path)
    with pytest.raises(DatasetUnavailable, match="MNIST is not under"):
        load_dataset("mnist", tmp_path)


def test_a_folder_of_images_becomes_a_dataset_of_grayscale_28_by_28(tmp_path):
    rng = np.random.default_rng(0)
    for c, mode in enumerate(["RGB", "L", "RGBA"]):
        folder = tmp_path / f"class{c}"
        folder.mkdir()
        for i in range(4):
            a = np.full((40 + 10 * c, 50, 3), 255, np.uint8)
            a[10:30, 10 + i : 20 + i] = rng.integers(0, 60)
            Image.fromarray(a).convert(mode).save(folder / f"{i}.png")
    (tmp_path / "class0" / "notes.txt").write_text("not an image")
    ds = load_dataset("folder", tmp_path)
    assert ds.label_names == ["class0", "class1", "class2"]
    assert ds.images.shape == (12, 1, 28, 28)
    assert len(ds.pool("test")) == 3


def test_a_folder_with_one_class_is_refused(tmp_path):
    (tmp_path / "only").mkdir()
    Image.new("L", (10, 10)).save(tmp_path / "only" / "a.png")
    with pytest.raises(DatasetUnavailable, match="at least two sub-folders"):
        load_dataset("folder", tmp_path)


def test_unknown_names_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="digits, omniglot, mnist, folder"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="no split scheme"):
        load_dataset("digits", scheme="vinyals")
