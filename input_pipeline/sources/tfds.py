"""A prepared TFDS dataset directory (array_record format) as a grain source, without TensorFlow.

Prepare once where TensorFlow is available (`builder.download_and_prepare(file_format="array_record")`),
or with a tfds builder whose features are given as encoded bytes/paths; then

    TfdsSource("<data_dir>/<name>/<version>", "train", to_record=my_fn)

reads it through `tfds.builder_from_directory(dir).as_data_source(split)`: tfds decodes images to
uint8 numpy with PIL; Text features arrive as bytes, which this source turns into str. `to_record`
maps the decoded example to a record kind of `input_pipeline.records` (e.g. `instances`).
Needs the `tensorflow-datasets` and `array-record` packages (not TensorFlow).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from input_pipeline.records import RecordError


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError("TfdsSource needs the 'tensorflow-datasets' package (pip install tensorflow-datasets "
                          "array-record; TensorFlow itself is not needed)") from err
    return tfds


def _decode_text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, dict):
        return {key: _decode_text(item) for key, item in value.items()}
    return value


class TfdsSource:
    """grain random-access source over one split of a prepared TFDS directory.

    Args:
      directory: `<data_dir>/<name>/<version>` holding dataset_info.json and the array_record shards.
      split: split name ("train", "validation", "train[:10%]" is not supported: whole splits only).
      to_record: optional function example dict -> record dict (default: the example, bytes -> str).
    The array_record readers open on first access, so the source pickles cheaply into grain workers.
    """

    def __init__(self, directory: str | Path, split: str, *, to_record: Callable[[dict], dict] | None = None):
        tfds = _tfds()
        self.directory, self.split, self.to_record = str(directory), split, to_record
        if not (Path(directory) / "dataset_info.json").is_file():
            raise RecordError(directory, "not a prepared TFDS dataset directory (no dataset_info.json; expected "
                                         "<data_dir>/<name>/<version>)")
        builder = tfds.builder_from_directory(self.directory)
        if split not in builder.info.splits:
            raise RecordError(directory, f"split {split!r} not found; the dataset has {sorted(builder.info.splits)}")
        self.length = builder.info.splits[split].num_examples
        self._source = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if self._source is None:
            self._source = _tfds().builder_from_directory(self.directory).as_data_source(self.split)
        example = _decode_text(self._source[index])
        return self.to_record(example) if self.to_record is not None else example

    def __getstate__(self):
        return {**self.__dict__, "_source": None}
