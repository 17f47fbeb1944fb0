"""`dti_lens.data` with files on disk: folders, EXIF orientation, corrupt files, DreamBooth JSON."""
import json

import numpy as np
import pytest
from PIL import Image

from dti_lens.data import Subject, image_files, load_dreambooth, load_image, load_images, pixel_batch


def save(path, size=(12, 8), color="red", **kw):
    Image.new("RGB", size, color).save(path, **kw)
    return path


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif(); exif[0x0112] = 6   # rotate 90 degrees clockwise to display
    img = Image.new("RGB", (40, 20), "white"); img.paste((255, 0, 0), (0, 0, 10, 20))   # red strip on the left
    path = tmp_path / "phone.jpg"; img.save(path, exif=exif, quality=95)
    out = load_image(path)
    assert (out.mode, out.size) == ("RGB", (20, 40))
    assert np.asarray(out)[:10, :, 0].min() > 200 and np.asarray(out)[:10, :, 1].max() < 60   # red strip now on top
    assert pixel_batch(tmp_path, 16).original_sizes.tolist() == [[40, 20]]


def test_folder_skips_hidden_and_non_images_with_one_warning(tmp_path):
    for name in ["b.png", "a.JPG", "c.webp"]: save(tmp_path / name)
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x01junk")
    save(tmp_path / "._a.png")   # macOS resource fork: hidden
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "sub").mkdir(); save(tmp_path / "sub" / "d.png")
    with pytest.warns(UserWarning, match=r"skipped 3 .*\.DS_Store, \._a\.png, notes\.txt") as rec:
        files = image_files(tmp_path)
    assert len(rec) == 1
    assert [p.name for p in files] == ["a.JPG", "b.png", "c.webp"]
    with pytest.warns(UserWarning):
        ims = load_images(str(tmp_path))
    assert [(im.mode, im.size) for im in ims] == [("RGB", (12, 8))] * 3


def test_clean_folder_does_not_warn(tmp_path, recwarn):
    save(tmp_path / "a.png")
    assert image_files(tmp_path) == [tmp_path / "a.png"]
    assert len(recwarn) == 0


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="images: no image files .*found nothing.*allowed extensions: .jpg"):
        image_files(tmp_path)
    (tmp_path / ".DS_Store").write_bytes(b"x"); (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match=r"images: no image files .*\.DS_Store.*a\.txt.*allowed extensions"):
        load_images(tmp_path)
    with pytest.raises(ValueError, match="images must be a folder.*is not a directory"):
        image_files(tmp_path / "missing")
    with pytest.raises(ValueError, match="is not a directory"):
        load_images(tmp_path / "a.txt")


def test_mixed_list_of_paths_and_images(tmp_path):
    rgba = tmp_path / "t.png"; Image.new("RGBA", (6, 6), (0, 0, 0, 0)).save(rgba)
    grey = tmp_path / "g.png"; Image.new("L", (5, 4), 90).save(grey)
    ims = load_images([rgba, Image.new("RGB", (3, 3), "blue"), str(grey)])
    assert [(im.mode, im.size) for im in ims] == [("RGB", (6, 6)), ("RGB", (3, 3)), ("RGB", (5, 4))]
    assert np.asarray(ims[0]).min() == 255 and np.unique(np.asarray(ims[2])).tolist() == [90]


def test_corrupt_and_truncated_files_raise_naming_the_file(tmp_path):
    bad = tmp_path / "bad.png"; bad.write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.raises(ValueError, match="cannot read image file .*bad.png"):
        load_image(bad)
    good = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    cut = tmp_path / "cut.png"; cut.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    with pytest.raises(ValueError, match="cannot read image file .*cut.png"):
        load_image(cut)
    bad.unlink()
    with pytest.raises(ValueError, match="cut.png"):
        load_images(tmp_path)
    with pytest.raises(ValueError, match="missing.png"):
        load_images([good, tmp_path / "missing.png"])


def write_spec(tmp_path, spec):
    path = tmp_path / "dreambooth.json"
    path.write_text(spec if isinstance(spec, str) else json.dumps(spec))
    return path


def test_dreambooth_json(tmp_path):
    (tmp_path / "dog6").mkdir(); other = tmp_path / "elsewhere" / "cat"; other.mkdir(parents=True)
    path = write_spec(tmp_path, {"dog6": {"path": "dog6", "class": "dog"},
                                 "cat": {"path": str(other), "class": "cat", "initialization": "kitten"},
                                 "toy": {"path": "dog6", "class": "toy", "initialization": "teddy", "prior": "bear"}})
    subjects = load_dreambooth(str(path))
    assert subjects[:2] == [Subject("dog6", tmp_path / "dog6", "dog", "dog", "dog"), Subject("cat", other, "cat", "kitten", "kitten")]
    assert (subjects[2].init, subjects[2].prior) == ("teddy", "bear")   # App. D.2: the init word is the prior unless named
    assert subjects[0].path.is_absolute() and subjects[0].training_images == tmp_path / "dog6"


