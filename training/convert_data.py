"""`tinyllava-train convert-data SRC OUT_DIR` (or `python -m tinyllava_hf.training.convert_data`): LLaVA JSON/JSONL -> a
`datasets` dir with TRL's `messages` + `images` columns (images stay paths, relative to the same image folder)."""

import argparse
import logging

from .data import check_samples, drop_bad_samples, load_samples, problems_of


def convert(source: str, output_dir: str, image_folder: str | None = None, on_bad_sample: str = "error") -> int:
    """Converts and saves with `save_to_disk`; samples are checked as for training (files only if a folder is given).

    Returns:
        The number of samples written.
    """
    dataset = load_samples(source)
    if image_folder is not None:
        problems = problems_of(check_samples(dataset, image_folder))
        (dataset,), _ = drop_bad_samples([(source, dataset)], [problems], on_bad_sample)
    dataset.save_to_disk(output_dir)
    return len(dataset)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tinyllava-train convert-data", description=__doc__.split("\n")[0])
    parser.add_argument("source", help="LLaVA .json or .jsonl file")
    parser.add_argument("output_dir", help="datasets dir to write (load with datasets.load_from_disk)")
    parser.add_argument("--image_folder", help="check every sample and image file under this folder")
    parser.add_argument("--on_bad_sample", choices=("error", "skip"), default="error")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    count = convert(args.source, args.output_dir, args.image_folder, args.on_bad_sample)
    print(f"Wrote {count} samples to {args.output_dir}")


if __name__ == "__main__":
    main()
