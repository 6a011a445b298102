"""Training data: LLaVA JSON/JSONL, HF datasets in TRL's format, the LLaVA -> datasets converter, validation of bad
samples before training, and the malloc settings applied at start-up."""

import json
import logging
import platform

import datasets
import pytest
from conftest import assemble, make_image
from training_helpers import llava_record, write_llava_dataset

from tinyllava_hf.training.arguments import DataArguments
from tinyllava_hf.training.cli import main
from tinyllava_hf.training.collator import TinyLlavaCollator
from tinyllava_hf.training.data import BadSampleError, load_samples, load_training_dataset
from tinyllava_hf.training.malloc_tuning import tune_malloc


def load(path, image_folder=None, on_bad_sample="error", collator=None):
    return load_training_dataset(DataArguments(data_path=[str(path)], image_folder=image_folder,
                                               on_bad_sample=on_bad_sample), collator).dataset  # fmt: skip


def test_llava_json_and_jsonl_become_trl_messages(tmp_path):
    records = [
        llava_record("a", "0.png", "Look.\n<image>", "A square.", "Colour?", "Red."),
        llava_record("b", ["0.png", "1.png"], "<image>\n<image>\nCompare.", "Same."),
        llava_record(7, None, "Two plus two?", "Four."),
    ]
    records[2]["conversations"].insert(0, {"from": "system", "value": "Be terse."})
    path, folder = write_llava_dataset(tmp_path, records=records)
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(json.dumps(record) for record in records) + "\n")
    for source in (path, jsonl):
        dataset = load(source, str(folder))
        assert dataset["id"] == ["a", "b", "7"]
        first = dataset[0]
        assert first["images"] == [str(folder / "0.png")]  # resolved once, here
        # Images move to the front of their turn (as the original does); the text is stripped.
        assert first["messages"][0]["content"] == [{"type": "image", "text": None}, {"type": "text", "text": "Look."}]
        assert [m["role"] for m in first["messages"]] == ["user", "assistant", "user", "assistant"]
        assert dataset[1]["images"] == [str(folder / "0.png"), str(folder / "1.png")] and dataset[2]["images"] == []
        assert dataset[2]["messages"][0] == {"role": "system", "content": [{"type": "text", "text": "Be terse."}]}


def test_hf_dataset_with_messages_and_images(tmp_path, components_dir):
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "A square."}]}]  # fmt: skip
    strings = [{"role": "user", "content": "<image>\nWhat?"}, {"role": "assistant", "content": "A square."}]
    _, processor = assemble(components_dir, "phi", "siglip")
    for name, messages in (("parts", parts), ("strings", strings)):
        dataset = datasets.Dataset.from_dict({"messages": [messages], "images": [[make_image()]]})
        dataset.save_to_disk(tmp_path / name)
        dataset.to_parquet(tmp_path / f"{name}.parquet")
        for source in (tmp_path / name, tmp_path / f"{name}.parquet"):
            loaded = load(source)
            assert loaded.column_names == ["id", "messages", "images"]
            assert loaded[0]["images"][0].size == (40, 24)  # decoded lazily by datasets, per row
            batch = TinyLlavaCollator(processor)([loaded[0]])
            assert (
                processor.tokenizer.decode(batch["labels"][0][batch["labels"][0] != -100]) == " A square.<|endoftext|>"
            )


def test_convert_data_roundtrip(tmp_path):
    path, folder = write_llava_dataset(tmp_path, num_samples=3)
    main(["convert-data", str(path), str(tmp_path / "converted"), "--image_folder", str(folder)])
    converted = load(tmp_path / "converted", str(folder))
    direct = load(path, str(folder))
    assert converted.to_list() == direct.to_list()
    assert load_samples(str(tmp_path / "converted"))["images"] == [["0.png"], ["1.png"], ["2.png"]]  # as written
    assert not list((tmp_path / "converted").glob("cache-*")), "loading wrote into the user's dataset dir"


def test_checks_in_several_processes_find_the_same(tmp_path, components_dir):
    records = [llava_record("good", "0.png", "<image>\nA?", "B."), llava_record("gone", "gone.png", "<image>\nA?", "B."),
               llava_record("long", "1.png", "<image>\nA?", "one two three " * 40)]  # fmt: skip
    path, folder = write_llava_dataset(tmp_path, records=records)
    _, processor = assemble(components_dir, "phi", "siglip")
    collator = TinyLlavaCollator(processor, max_length=120)
    args = DataArguments(data_path=[str(path)], image_folder=str(folder), on_bad_sample="skip")
    one, two = (load_training_dataset(args, collator, num_proc=num_proc) for num_proc in (None, 2))
    assert one.dataset.to_list() == two.dataset.to_list() and one.dataset["id"] == ["good", "long"]
    assert one.record() == two.record() == {"missing_image": 1, "truncated": 1}


@pytest.mark.parametrize(
    "turns, images, message",
    [
        ((), None, "empty conversation"),
        (("Hi?", "Hello.", "And?"), None, "conversation does not alternate"),
        (("<image>\nA?", "B."), None, "1 <image> markers but 0 images"),
        (("A?", "B."), "0.png", "0 <image> markers but 1 images"),
        (("<image>\nA?", "B."), "missing.png", "missing image file .*missing.png"),
    ],
)
def test_bad_samples_are_named_or_skipped_and_counted(tmp_path, caplog, turns, images, message):
    records = [llava_record("good", "0.png", "<image>\nA?", "B."), llava_record("bad", images, *turns)]
    path, folder = write_llava_dataset(tmp_path, records=records)
    with pytest.raises(BadSampleError, match=f"'bad' \\(index 1\\): {message}.*--on_bad_sample skip"):
        load(path, str(folder))
    with caplog.at_level(logging.WARNING):
        kept = load(path, str(folder), on_bad_sample="skip")
    assert kept["id"] == ["good"]
    assert "Skipping sample 'bad'" in caplog.text and "Skipped 1 of 2 samples" in caplog.text


def test_unusable_sources_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data_path .*nope.json"):
        load(tmp_path / "nope.json")
    path = tmp_path / "roles.json"
    path.write_text(json.dumps([{"id": "r", "conversations": [{"from": "robot", "value": "beep"}]}]))
    with pytest.raises(BadSampleError, match="roles.json: sample 'r' \\(index 0\\): turn 0 has the role 'robot'"):
        load(path)
    path.write_text(json.dumps([{"id": "v", "conversations": [{"from": "human", "value": None}]}]))
    with pytest.raises(ValueError, match="roles.json: sample 'v' \\(index 0\\) has a turn .*'value': None"):
        load(path)
    datasets.Dataset.from_dict({"text": ["x"]}).save_to_disk(tmp_path / "plain")
    with pytest.raises(ValueError, match="needs a 'messages' column"):
        load(tmp_path / "plain")
    with pytest.raises(ValueError, match="--on_bad_sample must be one of"):
        DataArguments(data_path=["x"], on_bad_sample="ignore")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_malloc_settings_apply_on_glibc():
    assert tune_malloc() is True
    assert tune_malloc() is True  # once per process, idempotent
