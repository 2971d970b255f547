"""segops.data.SegmentationFolder on small folders written in each layout (tests/folder_testing.py): labels decoded
exactly as written, palette indices, VOC's ignored 255, grayscale values mapped in sorted order, the train/val
partition, each bad-folder error naming its file; segops.transforms: deterministic given a generator, the mask and
the image transformed alike."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from folder_testing import save_palette, write_folder
from segops.data import FolderError, SegmentationFolder, label_colours, read_image
from segops.transforms import (
    ColorJitter,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    Resize,
    evaluation_transform,
    training_transform,
)


def _labels(dataset):
    return [dataset.read(i)[1] for i in range(len(dataset))]


@pytest.mark.parametrize("subfolders", [True, False], ids=["Image-Mask-subfolders", "files-in-root"])
def test_metadata_csv_layout_maps_0_255_masks_to_0_1(tmp_path, subfolders, caplog):
    written = write_folder(tmp_path, "metadata.csv", count=5, subfolders=subfolders)
    with caplog.at_level(logging.INFO, logger="segops.data"):
        dataset = SegmentationFolder(tmp_path, num_classes=2)
    assert dataset.layout == "metadata.csv" and len(dataset) == 5
    assert dataset.samples == [(s["image_path"], s["mask_path"]) for s in written]
    assert dataset.mask_kind == "grayscale" and dataset.mask_values == [0, 255]
    assert "masks: grayscale values [0, 255] -> classes [0, 1]" in dataset.summary
    assert "grayscale values [0, 255] -> classes [0, 1]" in caplog.text  # reported at load
    for labels, sample in zip(_labels(dataset), written):
        assert labels.dtype == torch.int64
        assert torch.equal(labels, torch.from_numpy(sample["classes"]))
    image, labels = dataset[0]  # no transform: the image as read, in 0..1
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    # JPEG is lossy: the image is what PIL decodes, not what was written.
    decoded = torch.from_numpy(np.array(Image.open(written[0]["image_path"]).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(image, decoded / 255)


def test_grayscale_values_map_to_classes_in_sorted_order(tmp_path):
    # Values 200, 0, 100 for classes 0, 1, 2 as written: sorted, 0 -> class 0, 100 -> 1, 200 -> 2.
    written = write_folder(tmp_path, "images+masks", count=4, num_classes=3, values=(200, 0, 100))
    dataset = SegmentationFolder(tmp_path, num_classes=3)
    assert dataset.layout == "images+masks" and dataset.mask_values == [0, 100, 200]
    expected_class = np.array([2, 0, 1])  # the class each written class index ends as
    for labels, sample in zip(_labels(dataset), written):
        assert torch.equal(labels, torch.from_numpy(expected_class[sample["classes"]]))
    # PNG images are read exactly.
    assert torch.equal(
        read_image(written[1]["image_path"]), torch.from_numpy(written[1]["image"]).permute(2, 0, 1) / 255
    )
    # A given mapping replaces the found one (a checkpoint's), and a value outside it is an error.
    assert SegmentationFolder(tmp_path, mask_values=[0, 100, 200, 255]).mask_values == [0, 100, 200, 255]
    with pytest.raises(FolderError, match=r"s00\.png: mask value 200 is none of the grayscale values \[0, 100\]"):
        SegmentationFolder(tmp_path, mask_values=[0, 100])


def test_voc_layout_reads_palette_indices_and_ignores_255(tmp_path):
    written = write_folder(tmp_path, "voc", count=8, num_classes=4)
    train = SegmentationFolder(tmp_path, "train", num_classes=4)
    val = SegmentationFolder(tmp_path, "val", num_classes=4, ignore_index=255)
    assert train.layout == "voc" and train.mask_kind == "palette" and train.mask_values is None
    assert [image.stem for image, _ in train.samples] == [s["name"] for s in written[:6]]
    assert [image.stem for image, _ in val.samples] == [s["name"] for s in written[6:]]
    assert "palette indices are the classes, 255 -> ignored" in train.summary
    for labels, sample in zip(_labels(train) + _labels(val), written):
        assert torch.equal(labels, torch.from_numpy(sample["classes"]))
        assert (labels[0] == 255).all() and set(labels[1:].unique().tolist()) <= {0, 1, 2, 3}
    # Another ignore label: VOC's 255 becomes it.
    relabelled = SegmentationFolder(tmp_path, "val", num_classes=4, ignore_index=-1)
    assert (relabelled.read(0)[1][0] == -1).all()
    assert len(SegmentationFolder(tmp_path)) == 8  # every listed image


def test_palette_masks_in_the_other_layouts_are_indices_too(tmp_path):
    written = write_folder(tmp_path, "images+masks", count=3, num_classes=3, values=(0, 1, 2))
    for sample in written:
        save_palette(sample["mask_path"], sample["classes"])
    dataset = SegmentationFolder(tmp_path, num_classes=3)
    assert dataset.mask_kind == "palette"
    for labels, sample in zip(_labels(dataset), written):
        assert torch.equal(labels, torch.from_numpy(sample["classes"]))


def test_train_and_val_partition_the_folder_by_seed(tmp_path):
    write_folder(tmp_path, "metadata.csv", count=10)
    every = SegmentationFolder(tmp_path).samples
    train = SegmentationFolder(tmp_path, "train", val_fraction=0.3, seed=4).samples
    val = SegmentationFolder(tmp_path, "val", val_fraction=0.3, seed=4).samples
    assert len(val) == 3 and len(train) == 7 and sorted(train + val) == sorted(every)
    assert val == SegmentationFolder(tmp_path, "val", val_fraction=0.3, seed=4).samples
    assert val != SegmentationFolder(tmp_path, "val", val_fraction=0.3, seed=5).samples
    assert len(SegmentationFolder(tmp_path, "val", val_fraction=0.01).samples) == 1  # at least one


def test_label_colours_are_pascal_vocs():
    colours = label_colours()
    assert colours.shape == (256, 3) and colours.dtype == torch.uint8
    assert colours[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert colours[15].tolist() == [192, 128, 128]  # person
    assert colours[255].tolist() == [224, 224, 192]  # the boundary
    assert len({tuple(c) for c in colours.tolist()}) == 256


# ------------------------------------------------------------------------------------------------- bad folders


def _missing_mask(root, written):
    written[3]["mask_path"].unlink()
    return r"s03\.jpg: its mask 's03\.png' \(metadata\.csv, line 5\) not found"


def _mask_of_another_size(root, written):
    Image.fromarray(np.zeros((30, 32), np.uint8)).save(written[2]["mask_path"])
    return r"Mask/s02\.png: the mask is 32x30 \(width x height\) but its image .*Image/s02\.jpg is 32x32"


def _unreadable_image(root, written):
    written[4]["image_path"].write_bytes(b"not a JPEG at all")
    return r"Image/s04\.jpg: cannot read the image \(UnidentifiedImageError"


def _wrong_header(root, written):
    text = (root / "metadata.csv").read_text().replace("Image,Mask", "image_id,mask_file")
    (root / "metadata.csv").write_text(text)
    return r"metadata\.csv: the header must be 'Image,Mask' .*, got 'image_id,mask_file'"


def _value_beyond_num_classes(root, written):
    raw = np.where(written[5]["classes"] == 1, 255, 0)
    raw[0, 0] = 128  # a third value, in one mask
    Image.fromarray(raw.astype(np.uint8)).save(written[5]["mask_path"])
    return (
        r"Mask/s05\.png: mask value 128 makes 3 grayscale values in the masks \(\[0, 128, 255\] -> classes 0..2\), "
        r"beyond num_classes=2; 128 is in 1 of 8 masks, the fewest"
    )


BAD_FOLDERS = [_missing_mask, _mask_of_another_size, _unreadable_image, _wrong_header, _value_beyond_num_classes]


@pytest.mark.parametrize("spoil", BAD_FOLDERS, ids=lambda f: f.__name__[1:])
def test_a_bad_folder_is_an_error_naming_the_file(tmp_path, spoil):
    written = write_folder(tmp_path, "metadata.csv", count=8)
    message = spoil(tmp_path, written)
    with pytest.raises(FolderError, match=message):
        SegmentationFolder(tmp_path, num_classes=2)
    assert issubclass(FolderError, ValueError)


def test_bad_folders_of_the_other_layouts(tmp_path):
    written = write_folder(tmp_path / "stems", "images+masks", count=3)
    written[1]["mask_path"].unlink()
    with pytest.raises(FolderError, match=r"images/s01\.png: no mask for this image: expected .*masks/s01\.png"):
        SegmentationFolder(tmp_path / "stems")
    written = write_folder(tmp_path / "voc", "voc", count=4, num_classes=3)
    with pytest.raises(
        FolderError, match=r"SegmentationClass/s0\d\.png: palette index 2 is a class beyond num_classes=2"
    ):
        SegmentationFolder(tmp_path / "voc", "train", num_classes=2)
    written[3]["mask_path"].unlink()
    with pytest.raises(FolderError, match=r"JPEGImages/s03\.jpg: no mask for this image: expected .*s03\.png"):
        SegmentationFolder(tmp_path / "voc", "val")
    with pytest.raises(FolderError, match=r"test\.txt: not found \(the list of the 'test' split"):
        SegmentationFolder(tmp_path / "voc", "test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FolderError, match=r"empty: no dataset layout found: expected metadata\.csv"):
        SegmentationFolder(tmp_path / "empty")
    with pytest.raises(FolderError, match="no such folder"):
        SegmentationFolder(tmp_path / "absent")


def test_colour_and_mixed_masks_are_errors(tmp_path):
    written = write_folder(tmp_path, "images+masks", count=3)
    save_palette(written[1]["mask_path"], written[1]["classes"])
    with pytest.raises(FolderError, match=r"s01\.png: a palette mask, but .*s00\.png is a grayscale one"):
        SegmentationFolder(tmp_path)
    Image.fromarray(np.stack([written[1]["classes"] * 255] * 3, -1).astype(np.uint8)).save(written[1]["mask_path"])
    assert SegmentationFolder(tmp_path).mask_values == [0, 255]  # RGB with equal channels is grayscale
    colour = np.zeros((32, 32, 3), np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour).save(written[1]["mask_path"])
    with pytest.raises(FolderError, match=r"s01\.png: a colour \(RGB\) mask; masks must be palette PNGs"):
        SegmentationFolder(tmp_path)


def test_an_image_spoiled_after_loading_is_named_when_read(tmp_path):
    written = write_folder(tmp_path, "images+masks", count=3)
    dataset = SegmentationFolder(tmp_path)
    data = written[2]["image_path"].read_bytes()
    written[2]["image_path"].write_bytes(data[: len(data) // 2])  # a truncated PNG: its header still reads
    with pytest.raises(FolderError, match=r"images/s02\.png: cannot read the image"):
        dataset[2]


# ------------------------------------------------------------------------------------------------- transforms


def test_transforms_are_deterministic_given_the_seed_epoch_and_index(tmp_path):
    write_folder(tmp_path, "metadata.csv", count=4)
    dataset = SegmentationFolder(tmp_path, transform=training_transform(48), seed=3)
    image, labels = dataset[1]
    assert image.shape == (3, 48, 48) and labels.shape == (48, 48)
    again = SegmentationFolder(tmp_path, transform=training_transform(48), seed=3)[1]
    assert torch.equal(image, again[0]) and torch.equal(labels, again[1])
    assert not torch.equal(image, dataset[2][0])  # another sample
    dataset.set_epoch(1)
    assert not torch.equal(image, dataset[1][0])  # another epoch draws other numbers
    dataset.set_epoch(0)
    assert torch.equal(image, dataset[1][0])
    assert not torch.equal(image, SegmentationFolder(tmp_path, transform=training_transform(48), seed=4)[1][0])
    # The evaluation transform has no randomness: Resize then ImageNet normalisation.
    plain, plain_labels = SegmentationFolder(tmp_path, transform=evaluation_transform(32))[0]
    raw, raw_labels = SegmentationFolder(tmp_path)[0]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(plain, (raw - mean.view(3, 1, 1)) / std.view(3, 1, 1))
    assert torch.equal(plain_labels, raw_labels)


def _encoded_sample(size=40, num_classes=4, seed=0):
    """An image whose every channel is its label / num_classes, blocks of 8x8 labels."""
    rng = np.random.default_rng(seed)
    blocks = torch.from_numpy(rng.integers(0, num_classes, (size // 8, size // 8)))
    labels = blocks.repeat_interleave(8, 0).repeat_interleave(8, 1)
    image = (labels.float() / num_classes).expand(3, -1, -1).clone()
    return image, labels


def _decoded(image, num_classes=4):
    return (image[0] * num_classes).round().long()


def test_crop_and_flip_move_image_and_mask_together_exactly():
    image, labels = _encoded_sample()
    flips = 0
    for seed in range(20):
        transform = Compose([RandomCrop(24), RandomHorizontalFlip(0.5)])
        out_image, out_labels = transform(image, labels, torch.Generator().manual_seed(seed))
        assert out_image.shape == (3, 24, 24)
        assert torch.equal(_decoded(out_image), out_labels)

        # The output is a 24x24 window of the input, flipped or not: the same window of the image and of the mask.
        def window(x, top, left, flip):
            x = x[..., top : top + 24, left : left + 24]
            return x.flip(-1) if flip else x

        found = [
            (top, left, flip)
            for top in range(17)
            for left in range(17)
            for flip in (False, True)
            if torch.equal(window(labels, top, left, flip), out_labels)
            and torch.equal(window(image, top, left, flip), out_image)
        ]
        assert found
        flips += all(flip for _, _, flip in found)
    assert 0 < flips < 20  # both outcomes were drawn


def test_scale_crop_and_flip_keep_image_and_mask_paired():
    image, labels = _encoded_sample(size=48)
    transform = Compose([Resize(40), RandomScale(0.5, 2.0), RandomCrop(36), RandomHorizontalFlip(0.5)])
    checked = 0
    for seed in range(12):
        generator = torch.Generator().manual_seed(seed)
        out_image, out_labels = transform(image, labels, generator)
        counted = out_labels != 255  # the crop's padding, where the scaled image is smaller than 36
        assert ((out_image[:, ~counted]) == 0).all()
        # Away from label edges (5x5 neighbourhoods of one label: the antialiased shrinking blurs the image over up
        # to 2 pixels where the mask's nearest neighbour does not) and from the crop's border (beyond which the
        # neighbours are unknown), the image's encoded label is the mask's.
        padded = torch.nn.functional.pad(out_labels.float(), (2, 2, 2, 2), value=-1.0)
        windows = padded.unfold(0, 5, 1).unfold(1, 5, 1)
        interior = counted & (windows.amax((-1, -2)) == windows.amin((-1, -2)))
        assert torch.equal(_decoded(out_image)[interior], out_labels[interior])
        checked += int(interior.sum())
    assert checked > 0.2 * 12 * 36 * 36
    again = transform(image, labels, torch.Generator().manual_seed(5))
    once = transform(image, labels, torch.Generator().manual_seed(5))
    assert torch.equal(again[0], once[0]) and torch.equal(again[1], once[1])


def test_crop_pads_the_mask_with_the_ignore_index():
    image, labels = torch.rand(3, 10, 12), torch.zeros(10, 12, dtype=torch.int64)
    out_image, out_labels = RandomCrop(16, ignore_index=7)(image, labels, torch.Generator().manual_seed(0))
    assert torch.equal(out_image[:, :10, :12], image) and (out_image[:, 10:] == 0).all()
    assert (out_labels[:10, :12] == 0).all() and (out_labels[10:] == 7).all() and (out_labels[:, 12:] == 7).all()


def test_colour_jitter_and_normalisation_touch_the_image_only():
    image, labels = _encoded_sample()
    jittered, same = ColorJitter(0.5, 0.5, 0.5)(image, labels, torch.Generator().manual_seed(1))
    assert same is labels and not torch.equal(jittered, image) and 0 <= jittered.min() and jittered.max() <= 1
    assert torch.equal(ColorJitter(0.5, 0.5, 0.5)(image, labels, torch.Generator().manual_seed(1))[0], jittered)
    normalised, same = Normalize(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))(image, labels)
    assert same is labels and torch.equal(normalised, (image - 0.5) / 0.25)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: Resize(0), r"Resize: size must be an int >= 1 or a pair \(height, width\) of them, got 0"),
        (lambda: RandomScale(2.0, 1.0), r"RandomScale: needs 0 < low <= high, got low=2.0, high=1.0"),
        (lambda: ColorJitter(brightness=1.5), r"ColorJitter: brightness must be in \[0, 1\), got 1.5"),
        (lambda: SegmentationFolder(".", num_classes=256), r"num_classes must be in 1..255"),
        (lambda: SegmentationFolder(".", val_fraction=1.0), r"val_fraction must be in \(0, 1\), got 1.0"),
    ],
)
def test_argument_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_images_are_read_as_rgb(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey).save(tmp_path / "grey.png")
    rgba = np.random.default_rng(0).integers(0, 256, (3, 4, 4)).astype(np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert torch.equal(read_image(tmp_path / "grey.png"), torch.from_numpy(grey).expand(3, -1, -1) / 255)
    assert torch.equal(read_image(tmp_path / "rgba.png"), torch.from_numpy(rgba[..., :3]).permute(2, 0, 1) / 255)


def test_the_training_transform_is_the_documented_one():
    assert repr(training_transform(64)) == (
        "Compose(Resize((64, 64)), RandomScale(0.75, 1.5), RandomCrop((64, 64), ignore_index=255), "
        "RandomHorizontalFlip(p=0.5), ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2), "
        "Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))"
    )
    assert repr(evaluation_transform(32)).startswith("Compose(Resize((32, 32)), Normalize(")