def test_dreambooth_images_templates_and_unused_keys(tmp_path):
    (tmp_path / "dog6").mkdir(); save(tmp_path / "dog6" / "00.jpg"); save(tmp_path / "dog6" / "01.jpg"); save(tmp_path / "solo.png")
    path = write_spec(tmp_path, {"a": {"path": "dog6", "images": ["01.jpg"], "class": "dog", "template": "a drawing of {}"},
                                 "b": {"images": ["solo.png", "dog6/00.jpg"], "class": "dog", "template": ["{} on a sofa", "a {}"],
                                       "notes": "x", "url": "y"}})
    with pytest.warns(UserWarning, match="ignoring key\\(s\\) 'notes', 'url'; known keys: path, images"):
        a, b = load_dreambooth(path)
    assert a.training_images == [tmp_path / "dog6" / "01.jpg"] and a.templates == ("a drawing of {}",)
    assert b.path is None and b.training_images == [tmp_path / "solo.png", tmp_path / "dog6" / "00.jpg"]
    assert b.templates == ("{} on a sofa", "a {}")


def test_dreambooth_paths_fall_back_to_the_working_folder(tmp_path, monkeypatch):
    (tmp_path / "data" / "dreambooth" / "dog6").mkdir(parents=True)   # the reference layout: paths from the repo root
    path = write_spec(tmp_path / "data", {"dog6": {"path": "data/dreambooth/dog6", "class": "dog"}})
    monkeypatch.chdir(tmp_path)
    assert load_dreambooth(path)[0].path == tmp_path / "data" / "dreambooth" / "dog6"
    monkeypatch.chdir(tmp_path / "data")
    with pytest.raises(ValueError, match="'path' 'data/dreambooth/dog6' is not a folder \\(looked in"):
        load_dreambooth(path)


@pytest.mark.parametrize("spec, message", [
    ("{not json", "cannot read DreamBooth subjects"),
    ({}, "must map at least one subject"),
    ([{"path": "dog6", "class": "dog"}], "must map at least one subject"),
    ({"dog6": "dog6"}, "subject 'dog6': expected a mapping with 'path' and 'class'; got str"),
    ({"dog6": {"class": "dog"}}, "subject 'dog6': missing key 'path' \\(or 'images'\\)"),
    ({"dog6": {"path": "dog6"}}, "subject 'dog6': missing key 'class'"),
    ({"dog6": {"path": "dog6", "class": ""}}, "subject 'dog6': 'class' must be a non-empty string"),
    ({"dog6": {"path": "dog6", "class": "dog", "initialization": 3}}, "subject 'dog6': 'initialization' must be a non-empty string"),
    ({"dog6": {"path": "dog6", "class": "dog", "prior": ""}}, "subject 'dog6': 'prior' must be a non-empty string"),
    ({"dog6": {"path": "nowhere", "class": "dog"}}, "subject 'dog6': 'path' 'nowhere' is not a folder"),
    ({"dog6": {"images": [], "class": "dog"}}, "subject 'dog6': 'images' must be a non-empty list"),
    ({"dog6": {"images": ["gone.png"], "class": "dog"}}, "subject 'dog6': 'images' 'gone.png' is not a file"),
    ({"dog6": {"path": "dog6", "class": "dog", "template": "no slot"}}, "subject 'dog6': 'template' must be a prompt with one"),
])
def test_dreambooth_errors(tmp_path, spec, message):
    (tmp_path / "dog6").mkdir()
    with pytest.raises(ValueError, match=message):
        load_dreambooth(write_spec(tmp_path, spec))


def test_dreambooth_missing_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read DreamBooth subjects from .*absent.json"):
        load_dreambooth(tmp_path / "absent.json")


DREAMBOOTH_TXT = """Classes

subject_name,class
backpack,backpack
bear_plushie,stuffed animal


Prompts

Object Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
]
"""


def test_dreambooth_folder_reads_the_datasets_own_class_list(tmp_path):
    from dti_lens.data import dreambooth_dataset
    for name in ["backpack", "bear_plushie"]:
        (tmp_path / name).mkdir(); save(tmp_path / name / "00.jpg")
    (tmp_path / "prompts_and_classes.txt").write_text(DREAMBOOTH_TXT)
    subs = dreambooth_dataset(tmp_path)
    assert [(s.name, s.class_word, s.init, s.prior) for s in subs] == [
        ("backpack", "backpack", "backpack", "backpack"), ("bear_plushie", "stuffed animal", "stuffed animal", "stuffed animal")]
    (tmp_path / "dreambooth.json").write_text(json.dumps({"backpack": {"path": "backpack", "class": "bag"}}))
    assert [(s.name, s.class_word) for s in dreambooth_dataset(tmp_path)] == [("backpack", "bag")]   # the JSON wins


def test_dreambooth_folder_errors_name_what_is_missing(tmp_path):
    from dti_lens.data import dreambooth_dataset
    with pytest.raises(FileNotFoundError, match="neither dreambooth.json nor prompts_and_classes.txt"):
        dreambooth_dataset(tmp_path)
    (tmp_path / "prompts_and_classes.txt").write_text(DREAMBOOTH_TXT)
    with pytest.raises(ValueError, match="subject 'backpack': 'path' 'backpack' is not a folder"):
        dreambooth_dataset(tmp_path)
    (tmp_path / "prompts_and_classes.txt").write_text("backpack,backpack\n")
    with pytest.raises(ValueError, match="no 'subject_name,class' header"):
        dreambooth_dataset(tmp_path)
